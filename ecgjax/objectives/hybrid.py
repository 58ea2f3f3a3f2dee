"""Hybrid Learning (HL): contrastive-regularised MAE in one encoder pass per view.

loss = mae_weight * mean(MAE(view1), MAE(view2)) + contrastive_weight * NT-Xent(z1, z2)

Each view is masked with ``multiscale_mask`` and encoded once on its visible tokens; the
same encoder output feeds the MAE decoder (patch tokens) and the projection head (pooled
global token). MAE-only and SimCLR-only are this function with a zero weight: the zero
term's branch is skipped at trace time, so e.g. SimCLR-only never builds the decoder.

Default weights: ``contrastive_weight`` 0.1 with temperature 0.1. At initialisation the
normalised-target MSE is ~1 while NT-Xent is ~ln(2B - 1) (~6.2 at B = 256), so lambda = 0.1
keeps reconstruction the dominant signal (dense, per-patch morphology) and lets the
contrastive term shape the pooled global token without collapsing patch detail; the HL
paper does not publish its lambda, so this is a config value to ablate (0.05-0.5).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ecgjax.objectives import contrastive
from ecgjax.objectives import mae
from ecgjax.objectives import masking

_KINDS = ("hl", "mae", "simclr")
# MAE target: 'input' = the augmented view the encoder sees; 'clean' = the same window
# before augmentation (batch['target1'/'target2']), so additive noise is never a target.
TARGETS = ("input", "clean")


def objective_config(kind: str = "hl", **overrides: Any) -> ml_collections.ConfigDict:
  """Objective settings for 'hl', 'mae' (contrastive_weight 0) or 'simclr' (mae_weight 0)."""
  if kind not in _KINDS:
    raise ValueError(f"Unknown objective {kind!r}; choose from {_KINDS}.")
  cfg = ml_collections.ConfigDict(dict(
      mask_ratio=0.75,
      span_scales=(1, 2, 4),
      whole_lead_prob=0.1,
      mae_weight=1.0,
      contrastive_weight=0.1,
      temperature=0.1,
      norm_target=True,
      norm_eps=mae.REFERENCE_EPS,
      target="input",
  ))
  if kind == "mae":
    cfg.contrastive_weight = 0.0
  elif kind == "simclr":
    # Masking is only an augmentation here; a lighter ratio keeps enough signal per view.
    cfg.mae_weight = 0.0
    cfg.contrastive_weight = 1.0
    cfg.mask_ratio = 0.5
  unknown = sorted(set(overrides) - set(cfg.keys()))
  if unknown:
    raise KeyError(f"Unknown objective config fields: {unknown}.")
  cfg.update(overrides)
  if cfg.mae_weight <= 0 and cfg.contrastive_weight <= 0:
    raise ValueError("At least one of mae_weight and contrastive_weight must be > 0.")
  if cfg.target not in TARGETS:
    raise ValueError(f"target={cfg.target!r}; choose from {TARGETS}.")
  return cfg


def _targets(batch: dict[str, jax.Array],
             cfg: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """The two views' MAE targets, [B, L, T] each (see ``TARGETS``)."""
  target = cfg.get("target", "input")
  if target == "clean":
    return batch["target1"], batch["target2"]
  if target != "input":
    raise ValueError(f"loss.target={target!r}; choose from {TARGETS}.")
  return batch["view1"], batch["view2"]


def _mask(model, key: jax.Array, x: jax.Array, lead_mask: jax.Array,
          cfg: ml_collections.ConfigDict) -> tuple[masking.TokenMask, int]:
  b, l, t = x.shape
  n = model.num_patches(t)
  mask = masking.multiscale_mask(key, b, l, n, lead_mask, float(cfg.mask_ratio),
                                 tuple(cfg.span_scales), float(cfg.whole_lead_prob))
  return mask, n


