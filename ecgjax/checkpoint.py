"""Orbax checkpointing of {train state, data iterator} in one step directory.

* async saves every ``config.checkpoint_every`` steps, keep the latest N plus the best
  (lowest training loss at save time);
* restore onto any mesh: the abstract target carries the *current* shardings;
* the grain iterator state is saved beside the model, so a resumed job reads exactly the
  batch an uninterrupted job would have read (never re-seeded);
* every finalised step is sealed with ``ecgjax_integrity.json`` (size + crc32c of each file):
  Orbax/TensorStore read a bit-flipped or partly truncated OCDBT data file without error,
  so restore checks the seal and falls back to the previous step on any mismatch;
* a failing save is retried; the workdir is probed (writable, free space) before compile.

The directory may be a bucket (``gs://...``): Orbax writes it through tensorstore, and the
seal, its verification, the probe and the quarantine go through :mod:`ecgjax.storage`.
There a step is final once Orbax wrote its ``commit_success.txt`` (no rename on object
stores), and a quarantined step is copied out and then deleted.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from typing import Any

import crc32c
import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from ecgjax import storage


INTEGRITY_FILE = "ecgjax_integrity.json"
_SEALED_ITEMS = ("state", "data_iter")  # Orbax may rewrite its step-level metadata later.
_SAVE_RETRIES = 3
_RETRY_BACKOFF_S = 2.0
# Orbax's mark of a finished step on object stores (its CommitFileTemporaryPath), where a
# step is written in place instead of renamed into place.
COMMIT_FILE = "commit_success.txt"


class CheckpointError(IOError):
  """A checkpoint is unreadable, fails its integrity seal, or could not be written."""


class RestoreConsensusError(CheckpointError):
  """A process cannot restore the step process 0 chose (no process resumes on its own)."""


class WorkdirError(OSError):
  """The workdir cannot hold checkpoints: not writable, or too little free space."""


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return storage.join(str(manager.directory), str(step))


def is_final(path: str) -> bool:
  """Whether Orbax finished writing the step directory ``path``."""
  if storage.is_remote(path):
    return storage.exists(storage.join(path, COMMIT_FILE))
  return os.path.isdir(path)  # renamed into place when final.


def _digest(path: str) -> tuple[int, int]:
  """(size, crc32c) of a file, streamed in 8 MiB chunks."""
  crc, size = 0, 0
  with storage.open(path, "rb") as f:
    while chunk := f.read(8 << 20):
      crc = crc32c.crc32c(chunk, crc)
      size += len(chunk)
  return size, crc


def _item_files(path: str) -> list[str]:
  out = []
  for item in _SEALED_ITEMS:
    item_dir = storage.join(path, item)
    if storage.isdir(item_dir):
      out += [f"{item}/{f}" for f in storage.walk_files(item_dir)]
  return sorted(out)


def seal(path: str) -> None:
  """Writes the integrity manifest of a finalised step directory (atomically)."""
  files = {f: list(_digest(storage.join(path, f))) for f in _item_files(path)}
  storage.write_text(storage.join(path, INTEGRITY_FILE), json.dumps({"version": 1,
                                                                     "files": files}))


def verify(path: str) -> bool:
  """True if ``path`` matches its seal, False if it has none; raises CheckpointError if not.

  Unsealed steps come from older versions or a kill between Orbax's final rename and the
  seal (milliseconds); they are restored on Orbax's own checks, with a warning.
  """
  manifest = storage.join(path, INTEGRITY_FILE)
  if not storage.exists(manifest):
    return False
  try:
    files = json.loads(storage.read_text(manifest))["files"]
  except (OSError, ValueError, KeyError) as e:
    raise CheckpointError(f"checkpoint {path}: unreadable {INTEGRITY_FILE} ({e})") from e
  for rel, (size, crc) in sorted(files.items()):
    full = storage.join(path, rel)
    if not storage.exists(full):
      raise CheckpointError(f"checkpoint {path}: {rel} is missing")
    got_size, got_crc = _digest(full)
    if got_size != size:
      raise CheckpointError(f"checkpoint {path}: {rel} has {got_size} bytes, sealed with "
                            f"{size} (truncated or rewritten)")
    if got_crc != crc:
      raise CheckpointError(f"checkpoint {path}: {rel} fails its crc32c (corrupted bytes)")
  extra = sorted(set(_item_files(path)) - set(files))
  if extra:
    logging.warning("checkpoint %s: files not in its seal (ignored): %s", path, extra[:5])
  return True


class Manager(ocp.CheckpointManager):
  """Orbax manager that seals each step once it is final (async saves included).

  A poller thread seals a step as soon as Orbax renames its directory into place;
  wait_until_finished() seals whatever is still pending, so a clean exit leaves every
  step sealed. Only process 0 seals.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self._pending: list[int] = []
    self._seal_lock = threading.Lock()
    self._poller: threading.Thread | None = None
    self._closed = threading.Event()

  def seal_when_final(self, step: int) -> None:
    if jax.process_index() != 0:
      return
    with self._seal_lock:
      self._pending.append(step)
    if self._poller is None or not self._poller.is_alive():
      self._poller = threading.Thread(target=self._poll, daemon=True, name="ckpt_seal")
      self._poller.start()

  def _poll(self) -> None:
    while not self._closed.is_set() and self._seal_pending(final=False):
      time.sleep(0.02)

  def _seal_pending(self, final: bool) -> bool:
    """Seals the pending steps that are final; returns whether any are left."""
    with self._seal_lock:
      for s in list(self._pending):
        path = step_dir(self, s)
        if is_final(path):
          try:
            seal(path)
          except FileNotFoundError:  # deleted meanwhile by the preservation policy.
            pass
          except OSError as e:
            logging.error("could not seal checkpoint %s: %s", path, e)
          self._pending.remove(s)
        elif final:  # the save failed: nothing to seal.
          self._pending.remove(s)
      return bool(self._pending)

  def wait_until_finished(self):
    try:
      super().wait_until_finished()
    finally:
      self._seal_pending(final=True)

  def close(self):
    try:
      super().close()
    finally:
      self._closed.set()


