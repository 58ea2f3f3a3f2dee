"""Validation signals during pretraining: held-out MAE and NT-Xent at fixed draws.

  validator = validation.make_validator(config, workdir, graphdef, shardings, mesh, window)
  if validator.due(step): last.update(validator(step, state, writer))
  validator.plot()   # WORKDIR/plots/loss_curves.png from metrics.jsonl

The batches (records, crops, stretches) and the mask keys are drawn once, from a seed of
their own, so successive values differ only through the parameters. The views are clean
(resampled and normalised, no augmentation): the numbers measure the model, not the noise
an augmentation happened to add, and they are what the linear baseline of
``benchmarks/mae_ablation.py`` is scored on. ``val_mae`` is ``mae.reference_mae``: per-patch
normalised with the reference floor whatever ``loss.norm_eps`` a run trains with, so runs
with different floors compare (1.0 = predicting each patch's mean).
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ecgjax import metrics as metrics_lib
from ecgjax import sharding
from ecgjax import storage
from ecgjax.data import pipeline
from ecgjax.data import windows
from ecgjax.objectives import hybrid
from ecgjax.objectives import mae

# Seed offset of the eval draws (records, crops, mask keys), apart from the train stream.
EVAL_SEED_OFFSET = 7919


def eval_batches(config, window, num_batches: int, split: str | None = None
                 ) -> list[dict[str, np.ndarray]]:
  """``num_batches`` fixed two-view segment batches (process-local) of ``split``."""
  keys = tuple(window.batch_struct(1))
  local = config.global_batch // jax.process_count()
  it = iter(pipeline.make_train_dataset(
      config.data, local, config.seed + EVAL_SEED_OFFSET, jax.process_index(),
      jax.process_count(), split=split or config.data.eval_split))
  return [{k: b[k] for k in keys} for b in (next(it) for _ in range(num_batches))]


def mask_key(seed: int, index: jax.Array | int) -> jax.Array:
  """The mask key of eval batch ``index`` (shared with the linear baseline)."""
  return jax.random.fold_in(jax.random.key(seed + EVAL_SEED_OFFSET), index)


def clean_views(batch: dict[str, jax.Array], window) -> dict[str, jax.Array]:
  """Segment batch -> loss_fn views without augmentation (targets = inputs)."""
  v = windows.views(batch, window)
  return {"view1": v["view1"], "view2": v["view2"], "mask1": batch["lead_mask"],
          "mask2": batch["lead_mask"], "target1": v["view1"], "target2": v["view2"]}


def eval_metrics(model, views: dict[str, jax.Array], key: jax.Array, cfg) -> dict[str, jax.Array]:
  """{'val_mae', 'val_nt_xent', 'val_contrastive_acc'} of one batch; terms with weight 0
  are skipped. val_mae: view 1, masks from ``key``; NT-Xent: both views, unmasked spans
  from ``fold_in(key, 1)``."""
  out = {}
  if cfg.mae_weight > 0:
    x, lead_mask = views["view1"], views["mask1"]
    pred, masked = hybrid.reconstruct(model, x, lead_mask, key, cfg)
    n = masked.shape[1] // x.shape[1]
    out["val_mae"] = mae.reference_mae(model.patchify(pred), model.patchify(x), masked,
                                       jnp.repeat(lead_mask, n, axis=1))
  if cfg.contrastive_weight > 0:
    con_cfg = cfg.copy_and_resolve_references()
    con_cfg.mae_weight = 0.0
    _, m = hybrid.loss_fn(model, views, jax.random.fold_in(key, 1), con_cfg)
    out.update(val_nt_xent=m["nt_xent"], val_contrastive_acc=m["contrastive_acc"])
  return out


def eval_step(graphdef, state, batch: dict[str, jax.Array], index: jax.Array, *, config,
              window) -> dict[str, jax.Array]:
  """Pure: (state, segment batch, batch index) -> metrics."""
  model, _ = nnx.merge(graphdef, state)
  return eval_metrics(model, clean_views(batch, window), mask_key(config.seed, index),
                      config.loss)


class Validator:
  """Runs ``eval_step`` over the fixed batches every ``config.eval_every`` steps."""

  def __init__(self, config, workdir: str, graphdef=None, shardings=None, mesh=None,
               window=None, batches: list[dict[str, np.ndarray]] | None = None):
    self.every = int(config.get("eval_every", 0)) if batches else 0
    self.workdir = workdir
    if self.every:
      self._batches = [sharding.global_batch_from_local(b, mesh) for b in batches]
      rep = sharding.replicated(mesh)
      self._step = jax.jit(functools.partial(eval_step, graphdef, config=config, window=window),
                           in_shardings=(shardings, None, rep), out_shardings=rep)

  def due(self, step: int) -> bool:
    return bool(self.every) and step % self.every == 0

  def __call__(self, step: int, state, writer) -> dict[str, float]:
    sums: dict[str, Any] = {}
    for i, batch in enumerate(self._batches):
      m = self._step(state, batch, jnp.asarray(i, jnp.int32))
      sums = {k: sums.get(k, 0.0) + v for k, v in m.items()}
    out = {k: float(v) / len(self._batches) for k, v in jax.device_get(sums).items()}
    writer.scalars(step, out)
    metrics_lib.log("step %d validation: %s", step,
                    " | ".join(f"{k} {v:.4g}" for k, v in out.items()))
    self.plot()
    return out

  def plot(self) -> str | None:
    """WORKDIR/plots/loss_curves.png (train and val curves), on process 0."""
    rows_path = storage.join(self.workdir, "metrics.jsonl")
    if jax.process_index() or not storage.exists(rows_path):
      return None
    from ecgjax import plots  # pylint: disable=g-import-not-at-top
    return plots.loss_curves(storage.join(self.workdir, "plots", "loss_curves.png"),
                             plots.read_metrics(rows_path))


def make_validator(config, workdir: str, graphdef, shardings, mesh, window) -> Validator:
  """A Validator; inactive (plots only) when eval_every is 0 or beyond total_steps, or the
  eval split is empty."""
  batches = None
  if 0 < int(config.get("eval_every", 0)) <= int(config.total_steps) and config.data.path:
    try:
      batches = eval_batches(config, window, int(config.get("eval_batches", 4)))
    except ValueError as e:  # no such split (an archive converted without one)
      metrics_lib.log("validation off: split %r of %s unusable (%s)", config.data.eval_split,
                      config.data.path, e)
  return Validator(config, workdir, graphdef, shardings, mesh, window, batches)
