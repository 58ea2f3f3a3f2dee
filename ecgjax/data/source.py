"""Random-access view over a split's TFRecord shards, for ``grain.MapDataset.source``.

Each shard has an offset index written at conversion (``DIR/index/<shard>.index``; the
older ``DIR/<shard>.index`` layout still opens), so record ``i`` of the split is a
slice of the memory-mapped shard + CRC check: this is what gives a seeded global shuffle
and exact resume (grain's own TFRecord reader is sequential only). The slice is a view, not
a copy (measured: pread + bytes cost 43 us of a 150 us record, the mapped view 16 us with
its CRC); the page cache does the I/O. Shards are immutable once written: a file truncated
*while* a job maps it would fault, as with any mmap reader (one truncated before the job
starts is caught by the index check).

On object storage (``gs://...``, any fsspec URL; :mod:`ecgjax.storage`) record ``i`` is one
ranged GET of exactly its frame, so the source stays random-access and exactly resumable;
:meth:`ShardedSource.read_many` fetches a batch's records concurrently (one round trip of
latency for the batch instead of one per record: 931 vs 201 records/s against the local
emulator, where a GET costs ~1 ms of Python; on GCS, tens of ms of latency each). Nothing is
held open: fsspec keeps one client per process, made lazily after a fork or spawn, like the
mappings. Not done, as nothing measured a gain: coalescing neighbouring ranges (a global
shuffle makes a batch's records neighbours only by chance) and a local shard cache (data
that fit on the local disk are simpler copied there once; benchmarks/README.md).

With ``skip_corrupt`` a bad record (CRC, truncated frame), a truncated shard or a shard
missing from the directory is skipped and counted instead of stopping the job. grain runs
the source in worker processes, so the skipped record ids are kept in one small file per
process under a directory made by the process that built the source; :func:`skipped_records`
counts their union (the trainer logs it as ``skipped_records``): each bad record once per
run, however often it is read. The ids travel in the checkpoint's data-iterator state
(:class:`ecgjax.input.DevicePrefetcher`), so the count survives a resume.
"""
from __future__ import annotations

import atexit
import json
import logging
import mmap
import os
import shutil
import tempfile
import threading

import numpy as np

from ecgjax import storage
from ecgjax.data import spec as spec_lib
from ecgjax.data import tfrecord


class _SkipCounter:
  """Skipped records of one source, shared by the processes that read it (see module doc).

  Each skip is recorded under an id (``DIR:split/index``, or ``SHARD:missing`` for a
  missing shard, weighted by its record count), so a bad record read again in a later epoch, or
  by another worker, is counted once.
  """

  def __init__(self):
    self.dir = tempfile.mkdtemp(prefix="ecgjax_skipped_")
    self._owner = os.getpid()
    self._pid, self._ids = self._owner, {}
    _COUNTERS.append(self)
    atexit.register(self.cleanup)

  def __getstate__(self):
    return {"dir": self.dir, "_owner": self._owner, "_pid": None, "_ids": {}}

  def add(self, record_id: str, weight: int = 1) -> int:
    """Records a skip (a rewrite of a small file each: skips are rare); returns the total."""
    if self._pid != os.getpid():  # a forked or spawned worker starts its own file.
      self._pid, self._ids = os.getpid(), {}
    if record_id not in self._ids:
      self._ids[record_id] = int(weight)
      path = os.path.join(self.dir, f"{self._pid}.json")
      try:
        with open(path + ".tmp", "w") as f:
          json.dump(self._ids, f)
        os.replace(path + ".tmp", path)
      except OSError as e:  # counting must never stop the job.
        logging.warning("could not record a skipped record in %s: %s", self.dir, e)
    return skipped_records()

  def ids(self) -> dict[str, int]:
    out = {}
    try:
      names = os.listdir(self.dir)
    except OSError:
      return out
    for name in names:
      if name.endswith(".json"):
        try:
          with open(os.path.join(self.dir, name)) as f:
            out.update(json.load(f))
        except (OSError, ValueError):
          pass
    return out

  def cleanup(self) -> None:
    if os.getpid() == self._owner:
      shutil.rmtree(self.dir, ignore_errors=True)


_COUNTERS: list[_SkipCounter] = []
_RESTORED: dict[str, int] = {}  # skips of this run before its last resume.


def skipped_ids() -> dict[str, int]:
  """{record id: records} skipped so far in this run, by every skipping source (all workers)."""
  out = dict(_RESTORED)
  for c in _COUNTERS:
    out.update(c.ids())
  return out


def skipped_records() -> int:
  """Distinct records skipped so far in this run (each once, across epochs and resumes)."""
  return sum(skipped_ids().values())


def restore_skipped(ids: dict[str, int]) -> None:
  """Adds the skips a checkpoint recorded (the data-iterator state carries them)."""
  _RESTORED.update({str(k): int(v) for k, v in ids.items()})