def check_workdir(workdir: str) -> None:
  """Fails fast when ``workdir`` cannot be created or written (before anything compiles).

  A bucket is probed with one small object written and deleted (credentials, permissions,
  a bucket that does not exist).
  """
  try:
    storage.makedirs(workdir)
    probe = storage.join(workdir, f".write_probe-{os.getpid()}")
    storage.write_bytes(probe, b"\0" * 4096)
    storage.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir!r} is not writable: {e.strerror or e} "
                       f"({type(e).__name__}); choose another --workdir or fix its "
                       "permissions / mount") from e


def check_free_space(workdir: str, need_bytes: int) -> None:
  """Fails fast when the workdir's file system cannot hold one more checkpoint."""
  if storage.is_remote(workdir):
    return  # object stores have no free-space figure.
  free = shutil.disk_usage(workdir).free
  if free < need_bytes:
    raise WorkdirError(f"workdir {workdir!r} has {free / 2**20:.1f} MiB free but one "
                       f"checkpoint needs about {need_bytes / 2**20:.1f} MiB; free space or "
                       "choose another --workdir")


def make_manager(ckpt_dir: str, cfg) -> ocp.CheckpointManager:
  policy = ocm.AnyPreservationPolicy([
      ocm.LatestN(n=int(cfg.keep_checkpoints)),
      ocm.BestN(get_metric_fn=lambda m: m["loss"], reverse=True, n=1,
                keep_checkpoints_without_metrics=False),
  ])
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=1,  # the train loop decides when; SIGTERM saves off-interval.
      preservation_policy=policy,
      enable_async_checkpointing=bool(cfg.get("async_checkpointing", True)),
      create=True,
      cleanup_tmp_directories=True,
  )
  return Manager(storage.abspath(ckpt_dir), options=options, item_names=("state", "data_iter"))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iter: grain.DatasetIterator | None, metrics: dict[str, float] | None = None,
         force: bool = False, retries: int = _SAVE_RETRIES) -> bool:
  """Starts a (possibly async) save of ``step``; retries with backoff when it fails.

  An async save that failed in the background surfaces here, on the next save: it is
  reported and this (newer) state is saved instead. After ``retries`` failures the error
  propagates; the older checkpoints stay in place.
  """
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  for attempt in range(retries + 1):
    try:
      saved = manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)
      break
    except Exception as e:  # pylint: disable=broad-except
      if isinstance(e, ocp.checkpoint_manager.StepAlreadyExistsError):
        raise
      logging.error("checkpoint save of step %d in %s failed (attempt %d of %d): %s: %s",
                    step, manager.directory, attempt + 1, retries + 1, type(e).__name__, e)
      if attempt == retries:
        raise CheckpointError(f"could not save step {step} to {step_dir(manager, step)} after "
                              f"{retries + 1} attempts: {e}") from e
      time.sleep(_RETRY_BACKOFF_S * 2**attempt)
  if saved and isinstance(manager, Manager):
    manager.seal_when_final(step)
  return saved


def _iter_state_file(manager: ocp.CheckpointManager, step: int) -> str:
  return storage.join(str(manager.directory), str(step), "data_iter",
                      f"process_{jax.process_index()}-of-{jax.process_count()}.json")


