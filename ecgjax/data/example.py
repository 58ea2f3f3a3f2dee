"""EcgRecord <-> serialized ``tf.train.Example`` (the shard record schema).

Feature keys (the contract with readers of our shards, TensorFlow included):
  signal         bytes   raw little-endian array, layout [leads, samples], dtype in 'dtype'
  dtype          bytes   numpy dtype name of 'signal' ('int16', 'int32' or 'float32')
  shape          int64   [leads, samples]
  gain           float   [leads] digital units per mV (physical = signal / gain)
  sampling_rate  float   Hz
  leads          bytes   lead names, canonical spelling
  r_peaks        int64   R-peak sample indices
  record_id      bytes
  label          int64   multi-hot vector or class index list (spec.json 'label_encoding')
  split          bytes   'train' | 'val' | 'test' | ''
  patient_id     bytes   the patient the record belongs to ('' when unknown); splits and
                         probe holdouts group records by it. Shards written before it
                         existed decode with patient_id ''.
The proto class comes from tensorflow_datasets, which imports without TensorFlow.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from tensorflow_datasets.proto import tf_example_generated_pb2 as _pb
from tensorflow_datasets.proto import tf_feature_generated_pb2 as _feature_pb

from ecgjax.data.records import EcgRecord

_DTYPES = {"int16": np.dtype("<i2"), "int32": np.dtype("<i4"), "float32": np.dtype("<f4")}


def encode_labels(labels: Sequence[int], encoding: str, num_classes: int) -> list[int]:
  if encoding == "multi_hot":
    hot = [0] * num_classes
    for i in labels:
      hot[int(i)] = 1
    return hot
  if encoding == "class_index":
    return [int(i) for i in labels]
  raise ValueError(f"unknown label_encoding {encoding!r}; expected multi_hot or class_index")


def encode(record: EcgRecord, label_encoding: str = "class_index", num_classes: int = 0) -> bytes:
  """Serializes a record; the signal is stored losslessly in its own integer/float dtype."""
  signal = np.ascontiguousarray(record.signal)
  dtype = signal.dtype.name
  if dtype not in _DTYPES:
    raise ValueError(f"record {record.record_id}: unsupported signal dtype {dtype}")
  ex = _pb.Example()
  f = ex.features.feature
  f["signal"].bytes_list.value.append(signal.astype(_DTYPES[dtype], copy=False).tobytes())
  f["dtype"].bytes_list.value.append(dtype.encode())
  f["shape"].int64_list.value.extend(signal.shape)
  f["gain"].float_list.value.extend(np.asarray(record.gain, np.float32).tolist())
  f["sampling_rate"].float_list.value.append(float(record.sampling_rate))
  f["leads"].bytes_list.value.extend(lead.encode() for lead in record.leads)
  peaks = record.r_peaks if record.r_peaks is not None else np.zeros([0], np.int64)
  f["r_peaks"].int64_list.value.extend(np.asarray(peaks, np.int64).tolist())
  f["record_id"].bytes_list.value.append(record.record_id.encode())
  f["label"].int64_list.value.extend(encode_labels(record.labels, label_encoding, num_classes))
  f["split"].bytes_list.value.append(record.split.encode())
  f["patient_id"].bytes_list.value.append(record.patient_id.encode())
  # deterministic=True sorts the feature map: identical bytes in every process and run.
  return ex.SerializeToString(deterministic=True)


def decode(data: bytes | memoryview | np.ndarray) -> dict[str, Any]:
  """Parses one serialized Example into numpy fields (signal kept in its stored dtype).

  ``data`` may be any buffer (the input pipeline passes views of the mapped shard).
  """
  ex = _pb.Example()
  ex.ParseFromString(memoryview(data))
  f = ex.features.feature
  signal = f["signal"].bytes_list.value[0]
  return _fields(f, signal, 0, len(signal))


def decode_view(data: bytes | memoryview | np.ndarray) -> dict[str, Any]:
  """:func:`decode` without copying the signal: ``signal`` is a read-only view into ``data``.

  The input pipeline's hot path. The signal is ~99% of a record's bytes, and protobuf
  copies a bytes field twice (into its arena on parse, into a Python ``bytes`` on access).
  So the signal's bytes are found by walking the Example's top-level map entries (a few
  varints) and protobuf parses only the other, small entries: 16 vs 22 us a record.
  Anything unexpected in the wire layout falls back to :func:`decode`.
  """
  buf = memoryview(data).cast("B")
  found = _signal_span(buf)
  if found is None:
    return decode(data)
  meta, offset, size = found
  features = _feature_pb.Features()
  features.ParseFromString(meta)
  return _fields(features.feature, buf, offset, size)


def _fields(f, buf, offset: int, size: int) -> dict[str, Any]:
  """The record's fields from a parsed feature map; its signal is ``buf[offset:+size]``."""
  dtype = _DTYPES[f["dtype"].bytes_list.value[0].decode()]
  shape = tuple(f["shape"].int64_list.value)
  count = math.prod(shape)
  if size != count * dtype.itemsize:
    raise ValueError(f"record {f['record_id'].bytes_list.value[0]!r}: signal has {size} bytes "
                     f"but shape {shape} of {dtype.name} needs {count * dtype.itemsize}")
  # np.fromiter: a third of np.asarray's time on protobuf's repeated fields.
  return {
      "signal": np.frombuffer(buf, dtype, count, offset).reshape(shape),
      "gain": np.fromiter(f["gain"].float_list.value, np.float32),
      "sampling_rate": float(f["sampling_rate"].float_list.value[0]),
      "leads": tuple(v.decode() for v in f["leads"].bytes_list.value),
      "r_peaks": np.fromiter(f["r_peaks"].int64_list.value, np.int64),
      "record_id": f["record_id"].bytes_list.value[0].decode(),
      "label": np.fromiter(f["label"].int64_list.value, np.int64),
      "split": f["split"].bytes_list.value[0].decode(),
      "patient_id": _patient_id(f),
  }


