"""Random-access view over a split's TFRecord shards, for ``grain.MapDataset.source``.

Each shard has an offset index written at conversion, so record ``i`` of the split is one
``pread`` + CRC check: this is what gives a seeded global shuffle and exact resume
(grain's own TFRecord reader is sequential only).
"""
from __future__ import annotations

import logging
import os
import threading

import numpy as np

from ecgjax.data import spec as spec_lib
from ecgjax.data import tfrecord


class ShardedSource:
  """grain RandomAccessDataSource: ``len()`` and ``[i] -> serialized Example bytes``.

  With ``skip_corrupt`` a record that fails its CRC check is logged (file, offset) and
  returned as ``None`` (the pipeline filters and counts it) instead of raising.
  """

  def __init__(self, data_dir: str, split: str, skip_corrupt: bool = False,
               verify_crc: bool = True):
    self.data_dir = data_dir
    self.split = split
    self.skip_corrupt = skip_corrupt
    self.verify_crc = verify_crc
    self.spec = spec_lib.load(data_dir)
    self.paths, offsets = [], []
    for path, count in spec_lib.shards_for_split(self.spec, data_dir, split):
      index = tfrecord.read_index(path)
      if index.size - 1 != count:
        raise spec_lib.SpecError(
            f"shard {path} holds {index.size - 1} records but {spec_lib.SPEC_FILE} says "
            f"{count}; the shard directory and its spec disagree")
      self.paths.append(path)
      offsets.append(index)
    self._offsets = offsets
    self._starts = np.cumsum([0] + [o.size - 1 for o in offsets])
    self._local = threading.local()
    self.num_skipped = 0

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __repr__(self) -> str:
    return f"ShardedSource({self.data_dir!r}, split={self.split!r}, n={len(self)})"

  def __getstate__(self):
    state = self.__dict__.copy()
    state.pop("_local")  # file descriptors are per process / thread.
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._local = threading.local()

  def _fd(self, shard: int) -> int:
    fds = getattr(self._local, "fds", None)
    if fds is None or self._local.pid != os.getpid():
      fds = self._local.fds = {}
      self._local.pid = os.getpid()
    if shard not in fds:
      fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
    return fds[shard]

  def locate(self, index: int) -> tuple[str, int]:
    """(shard path, byte offset) of record ``index``; used in error messages."""
    shard = int(np.searchsorted(self._starts, index, side="right") - 1)
    return self.paths[shard], int(self._offsets[shard][index - self._starts[shard]])

  def __getitem__(self, index: int) -> bytes | None:
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {self!r}")
    shard = int(np.searchsorted(self._starts, index, side="right") - 1)
    local = index - self._starts[shard]
    start, end = self._offsets[shard][local], self._offsets[shard][local + 1]
    buf = os.pread(self._fd(shard), int(end - start), int(start))
    try:
      return bytes(tfrecord.parse_frame(buf, self.paths[shard], int(start), self.verify_crc))
    except tfrecord.CorruptRecordError as e:
      if not self.skip_corrupt:
        raise
      self.num_skipped += 1
      logging.warning("skipping corrupt record (%d skipped in this process): %s",
                      self.num_skipped, e)
      return None
