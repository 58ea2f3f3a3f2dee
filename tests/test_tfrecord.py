"""TFRecord framing, offset index, Example schema round trip, corruption errors, TF interop.

The ``tensorflow`` tests run in CI in a side venv with tensorflow-cpu and without JAX
(.ci/run); the converter they call needs no JAX either.
"""
import csv
import glob
import os
import shutil

import numpy as np
import pytest

from ecgjax.data import example, tfrecord
from ecgjax.data.records import STANDARD_LEADS, EcgRecord
from tests.conftest import requires_shared


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
  assert (tmp_path / "index" / "train.tfrecord-00000-of-00001.index").exists()
  assert glob.glob(str(tmp_path / "train.tfrecord-*")) == [str(path)]  # shards only
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
      "dtype": tf.io.FixedLenFeature([], tf.string),
      "gain": tf.io.FixedLenFeature([12], tf.float32),
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
    assert ex["dtype"].numpy() == b"int16"
    np.testing.assert_array_equal(ex["gain"].numpy(), np.full(12, 1000.0, np.float32))


def test_old_index_layout_still_opens(tmp_path):
  """Directories converted before index/ kept ``<shard>.index`` beside the shard."""
  path = tmp_path / "train.tfrecord-00000-of-00001"
  payloads = _write(path, 3)
  os.replace(tmp_path / "index" / (path.name + ".index"), str(path) + ".index")
  shutil.rmtree(tmp_path / "index")
  offsets = tfrecord.read_index(str(path))
  assert offsets.size == 4 and offsets[-1] == path.stat().st_size
  with open(path, "rb") as f:
    buf = f.read()
  assert bytes(tfrecord.parse_frame(buf[offsets[2]:offsets[3]], str(path), 0)) == payloads[2]
  os.remove(str(path) + ".index")
  with pytest.raises(FileNotFoundError, match="index/train.tfrecord-00000-of-00001.index"):
    tfrecord.read_index(str(path))


_PTBXL_CLASSES = ("NORM", "MI", "STTC", "CD", "HYP")


def _ptbxl_subset(tmp_path, n: int) -> tuple[str, str, dict[str, dict[str, str]]]:
  """The first ``n`` shared PTB-XL records (symlinked) + their rows of the label table."""
  data = requires_shared("ptbxl")
  with open(data / "ptbxl_labels.csv") as f:
    rows = [r for r in csv.DictReader(f) if r["in_records100_subset"] == "1"][:n]
  root = tmp_path / "ptbxl"
  for r in rows:
    dst = root / os.path.dirname(r["filename_lr"])
    dst.mkdir(parents=True, exist_ok=True)
    for ext in (".hea", ".dat"):
      os.symlink(data / (r["filename_lr"] + ext), root / (r["filename_lr"] + ext))
  labels = tmp_path / "labels.csv"
  with open(labels, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return str(root), str(labels), {f"{int(r['ecg_id']):05d}": r for r in rows}


def test_tensorflow_glob_reads_converted_ptbxl(tmp_path):
  """A TF user's first lines on converted real PTB-XL: glob, TFRecordDataset, parse.

  Every feature is checked against the source read independently (wfdb + the label CSV).
  """
  tf = pytest.importorskip("tensorflow", reason="TensorFlow not installed (pip install '.[tf]')")
  import wfdb
  from data_pipelines import convert
  root, labels, rows = _ptbxl_subset(tmp_path, 60)
  out = tmp_path / "shards"
  spec = convert.convert(convert.build_parser().parse_args([
      "--format=ptbxl", f"--input={root}", f"--labels={labels}", f"--output={out}",
      "--num_shards=3", "--workers=1", "--quiet"]))
  assert spec["num_records"] == len(rows)
  feature_spec = {
      "signal": tf.io.FixedLenFeature([], tf.string),
      "dtype": tf.io.FixedLenFeature([], tf.string),
      "shape": tf.io.FixedLenFeature([2], tf.int64),
      "gain": tf.io.VarLenFeature(tf.float32),
      "sampling_rate": tf.io.FixedLenFeature([], tf.float32),
      "leads": tf.io.VarLenFeature(tf.string),
      "r_peaks": tf.io.VarLenFeature(tf.int64),
      "record_id": tf.io.FixedLenFeature([], tf.string),
      "label": tf.io.VarLenFeature(tf.int64),
      "split": tf.io.FixedLenFeature([], tf.string),
  }
  canonical = {"AVR": "aVR", "AVL": "aVL", "AVF": "aVF"}  # PTB-XL spells them upper-case.
  seen = set()
  for split in ("train", "val", "test"):
    files = tf.io.gfile.glob(f"{out}/{split}.tfrecord-*")
    listed = sorted(str(out / s["file"]) for s in spec["shards"] if s["split"] == split)
    assert sorted(files) == listed, "the glob must match the shards and nothing else"
    n = 0
    for raw in tf.data.TFRecordDataset(files):
      ex = tf.io.parse_single_example(raw, feature_spec)
      rid = ex["record_id"].numpy().decode()
      row = rows[rid]
      ref = wfdb.rdrecord(os.path.join(root, row["filename_lr"]), physical=False)
      assert ex["dtype"].numpy() == b"int16"
      dtype = tf.as_dtype(ex["dtype"].numpy().decode())
      sig = tf.io.decode_raw(ex["signal"], dtype).numpy().reshape(ex["shape"].numpy())
      np.testing.assert_array_equal(sig, ref.d_signal.T)
      gain = tf.sparse.to_dense(ex["gain"]).numpy()
      np.testing.assert_array_equal(gain, np.asarray(ref.adc_gain, np.float32))
      phys = wfdb.rdrecord(os.path.join(root, row["filename_lr"])).p_signal.T
      np.testing.assert_allclose(sig / gain[:, None], phys, atol=1e-6)
      assert ex["sampling_rate"].numpy() == ref.fs == 100
      leads = [l.decode() for l in tf.sparse.to_dense(ex["leads"]).numpy()]
      assert leads == [canonical.get(l, l) for l in ref.sig_name]
      hot = tf.sparse.to_dense(ex["label"]).numpy()
      np.testing.assert_array_equal(hot, [int(row[c]) for c in _PTBXL_CLASSES])
      assert ex["split"].numpy().decode() == row["split"] == split
      peaks = tf.sparse.to_dense(ex["r_peaks"]).numpy()
      assert peaks.size >= 4 and np.all(np.diff(peaks) > 0)
      assert 0 <= peaks[0] and peaks[-1] < sig.shape[1]
      assert 0.25 <= np.median(np.diff(peaks)) / ref.fs <= 2.0  # 30-240 bpm
      seen.add(rid)
      n += 1
    assert n == spec["splits"].get(split, 0) == sum(r["split"] == split for r in rows.values())
  assert seen == set(rows)