class ShardedSource:
  """grain RandomAccessDataSource: ``len()`` and ``[i] -> serialized Example``.

  Records are uint8 arrays viewing the mapped shard (``bytes(record)`` copies one out);
  :func:`ecgjax.data.example.decode` reads them in place.

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
    self.paths, offsets, self._sizes = [], [], []
    self._remote = storage.is_remote(data_dir)
    self._skips = _SkipCounter() if skip_corrupt else None
    if self._remote:  # two listings and one concurrent batch of GETs, not requests per shard.
      listing = {**storage.file_sizes(data_dir),
                 **storage.file_sizes(storage.join(data_dir, tfrecord.INDEX_DIR))}
      shards = self._shards(listing.__contains__)
      paths = [p for p, _ in shards]
      indexes = tfrecord.read_indexes(paths, listing, check_size=not skip_corrupt)
      sizes = [listing[p] for p in paths]
    else:
      shards = self._shards(storage.exists)
      indexes = [tfrecord.read_index(p, check_size=not skip_corrupt) for p, _ in shards]
      sizes = [os.path.getsize(p) for p, _ in shards]
    for (path, count), index, size in zip(shards, indexes, sizes):
      if index[-1] > size:
        logging.error("shard %s is truncated at %d bytes (its index says %d): its records "
                      "past that point will be skipped", path, size, index[-1])
      if index.size - 1 != count:
        raise spec_lib.SpecError(
            f"shard {path} holds {index.size - 1} records but {spec_lib.SPEC_FILE} says "
            f"{count}; the shard directory and its spec disagree")
      self.paths.append(path)
      self._sizes.append(int(size))
      offsets.append(index)
    self._offsets = offsets
    self._starts = np.cumsum([0] + [o.size - 1 for o in offsets])
    self._lock = threading.Lock()
    self._maps: dict[int, memoryview] = {}
    self._maps_pid = os.getpid()
    self.num_skipped = 0
    if not self.paths:
      raise spec_lib.SpecError(f"no readable shard of split {split!r} in {data_dir}")

  def _shards(self, exists) -> list[tuple[str, int]]:
    if not self.skip_corrupt:
      return spec_lib.shards_for_split(self.spec, self.data_dir, self.split, exists)
    out = []
    for entry in self.spec["shards"]:
      path = storage.join(self.data_dir, entry["file"])
      if entry["split"] != self.split:
        continue
      if exists(path):
        out.append((path, int(entry["records"])))
      else:
        self._skips.add(f"{path}:missing", int(entry["records"]))
        logging.error("shard %s is listed in %s but missing: skipping its %d records",
                      path, spec_lib.SPEC_FILE, int(entry["records"]))
    return out

  def __len__(self) -> int:
    return int(self._starts[-1])

  def __repr__(self) -> str:
    return f"ShardedSource({self.data_dir!r}, split={self.split!r}, n={len(self)})"

  def __getstate__(self):
    state = self.__dict__.copy()
    state.pop("_lock")
    state["_maps"], state["_maps_pid"] = {}, None  # mappings are per process.
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _buffer(self, shard: int) -> memoryview:
    """The shard's bytes, mapped once per process (views of it are valid for its life)."""
    if self._maps_pid != os.getpid():  # a forked child: fresh lock, its own mappings.
      self._lock, self._maps, self._maps_pid = threading.Lock(), {}, os.getpid()
    buf = self._maps.get(shard)
    if buf is None:
      with self._lock:
        buf = self._maps.get(shard)
        if buf is None:
          with open(self.paths[shard], "rb") as f:
            empty = os.fstat(f.fileno()).st_size == 0  # mmap refuses empty files.
            buf = memoryview(b"" if empty else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
          self._maps[shard] = buf
    return buf

  def locate(self, index: int) -> tuple[str, int]:
    """(shard path, byte offset) of record ``index``; used in error messages."""
    shard = int(np.searchsorted(self._starts, index, side="right") - 1)
    return self.paths[shard], int(self._offsets[shard][index - self._starts[shard]])

  def _where(self, index: int) -> tuple[int, int, int, int]:
    """(shard, record within it, start, end byte) of record ``index`` of the split."""
    index = int(index)
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} out of range for {self!r}")
    shard = int(np.searchsorted(self._starts, index, side="right") - 1)
    local = int(index - self._starts[shard])
    offsets = self._offsets[shard]
    return shard, local, int(offsets[local]), int(offsets[local + 1])

  def _remote_ranges(self, where: list[tuple[int, int, int, int]]) -> list[bytes]:
    """The frames' bytes, cut at the shard's size (a truncated shard: short or empty frames,
    which fail their check, as the mapped slice does locally)."""
    want = [(self.paths[s], a, min(b, self._sizes[s])) for s, _, a, b in where]
    fetch = [w for w in want if w[1] < w[2]]
    got = iter(storage.read_ranges(*map(list, zip(*fetch))) if fetch else [])
    return [next(got) if a < b else b"" for _, a, b in want]

  def __getitem__(self, index: int) -> np.ndarray | None:
    if self._remote:
      return self.read_many([index])[0]
    shard, local, start, end = where = self._where(index)
    buf = self._buffer(shard)[start:end]  # shorter than asked if truncated
    return self._payload(int(index), where, buf)

  def read_many(self, indices) -> list[np.ndarray | None]:
    """``[self[i] for i in indices]``; on object storage with concurrent ranged GETs."""
    if not self._remote:
      return [self[i] for i in indices]
    where = [self._where(i) for i in indices]
    bufs = self._remote_ranges(where)
    return [self._payload(int(i), w, b) for i, w, b in zip(indices, where, bufs)]

  def _payload(self, index: int, where: tuple[int, int, int, int],
               buf: bytes | memoryview) -> np.ndarray | None:
    """The record's checked payload, or None for a corrupt one with ``skip_corrupt``."""
    shard, local, start, _ = where
    try:
      payload = tfrecord.parse_frame(buf, self.paths[shard], start, self.verify_crc)
      # A uint8 view: no copy in this process, and it pickles (as a copy) if a consumer
      # sends raw records to another process.
      return np.frombuffer(payload, np.uint8)
    except tfrecord.CorruptRecordError as e:
      e.args = (f"{e} (record {local} of the shard, {index} of split {self.split!r})",)
      if not self.skip_corrupt:
        raise
      self.num_skipped += 1
      logging.warning("skipping corrupt record (%d distinct records skipped in this run): %s",
                      self._skips.add(f"{self.data_dir}:{self.split}/{index}"), e)
      return None