def loss_fn(model, batch: dict[str, jax.Array], key: jax.Array,
            cfg: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
  """HL loss and metrics; pure (all randomness from ``key``), jit- and grad-friendly.

  The two views are interleaved into one [2B] batch (row 2i = view1 of sample i, row 2i+1 =
  view2) so that both go through a single encoder call; interleaving (rather than
  concatenating) keeps each sample's views on the same device when the batch is sharded.

  Args:
    model: a ``SignalTransformer``.
    batch: {'view1', 'view2': [B, L, T] float32, 'mask1', 'mask2': [B, L] bool}, plus
      'target1', 'target2' [B, L, T] when ``cfg.target == 'clean'``.
    key: PRNG key for the masks.
    cfg: objective config (see ``objective_config``).

  Returns:
    (loss, {'loss', 'mae', 'nt_xent', 'contrastive_acc', 'visible_tokens'}).
  """
  mae_weight, con_weight = float(cfg.mae_weight), float(cfg.contrastive_weight)
  v1, v2 = batch["view1"], batch["view2"]
  b, l, t = v1.shape
  x = jnp.stack([v1, v2], axis=1).reshape(2 * b, l, t)
  lead_mask = jnp.stack([batch["mask1"], batch["mask2"]], axis=1).reshape(2 * b, l)

  mask, n = _mask(model, key, x, lead_mask, cfg)
  visible_idx, visible_valid, masked = mask
  tokens, pooled = model.encode(x, lead_mask, visible_idx, visible_valid)

  zero = jnp.zeros((), jnp.float32)
  loss, mae_term, nt, acc = zero, zero, zero, zero
  if mae_weight > 0:
    pred = model.decode(tokens, visible_idx, lead_mask, n, visible_valid)
    target = model.patchify(jnp.stack(_targets(batch, cfg), axis=1).reshape(2 * b, l, t))
    valid = jnp.repeat(lead_mask, n, axis=1)
    per_view = [
        mae.mae_loss(pred.reshape(b, 2, l * n, -1)[:, v],
                     target.reshape(b, 2, l * n, -1)[:, v],
                     masked.reshape(b, 2, -1)[:, v], valid.reshape(b, 2, -1)[:, v],
                     norm_target=bool(cfg.norm_target),
                     eps=float(cfg.get("norm_eps", mae.REFERENCE_EPS)))
        for v in range(2)]
    mae_term = 0.5 * (per_view[0] + per_view[1])
    loss = loss + mae_weight * mae_term
  if con_weight > 0:
    z = model.project(pooled).reshape(b, 2, -1)
    nt, con_metrics = contrastive.nt_xent_with_metrics(z[:, 0], z[:, 1],
                                                       float(cfg.temperature))
    acc = con_metrics["contrastive_acc"]
    loss = loss + con_weight * nt

  metrics = {
      "loss": loss,
      "mae": mae_term,
      "nt_xent": nt,
      "contrastive_acc": acc,
      "visible_tokens": jnp.mean(jnp.sum(visible_valid, axis=1).astype(jnp.float32)),
  }
  return loss, metrics


def reconstruct(model, x: jax.Array, lead_mask: jax.Array, key: jax.Array,
                cfg: ml_collections.ConfigDict) -> tuple[jax.Array, jax.Array]:
  """Masked reconstruction in signal units for plotting.

  Per-patch predictions are de-normalised with the true patch mean/std (what the loss
  normalised away), so visible and masked patches can be drawn over the input.

  Returns:
    pred_signal [B, L, T] float32 and masked [B, L*n] bool.
  """
  (visible_idx, visible_valid, masked), n = _mask(model, key, x, lead_mask, cfg)
  tokens, _ = model.encode(x, lead_mask, visible_idx, visible_valid)
  pred = model.decode(tokens, visible_idx, lead_mask, n, visible_valid)
  if cfg.norm_target:
    eps = float(cfg.get("norm_eps", mae.REFERENCE_EPS))
    mean, std = mae.patch_stats(model.patchify(x), eps)
    pred = pred * std + mean
  return model.unpatchify(pred, x.shape[1]), masked
