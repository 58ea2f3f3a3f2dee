"""Self-attention of the Signal Transformer: XLA, cuDNN or Pallas splash kernels, and the
local blocks' per-lead pattern at per-lead cost.

``Attention`` takes either a [B, 1, S, S] bool mask (dense attention) or a
:class:`LeadLocal` pattern (local blocks: per-lead attention plus the global tokens'
queries). ``splash`` runs TPU splash attention (Pallas interpret mode elsewhere, which is how
CPU tests check it against XLA); its masks come as segment ids plus a static block mask.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def dense(din: int, dout: int, axes: tuple[str | None, str | None], *, dtype, param_dtype,
          rngs: nnx.Rngs, kernel_init=None) -> nnx.Linear:
  """Linear layer whose kernel and bias carry logical sharding axes."""
  return nnx.Linear(
      din, dout, dtype=dtype, param_dtype=param_dtype,
      kernel_init=nnx.with_partitioning(kernel_init or nnx.initializers.xavier_uniform(), axes),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)),
      rngs=rngs)


class Attention(nnx.Module):
  """Multi-head self-attention: ``jax.nn.dot_product_attention`` (XLA or cuDNN) or splash."""

  def __init__(self, width: int, num_heads: int, *, embed_axis: str, dtype, param_dtype,
               attention_impl: str | None, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.num_heads = num_heads
    self.attention_impl = attention_impl
    # cuDNN's training kernel with a mask (an additive bias) needs an even token count;
    # tiles of 64 also keep its blocks full. XLA's path takes any length.
    self.seq_multiple = 64 if attention_impl == "cudnn" else 1  # (splash pads on its own.)
    self.query = dense(width, width, (embed_axis, "heads"), **kw)
    self.key = dense(width, width, (embed_axis, "heads"), **kw)
    self.value = dense(width, width, (embed_axis, "heads"), **kw)
    self.out = dense(width, width, ("heads", embed_axis), **kw)

  def __call__(self, x: jax.Array, mask: "jax.Array | LeadLocal") -> jax.Array:
    b, s, d = x.shape
    split = lambda t: t.reshape(b, s, self.num_heads, d // self.num_heads)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    if isinstance(mask, LeadLocal):
      y = _lead_local_attention(q, k, v, mask, self._core, self.attention_impl == "splash")
    else:
      y = self._core(q, k, v, mask)
    return self.out(y.reshape(b, s, d))

  def _core(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Masked attention [B, S, H, Dh] through the configured kernel (padded as it needs)."""
    if self.attention_impl == "splash":
      return splash_attention(q, k, v, segment_ids(mask))
    s = q.shape[1]
    q, k, v, mask = _pad_tokens(q, k, v, mask, self.seq_multiple)
    y = jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=self.attention_impl)
    return y[:, :s]


class LeadLocal(NamedTuple):
  """The local blocks' pattern, run at the cost of per-lead attention (not a dense mask).

  Tokens are ``g`` global tokens then patch tokens. Global queries attend to every valid
  token (``global_mask`` [B, 1, g, S], one small dense call); patch tokens attend within
  their lead only, as ``[B*L, n, n]`` attention on the lead-major grid: the full grid is
  reshaped in place; a subset (MAE's visible tokens) is first scattered to its grid cells
  ``slots`` [B, K] and gathered back after. ``lead_mask`` [B*L, 1, n, n] keeps absent leads
  and empty cells out (each such query sees only itself, as in :func:`_attention_mask`).
  """
  global_mask: jax.Array
  lead_mask: jax.Array
  slots: jax.Array | None = None


def _lead_local_attention(q: jax.Array, k: jax.Array, v: jax.Array, pattern: LeadLocal,
                          core, splash: bool = False) -> jax.Array:
  """Local-block attention [B, g+K, H, Dh] with the FLOPs of per-lead attention.

  ``splash``: the grid stays [B, L*n] (reshaping would pad every lead to splash's
  128-token blocks) and the per-lead pattern is splash's static block-diagonal mask, whose
  empty blocks the kernel skips; segment ids keep absent leads and empty cells out.
  """
  b, _, h, dh = q.shape
  g = pattern.global_mask.shape[2]
  bl, _, n, _ = pattern.lead_mask.shape
  ln = bl // b * n
  y_global = jax.nn.dot_product_attention(q[:, :g], k, v, mask=pattern.global_mask)
  qp, kp, vp = q[:, g:], k[:, g:], v[:, g:]
  if pattern.slots is not None:
    rows = jnp.arange(b)[:, None]
    grid = lambda t: jnp.zeros((b, ln, h, dh), t.dtype).at[rows, pattern.slots].set(t)
    qp, kp, vp = grid(qp), grid(kp), grid(vp)
  if splash:
    l = bl // b
    seg = segment_ids(pattern.lead_mask).reshape(b, l, n) + n * jnp.arange(l)[:, None]
    blocks = np.kron(np.eye(l, dtype=bool), np.ones((n, n), bool))
    yp = splash_attention(qp, kp, vp, seg.reshape(b, ln), blocks)
  else:
    per_lead = lambda t: t.reshape(bl, n, h, dh)
    yp = core(per_lead(qp), per_lead(kp), per_lead(vp), pattern.lead_mask).reshape(b, ln, h, dh)
  if pattern.slots is not None:
    yp = jnp.take_along_axis(yp, pattern.slots[:, :, None, None], axis=1)
  return jnp.concatenate([y_global.astype(yp.dtype), yp], axis=1)


