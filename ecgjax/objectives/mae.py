"""Masked-patch reconstruction loss (MAE) on per-patch-normalised targets."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def patch_stats(target: jax.Array, eps: float = 1e-6) -> tuple[jax.Array, jax.Array]:
  """Per-patch mean and std over the last axis (P), float32, shaped [..., 1]."""
  target = target.astype(jnp.float32)
  mean = target.mean(axis=-1, keepdims=True)
  var = target.var(axis=-1, keepdims=True)
  return mean, jnp.sqrt(var + eps)


def mae_loss(pred: jax.Array, target: jax.Array, masked: jax.Array, valid: jax.Array,
             norm_target: bool = True, eps: float = 1e-6) -> jax.Array:
  """Mean squared error over tokens that are masked AND valid.

  Normalising each target patch by its own mean/std (as in MAE) makes the model predict
  shape rather than baseline wander and amplitude, which otherwise dominate the error.

  Args:
    pred: [B, T, P] predictions (normalised space when ``norm_target``).
    target: [B, T, P] raw patches.
    masked: [B, T] bool, tokens hidden from the encoder (a sample's padding slots included).
    valid: [B, T] bool, tokens of present leads.
    norm_target: normalise each target patch over P.
    eps: variance floor for the normalisation.

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
