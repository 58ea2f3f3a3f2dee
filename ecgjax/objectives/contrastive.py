"""SimCLR NT-Xent between two views, written on global arrays.

Under ``jax.jit`` with the batch sharded over devices, ``z1``/``z2`` are global arrays, so the
[2B, 2B] similarity matrix below spans the whole global batch: GSPMD inserts the all-gather
of the (small) embeddings and every anchor gets 2B - 2 negatives from all devices, not just
its own shard. No ``shard_map`` or explicit collective is needed (or wanted).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _logits(z1: jax.Array, z2: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
  """Cosine-similarity logits [2B, 2B] with self-similarity removed, and positive indices."""
  z = jnp.concatenate([z1, z2], axis=0).astype(jnp.float32)
  z = z * jax.lax.rsqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), 1e-12))
  logits = jnp.einsum("id,jd->ij", z, z, precision=jax.lax.Precision.HIGHEST) / temperature
  n = z.shape[0]
  # A finite floor (not -inf) keeps every softmax row and its gradient NaN-free.
  logits = jnp.where(jnp.eye(n, dtype=bool), -1e9, logits)
  b = z1.shape[0]
  positives = (jnp.arange(n) + b) % n
  return logits, positives


def nt_xent_with_metrics(z1: jax.Array, z2: jax.Array,
                         temperature: float) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NT-Xent loss and top-1 positive-retrieval accuracy over the 2B anchors.

  Args:
    z1, z2: [B, D] projections of the two views; row i of each comes from the same sample.
    temperature: softmax temperature tau.

  Returns:
    (loss, {'nt_xent': loss, 'contrastive_acc': acc}), float32 scalars.
  """
  logits, positives = _logits(z1, z2, temperature)
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  loss = -jnp.mean(jnp.take_along_axis(log_prob, positives[:, None], axis=-1))
  acc = jnp.mean((jnp.argmax(logits, axis=-1) == positives).astype(jnp.float32))
  return loss, {"nt_xent": loss, "contrastive_acc": acc}


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float) -> jax.Array:
  """SimCLR NT-Xent: each of the 2B anchors vs its positive and 2B - 2 negatives."""
  return nt_xent_with_metrics(z1, z2, temperature)[0]