def _broadcast_from_0(value: int) -> int:
  """Process 0's ``value`` on every process (the restore consensus)."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def _check_seal(manager: ocp.CheckpointManager, s: int) -> str | None:
  """None if step ``s`` passes its seal (or has none), else why not."""
  path = step_dir(manager, s)
  try:
    if not verify(path):
      logging.warning("checkpoint %s has no %s (older version, or killed while sealing): "
                      "restoring it on Orbax's own checks", path, INTEGRITY_FILE)
    return None
  except Exception as e:  # pylint: disable=broad-except
    logging.error("checkpoint %s is unreadable (%s: %s); falling back to an older one",
                  path, type(e).__name__, e)
    return f"{path}: {type(e).__name__}: {e}"


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            data_iter: grain.DatasetIterator | None,
            step: int | None = None,
            quarantine: bool = False) -> tuple[int, Any, bool] | None:
  """Restores ``step`` (default: the newest readable one) into ``abstract_state``.

  Returns (step, state, iterator_restored) or None when there is no checkpoint. The
  shardings inside ``abstract_state`` decide the layout, so any mesh works. ``data_iter``
  is restored in place when this process count saved a state for it; otherwise (the job
  was restarted with another process count) only the model is restored and the caller
  decides how to continue the input.

  Consensus: process 0 alone chooses the step (the newest whose seal verifies; a step that
  fails it is reported with its path and the previous one is tried) and broadcasts it;
  every process restores that step. With several processes, one that cannot restore it
  raises RestoreConsensusError (the job fails; processes never resume from different
  steps). A single process also falls back past a step Orbax itself cannot read. If no
  step is readable this raises CheckpointError rather than start over. ``quarantine`` (the
  trainer, which will write those step numbers again) moves the unreadable newer steps to
  ``<dir>_unreadable/``; readers (export, probe) leave them.
  """
  candidates = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  failures, next_candidate = [], 0
  while True:
    chosen = -1
    if jax.process_index() == 0:
      while next_candidate < len(candidates) and chosen < 0:
        s = candidates[next_candidate]
        next_candidate += 1
        why = _check_seal(manager, s)
        if why is None:
          chosen = s
        elif step is not None:
          raise CheckpointError(why)
        else:
          failures.append((step_dir(manager, s), why))
    chosen = _broadcast_from_0(chosen)
    if chosen < 0:
      break
    path = step_dir(manager, chosen)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    with_iter = data_iter is not None and storage.exists(_iter_state_file(manager, chosen))
    if with_iter:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = manager.restore(chosen, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      if jax.process_count() > 1:
        raise RestoreConsensusError(
            f"process {jax.process_index()} of {jax.process_count()} cannot restore step "
            f"{chosen} ({path}), the step process 0 chose: {type(e).__name__}: {e}") from e
      if step is not None:
        raise
      logging.error("checkpoint %s is unreadable (%s: %s); falling back to an older one",
                    path, type(e).__name__, e)
      failures.append((path, f"{path}: {type(e).__name__}: {e}"))
      continue
    logging.info("restoring step %d, chosen by process 0 of %d", chosen, jax.process_count())
    if failures:
      logging.warning("resuming from %s, skipped %d unreadable newer checkpoint(s)", path,
                      len(failures))
    if quarantine and _broadcast_from_0(len(failures)):
      _quarantine(manager, [p for p, _ in failures])
    if data_iter is not None and not with_iter:
      logging.warning("checkpoint %d has no data-iterator state for %d processes "
                      "(saved with another process count): restored the model only", chosen,
                      jax.process_count())
    return chosen, restored["state"], with_iter
  if _broadcast_from_0(len(failures)):
    # Starting from scratch beside unreadable checkpoints would silently drop the run.
    raise CheckpointError(f"no readable checkpoint in {manager.directory}:\n  " +
                          "\n  ".join(m for _, m in failures))
  return None


def _quarantine(manager: ocp.CheckpointManager, paths: list[str]) -> None:
  """Moves unreadable steps out of the way (kept for forensics, not deleted).

  The resumed run will save those step numbers again, which Orbax refuses while the
  broken directories are still there. On an object store the move is a copy, then a
  delete (no rename there).
  """
  if jax.process_index() == 0:
    dest_dir = str(manager.directory).rstrip("/") + "_unreadable"
    storage.makedirs(dest_dir)
    for path in paths:
      dest = storage.join(dest_dir,
                          f"{storage.basename(path)}-{time.strftime('%Y%m%d-%H%M%S')}")
      storage.move(path, dest)
      logging.warning("moved unreadable checkpoint %s to %s", path, dest)
  if jax.process_count() > 1:  # every process must stop listing the moved steps.
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("ecgjax_quarantine")
  storage.invalidate_caches(str(manager.directory))  # Orbax's (gcsfs) listings still show them.
  manager.reload()


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
