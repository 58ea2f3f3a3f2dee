"""Masked-patch reconstruction loss (MAE) on per-patch-normalised targets."""
from __future__ import annotations

import jax
import jax.numpy as jnp

# The variance floor of the reference metric (val_mae, the linear baseline): tiny, so that
# 1.0 is exactly what predicting each patch's mean scores, whatever floor a run trains with.
REFERENCE_EPS = 1e-6


def patch_stats(target: jax.Array, eps: float = REFERENCE_EPS) -> tuple[jax.Array, jax.Array]:
  """Per-patch mean and sqrt(var + eps) over the last axis (P), float32, shaped [..., 1]."""
  target = target.astype(jnp.float32)
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, keepdims=True)
  return mean, jnp.sqrt(var + eps)


def mae_loss(pred: jax.Array, target: jax.Array, masked: jax.Array, valid: jax.Array,
             norm_target: bool = True, eps: float = REFERENCE_EPS) -> jax.Array:
  """Mean squared error over tokens that are masked AND valid.

  Normalising each target patch by its own mean/std (as in MAE) makes the model predict
  shape rather than baseline wander and amplitude, which otherwise dominate the error.
  ``eps`` is a variance floor: with a tiny one, a flat patch (the baseline between beats)
  becomes its noise scaled up to unit variance, an unlearnable target that still weighs as
  much as a QRS; a floor near the noise variance keeps such patches near zero.

  Args:
    pred: [B, T, P] predictions (normalised space when ``norm_target``).
    target: [B, T, P] raw patches.
    masked: [B, T] bool, tokens hidden from the encoder (a sample's padding slots included).
    valid: [B, T] bool, tokens of present leads.
    norm_target: normalise each target patch over P.
    eps: variance floor for the normalisation (units of the input squared).

  Returns:
    Scalar float32; 0 when no token is both masked and valid.
  """
  target = target.astype(jnp.float32)
  if norm_target:
    mean, std = patch_stats(target, eps)
    target = (target - mean) / std
  per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  w = (masked & valid).astype(jnp.float32)
  return jnp.sum(per_token * w) / jnp.maximum(jnp.sum(w), 1.0)


def reference_mae(pred_signal: jax.Array, target: jax.Array, masked: jax.Array,
                  valid: jax.Array) -> jax.Array:
  """MSE of signal-unit predictions [B, T, P] after normalising both by the TARGET patch's
  mean and std (floor ``REFERENCE_EPS``): the one yardstick for every run and baseline."""
  mean, std = patch_stats(target)
  return mae_loss((pred_signal.astype(jnp.float32) - mean) / std, target, masked, valid,
                  norm_target=True, eps=REFERENCE_EPS)
