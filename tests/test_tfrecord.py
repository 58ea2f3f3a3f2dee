"""TFRecord framing, offset index, Example schema round trip, corruption errors, TF interop."""
import os

import numpy as np
import pytest

from ecgjax.data import example, tfrecord
from ecgjax.data.records import STANDARD_LEADS, EcgRecord


def _record(i: int, dtype=np.int16) -> EcgRecord:
  rng = np.random.default_rng(i)
  sig = (rng.standard_normal((12, 1000)) * 500).astype(dtype)
  return EcgRecord(f"r{i}", sig, 500.0, STANDARD_LEADS, np.full(12, 1000.0, np.float32),
                   labels=[i % 3], split="train", r_peaks=np.array([10, 400, 800]))


def _write(path, n=5):
  with tfrecord.TFRecordWriter(str(path)) as w:
    for i in range(n):
      w.write(example.encode(_record(i), "multi_hot", 3))
  return [example.encode(_record(i), "multi_hot", 3) for i in range(n)]


def test_masked_crc_known_value():
  # crc32c("") == 0 -> masked = rotate(0) + delta.
  assert tfrecord.masked_crc(b"") == 0xA282EAD8
  # crc32c("123456789") == 0xE3069283 (the CRC-32C check value).
  crc = 0xE3069283
  assert tfrecord.masked_crc(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_roundtrip_sequential_and_indexed(tmp_path):
  path = tmp_path / "train.tfrecord-00000-of-00001"
  payloads = _write(path)
  assert list(tfrecord.read_records(str(path))) == payloads
  index = tfrecord.read_index(str(path))
  assert index.size == len(payloads) + 1 and index[-1] == os.path.getsize(path)
  np.testing.assert_array_equal(index, tfrecord.build_index(str(path)))
  with open(path, "rb") as f:
    buf = f.read()
  for i, p in enumerate(payloads):
    assert bytes(tfrecord.parse_frame(buf[index[i]:index[i + 1]], str(path), int(index[i]))) == p
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32])
def test_example_roundtrip_lossless(dtype):
  rec = _record(7, dtype)
  d = example.decode(example.encode(rec, "multi_hot", 3))
  assert d["signal"].dtype == np.dtype(dtype)
  np.testing.assert_array_equal(d["signal"], rec.signal)
  assert d["leads"] == STANDARD_LEADS and d["record_id"] == "r7" and d["split"] == "train"
  np.testing.assert_array_equal(d["label"], [0, 1, 0])
  np.testing.assert_array_equal(d["r_peaks"], [10, 400, 800])
  assert d["sampling_rate"] == 500.0


def _same_record(a, b):
  assert a.keys() == b.keys()
  for k in a:
    if isinstance(a[k], np.ndarray):
      assert a[k].dtype == b[k].dtype, k
      np.testing.assert_array_equal(a[k], b[k])
    else:
      assert a[k] == b[k], k


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.float32])
def test_decode_view_equals_decode_without_copying_the_signal(dtype):
  data = np.frombuffer(example.encode(_record(3, dtype), "class_index", 3), np.uint8)
  view = example.decode_view(data)
  _same_record(view, example.decode(data))
  assert np.shares_memory(view["signal"], data)  # a view into the record, not a copy


def test_decode_view_falls_back_on_unexpected_layouts():
  from tensorflow_datasets.proto import tf_example_generated_pb2 as pb
  ex = pb.Example()
  ex.ParseFromString(example.encode(_record(4), "class_index", 3))
  ex.features.feature["signal"].bytes_list.value.append(b"\x00\x00")  # a second value
  data = ex.SerializeToString()
  view = example.decode_view(data)
  _same_record(view, example.decode(data))
  np.testing.assert_array_equal(view["signal"], _record(4).signal)
  with pytest.raises(ValueError, match="r5.*bytes"):  # a short signal is named, not read
    bad = pb.Example()
    bad.ParseFromString(example.encode(_record(5), "class_index", 3))
    sig = bad.features.feature["signal"].bytes_list.value
    sig[0] = sig[0][:-2]
    example.decode_view(bad.SerializeToString(deterministic=True))


def test_class_index_labels():
  d = example.decode(example.encode(_record(2), "class_index", 3))
  np.testing.assert_array_equal(d["label"], [2])


def test_corrupt_data_names_file_and_offset(tmp_path):
  path = tmp_path / "s.tfrecord"
  _write(path, 3)
  index = tfrecord.read_index(str(path))
  raw = bytearray(path.read_bytes())
  raw[int(index[1]) + 100] ^= 0xFF  # flip a byte inside record 1's payload
  path.write_bytes(bytes(raw))
  with pytest.raises(tfrecord.CorruptRecordError) as e:
    list(tfrecord.read_records(str(path)))
  assert str(path) in str(e.value) and f"offset {index[1]}" in str(e.value)
  assert "data CRC" in str(e.value)


def test_truncated_shard_detected(tmp_path):
  path = tmp_path / "s.tfrecord"
  _write(path, 3)
  size = path.stat().st_size
  with open(path, "r+b") as f:
    f.truncate(size - 50)
  with pytest.raises(tfrecord.CorruptRecordError, match="truncated"):
    list(tfrecord.read_records(str(path)))
  with pytest.raises(tfrecord.CorruptRecordError, match=str(path)):
    tfrecord.read_index(str(path))


def test_readable_by_tensorflow(tmp_path):
  tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed (pip install '.[tf]')")
  path = tmp_path / "s.tfrecord"
  _write(path, 4)
  feature_spec = {
      "signal": tf.io.FixedLenFeature([], tf.string),
      "shape": tf.io.FixedLenFeature([2], tf.int64),
      "sampling_rate": tf.io.FixedLenFeature([], tf.float32),
      "leads": tf.io.FixedLenFeature([12], tf.string),
      "r_peaks": tf.io.VarLenFeature(tf.int64),
      "record_id": tf.io.FixedLenFeature([], tf.string),
      "label": tf.io.VarLenFeature(tf.int64),
      "split": tf.io.FixedLenFeature([], tf.string),
  }
  for i, raw in enumerate(tf.data.TFRecordDataset(str(path))):
    ex = tf.io.parse_single_example(raw, feature_spec)
    sig = tf.io.decode_raw(ex["signal"], tf.int16).numpy().reshape(ex["shape"].numpy())
    np.testing.assert_array_equal(sig, _record(i).signal)
    assert ex["record_id"].numpy().decode() == f"r{i}"
    assert ex["leads"].numpy()[3].decode() == "aVR"
