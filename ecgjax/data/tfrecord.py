"""TFRecord framing without TensorFlow, plus a per-shard offset index for random access.

A TFRecord file is a sequence of frames:
  uint64 length | uint32 masked_crc32c(length) | data[length] | uint32 masked_crc32c(data)
(little-endian). The mask is ((crc >> 15) | (crc << 17)) + 0xa282ead8 mod 2**32. Files written
here are byte-compatible with ``tf.data.TFRecordDataset``.

Random access (global shuffle, exact resume) needs the byte offset of every frame; the
writer records them and :func:`write_index` stores them as ``DIR/index/<shard>.index``
(little-endian int64 offsets, one per record, plus the file size). The index lives in its
own folder so that ``DIR/<split>.tfrecord-*`` (the glob a TensorFlow user types) matches
shards only. Directories converted before that kept ``DIR/<shard>.index``; they still open.

Paths may be URLs (``gs://...``, :mod:`ecgjax.storage`): a writer then spools the shard to a
local temporary file and uploads it on close (index first, then the shard, as the local
rename order), and the index is read with one GET.
"""
from __future__ import annotations

import os
import struct
import tempfile
from typing import Iterator

import crc32c as _crc32c
import numpy as np

from ecgjax import storage

_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
HEADER_BYTES = _HEADER.size  # 12
FOOTER_BYTES = _FOOTER.size  # 4
INDEX_SUFFIX = ".index"
INDEX_DIR = "index"


class CorruptRecordError(IOError):
  """A frame failed its length/CRC check; names the file and byte offset."""

  def __init__(self, path: str, offset: int, reason: str):
    super().__init__(f"corrupt TFRecord {path} at byte offset {offset}: {reason}")
    self.path = path
    self.offset = offset
    self.reason = reason


def masked_crc(data: bytes | memoryview) -> int:
  crc = _crc32c.crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """Returns one framed TFRecord (header, payload, footer)."""
  length = struct.pack("<Q", len(data))
  return b"".join((length, struct.pack("<I", masked_crc(length)), data,
                   _FOOTER.pack(masked_crc(data))))


class TFRecordWriter:
  """Writes frames to ``path`` atomically: data goes to ``path.tmp-PID`` until close().

  For a URL the temporary file is local and close() uploads it: an object appears whole.
  """

  def __init__(self, path: str):
    self.path = path
    if storage.is_remote(path):
      fd, self._tmp = tempfile.mkstemp(prefix="ecgjax_shard_", suffix=f".tmp-{os.getpid()}")
      os.close(fd)
    else:
      self._tmp = f"{path}.tmp-{os.getpid()}"
    self._f = open(self._tmp, "wb")
    self.offsets: list[int] = []
    self._pos = 0

  def write(self, data: bytes) -> None:
    framed = frame(data)
    self.offsets.append(self._pos)
    self._f.write(framed)
    self._pos += len(framed)

  def close(self) -> None:
    """Flushes, fsyncs and renames into place, then writes the offset index."""
    self._f.flush()
    os.fsync(self._f.fileno())
    self._f.close()
    write_index(self.path, self.offsets + [self._pos])
    if storage.is_remote(self.path):
      try:
        storage.upload(self._tmp, self.path)
      finally:
        os.remove(self._tmp)
      return
    os.replace(self._tmp, self.path)

  def abort(self) -> None:
    self._f.close()
    if os.path.exists(self._tmp):
      os.remove(self._tmp)

  def __enter__(self) -> "TFRecordWriter":
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


def index_path(shard_path: str) -> str:
  """Where the offset index of ``shard_path`` is written: ``DIR/index/<shard>.index``."""
  return storage.join(storage.dirname(shard_path), INDEX_DIR,
                      storage.basename(shard_path) + INDEX_SUFFIX)


def legacy_index_path(shard_path: str) -> str:
  """The pre-``index/`` layout (``DIR/<shard>.index``), still read."""
  return shard_path + INDEX_SUFFIX


def write_index(shard_path: str, offsets: list[int]) -> None:
  path = index_path(shard_path)
  if storage.is_remote(path):
    storage.write_bytes(path, np.asarray(offsets, dtype="<i8").tobytes())
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  np.asarray(offsets, dtype="<i8").tofile(tmp)
  os.replace(tmp, path)