_SPLASH_BLOCK = 128  # TPU tile: sequence blocks of splash attention.


def segment_ids(mask: jax.Array) -> jax.Array:
  """[B, S] ids with mask[i, j] == (id[i] == id[j]) for a [B, 1, S, S] equivalence mask.

  Every mask of the model's ``_core`` calls is one (validity and lead groups, diagonal
  on): the id of a token is its first visible key. The local blocks' global-token rows
  are not, which is why they run through :class:`LeadLocal` with splash.
  """
  return jnp.argmax(mask[:, 0], axis=-1).astype(jnp.int32)


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, seg: jax.Array,
                     static_mask: np.ndarray | None = None) -> jax.Array:
  """Pallas splash attention (TPU; Pallas interpret mode elsewhere) on [B, S, H, Dh].

  Token i attends to j when ``seg[i] == seg[j]`` and ``static_mask[i, j]`` (block-sparse:
  all-False 128x128 blocks are skipped). S is padded to the block size; padded tokens get
  their own segments. The kernel is built per call at trace time (the mask is static).
  """
  from jax.experimental.pallas.ops.tpu import splash_attention as sa  # pylint: disable=g-import-not-at-top
  b, s, h, dh = q.shape
  pad = -s % _SPLASH_BLOCK
  sp = s + pad
  static = np.ones((s, s), bool) if static_mask is None else np.asarray(static_mask, bool)
  static = np.pad(static, ((0, pad), (0, pad))) | np.eye(sp, dtype=bool)
  seg = jnp.concatenate([seg, jnp.broadcast_to(sp + jnp.arange(pad, dtype=jnp.int32),
                                               (b, pad))], axis=1)
  heads_first = lambda t: jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  # splash does not scale the logits.
  q, k, v = heads_first(q * (dh ** -0.5)), heads_first(k), heads_first(v)
  blk = min(_SPLASH_BLOCK, sp)
  sizes = sa.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                        block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk,
                        block_kv_dq=blk)
  kernel = sa.make_splash_mha_single_device(
      mask=sa.MultiHeadMask([sa.NumpyMask(static)] * h), block_sizes=sizes,
      interpret=jax.default_backend() != "tpu")
  out = jax.vmap(lambda q, k, v, sg: kernel(q, k, v, segment_ids=sa.SegmentIds(sg, sg)))(
      q, k, v, seg)
  return out.transpose(0, 2, 1, 3)[:, :s].astype(v.dtype)


def use_lead_slots(num_leads: int, num_patches: int, num_tokens: int) -> bool:
  """Whether local blocks over ``num_tokens`` patch tokens run per lead (else dense + mask).

  Per-lead attention costs L*n^2 (every grid cell, used or not); the dense masked form
  costs K^2 for K tokens. The full grid (K = L*n) always gains L x; MAE's visible subset
  gains only when K > sqrt(L)*n (for 12 leads: mask ratios below ~0.71).
  """
  return num_leads > 1 and num_leads * num_patches**2 < num_tokens**2


def _pad_tokens(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, multiple: int
                ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Pads [B, S, H, D] q/k/v and the [B, 1, S, S] mask to S a multiple of ``multiple``.

  Padded keys are masked out for every query; a padded query sees only itself (no NaN) and
  its output is sliced off by the caller, so real tokens' outputs are unchanged.
  """
  s = q.shape[1]
  pad = -s % multiple
  if not pad:
    return q, k, v, mask
  grow = lambda t: jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0)))
  mask = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, pad)))
  return grow(q), grow(k), grow(v), mask | jnp.eye(s + pad, dtype=bool)
