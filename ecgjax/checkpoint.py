"""Orbax checkpointing of {train state, data iterator} in one step directory.

* async saves every ``config.checkpoint_every`` steps, keep the latest N plus the best
  (lowest training loss at save time);
* restore onto any mesh: the abstract target carries the *current* shardings;
* the grain iterator state is saved beside the model, so a resumed job reads exactly the
  batch an uninterrupted job would have read (never re-seeded).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm


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
  return ocp.CheckpointManager(os.path.abspath(ckpt_dir), options=options,
                               item_names=("state", "data_iter"))


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iter: grain.DatasetIterator | None, metrics: dict[str, float] | None = None,
         force: bool = False) -> bool:
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=force)


def _iter_state_file(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step), "data_iter",
                      f"process_{jax.process_index()}-of-{jax.process_count()}.json")


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            data_iter: grain.DatasetIterator | None,
            step: int | None = None) -> tuple[int, Any, bool] | None:
  """Restores ``step`` (default: the latest readable one) into ``abstract_state``.

  Returns (step, state, iterator_restored) or None when there is no checkpoint. The
  shardings inside ``abstract_state`` decide the layout, so any mesh works. ``data_iter``
  is restored in place when this process count saved a state for it; otherwise (the job
  was restarted with another process count) only the model is restored and the caller
  decides how to continue the input. A step that fails to restore (truncated,
  half-deleted) is reported with its path and the previous step is tried.
  """
  steps = sorted(manager.all_steps(), reverse=True) if step is None else [step]
  for s in steps:
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    with_iter = data_iter is not None and os.path.exists(_iter_state_file(manager, s))
    if with_iter:
      items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      restored = manager.restore(s, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      path = os.path.join(str(manager.directory), str(s))
      logging.error("checkpoint %s is unreadable (%s: %s); falling back to an older one",
                    path, type(e).__name__, e)
      if step is not None:
        raise
      continue
    if data_iter is not None and not with_iter:
      logging.warning("checkpoint %d has no data-iterator state for %d processes "
                      "(saved with another process count): restored the model only", s,
                      jax.process_count())
    return s, restored["state"], with_iter
  return None


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)