def _patient_id(f) -> str:
  """'' for shards converted before the feature existed (old shards keep decoding)."""
  if "patient_id" not in f:
    return ""
  values = f["patient_id"].bytes_list.value
  return values[0].decode() if values else ""


_LEN = 0x0A  # wire tag of field 1, length-delimited (Example.features, map entry, key, ...)
_SIGNAL_KEY = bytes([_LEN, len(b"signal")]) + b"signal"


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    byte = buf[pos]
    value |= (byte & 0x7F) << shift
    pos += 1
    if byte < 0x80:
      return value, pos
    shift += 7


def _signal_span(buf: memoryview) -> tuple[bytes, int, int] | None:
  """(Features bytes minus the 'signal' entry, signal data offset, its size) or None.

  Example = {1: Features = {1: entry = {1: key, 2: Feature = {1: BytesList = {1: data}}}}}.
  """
  try:
    if buf[0] != _LEN:
      return None
    length, body = _varint(buf, 1)
    end = body + length
    pos = body
    while pos < end:
      if buf[pos] != _LEN:
        return None
      length, entry = _varint(buf, pos + 1)
      entry_end = entry + length
      if buf[entry:entry + len(_SIGNAL_KEY)] == _SIGNAL_KEY:
        q = entry + len(_SIGNAL_KEY)
        if buf[q] != 0x12:  # Feature (field 2)
          return None
        feature_len, q = _varint(buf, q + 1)
        if buf[q] != _LEN:  # bytes_list
          return None
        _, q = _varint(buf, q + 1)
        if buf[q] != _LEN:  # its one value
          return None
        size, q = _varint(buf, q + 1)
        if q + size != entry_end:  # more than one value, or trailing fields
          return None
        return bytes(buf[body:pos]) + bytes(buf[entry_end:end]), q, size
      pos = entry_end
  except IndexError:
    return None
  return None