def find_index(shard_path: str, exists=storage.exists) -> str:
  """The index file of ``shard_path`` (new layout first, then legacy); raises if neither."""
  for path in (index_path(shard_path), legacy_index_path(shard_path)):
    if exists(path):
      return path
  raise FileNotFoundError(f"offset index missing for shard {shard_path} (expected "
                          f"{index_path(shard_path)}); re-run the converter")


def read_index(shard_path: str, check_size: bool = True) -> np.ndarray:
  """Returns int64 [num_records + 1] frame offsets (the last entry is the file size).

  ``check_size=False`` accepts a shard shorter than its index (truncated): the records
  past its end then fail their frame check one by one, which a skipping reader counts.
  """
  index_file = find_index(shard_path)
  return _checked(shard_path, index_file, storage.read_bytes(index_file),
                  storage.getsize(shard_path), check_size)


def read_indexes(shard_paths: list[str], sizes: dict[str, int],
                 check_size: bool = True) -> list[np.ndarray]:
  """:func:`read_index` of many shards, given ``sizes``, the {path: size} of the files in
  their directories and index directories (:func:`ecgjax.storage.file_sizes`).

  On a bucket that turns several sequential requests per shard (thousands of round trips
  for a large set) into a few listings and one concurrent batch of GETs.
  """
  index_files = [find_index(p, sizes.__contains__) for p in shard_paths]
  data = storage.read_many(index_files)
  return [_checked(p, f, d, sizes[p], check_size)
          for p, f, d in zip(shard_paths, index_files, data)]


def _checked(shard_path: str, index_file: str, data: bytes, size: int,
             check_size: bool) -> np.ndarray:
  offsets = np.frombuffer(data, dtype="<i8")
  size_ok = offsets.size >= 1 and (offsets[-1] == size or not check_size)
  if not size_ok or np.any(np.diff(offsets) < HEADER_BYTES + FOOTER_BYTES):
    raise CorruptRecordError(shard_path, int(offsets[-1]) if offsets.size else 0,
                             f"offset index {index_file} does not match the shard "
                             f"(file size {size}); the shard was truncated or rewritten")
  return offsets


def build_index(path: str) -> np.ndarray:
  """Scans a shard sequentially to rebuild its offsets (for shards written elsewhere)."""
  offsets = [0]
  with storage.open(path, "rb") as f:
    for _ in iter_frames(f, path):
      offsets.append(f.tell())
  return np.asarray(offsets, dtype=np.int64)


def parse_frame(buf: bytes | memoryview, path: str, offset: int, verify: bool = True) -> memoryview:
  """Validates one frame held entirely in ``buf`` and returns a view of its payload."""
  buf = memoryview(buf)
  if len(buf) < HEADER_BYTES + FOOTER_BYTES:
    raise CorruptRecordError(path, offset, f"truncated frame ({len(buf)} bytes)")
  length, length_crc = _HEADER.unpack_from(buf)
  if verify and masked_crc(buf[:8]) != length_crc:
    raise CorruptRecordError(path, offset, "length CRC mismatch")
  end = HEADER_BYTES + length
  if end + FOOTER_BYTES != len(buf):
    raise CorruptRecordError(path, offset,
                             f"frame length {length} disagrees with the offset index")
  data = buf[HEADER_BYTES:end]
  if verify and masked_crc(data) != _FOOTER.unpack_from(buf, end)[0]:
    raise CorruptRecordError(path, offset, "data CRC mismatch")
  return data


def iter_frames(f, path: str = "<stream>", verify: bool = True) -> Iterator[bytes]:
  """Sequentially yields payloads from an open binary file."""
  while True:
    offset = f.tell()
    header = f.read(HEADER_BYTES)
    if not header:
      return
    if len(header) < HEADER_BYTES:
      raise CorruptRecordError(path, offset, "truncated header")
    length, length_crc = _HEADER.unpack(header)
    if verify and masked_crc(header[:8]) != length_crc:
      raise CorruptRecordError(path, offset, "length CRC mismatch")
    data = f.read(length)
    footer = f.read(FOOTER_BYTES)
    if len(data) < length or len(footer) < FOOTER_BYTES:
      raise CorruptRecordError(path, offset, "truncated record")
    if verify and masked_crc(data) != _FOOTER.unpack(footer)[0]:
      raise CorruptRecordError(path, offset, "data CRC mismatch")
    yield data


def read_records(path: str, verify: bool = True) -> Iterator[bytes]:
  with storage.open(path, "rb") as f:
    yield from iter_frames(f, path, verify)
