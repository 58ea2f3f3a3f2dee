"""Host -> device: global batches from the grain iterator, prefetched on a thread.

The prefetcher records the grain iterator state *after* each batch it produces and exposes
the state of the last batch handed to the train loop, so a checkpoint taken at step k
resumes at batch k+1 even though the thread has already read ahead.
"""
from __future__ import annotations

import json
import queue
import threading

import jax

from ecgjax import sharding
from ecgjax.data import source as source_lib


class DevicePrefetcher:
  """Iterator of global jax.Array batches; get_state/set_state for grain checkpointing."""

  def __init__(self, host_iter, mesh: jax.sharding.Mesh, size: int = 2,
               keys: tuple[str, ...] | None = None):
    self._it = host_iter
    self._keys = keys
    self._mesh = mesh
    self._size = max(1, int(size))
    self._state = host_iter.get_state()
    self._start()

  def _start(self) -> None:
    self._queue: queue.Queue = queue.Queue(self._size)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True, name="device_prefetch")
    self._thread.start()

  def _run(self) -> None:
    try:
      while not self._stop.is_set():
        batch = next(self._it)
        state = self._it.get_state()
        if self._keys is not None:
          batch = {k: batch[k] for k in self._keys}
        arrays = sharding.global_batch_from_local(batch, self._mesh)
        while not self._stop.is_set():
          try:
            self._queue.put((arrays, state), timeout=0.1)
            break
          except queue.Full:
            continue
    except BaseException as e:  # pylint: disable=broad-except
      self._queue.put((e, None))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, jax.Array]:
    arrays, state = self._queue.get()
    if isinstance(arrays, BaseException):
      raise arrays
    self._state = state
    return arrays

  def close(self) -> None:
    self._stop.set()
    while self._thread.is_alive():
      try:
        self._queue.get(timeout=0.05)
      except queue.Empty:
        pass
      self._thread.join(timeout=0.05)

  # grain.checkpoint.CheckpointSave/Restore treat non-DatasetIterator items like the
  # DataLoader iterator: state as JSON bytes, then start_prefetch() after a restore.
  # The records skipped as corrupt so far ride along, so the count survives a resume.
  def get_state(self) -> bytes:
    return json.dumps({"grain": self._state,
                       "skipped_records": source_lib.skipped_ids()}).encode()

  def set_state(self, state: bytes) -> None:
    self.close()
    state = json.loads(state)
    if isinstance(state, dict) and "grain" in state:  # older checkpoints: the grain state only.
      source_lib.restore_skipped(state.get("skipped_records", {}))
      state = state["grain"]
    self._state = state
    self._it.set_state(self._state)
    self._start()

  def start_prefetch(self) -> None:
    pass
