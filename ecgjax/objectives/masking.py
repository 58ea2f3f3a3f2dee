"""Multi-scale span masking over the lead-major token grid, with a fixed visible count.

IID patch masking at high ratios is easy to undo on ECG (neighbouring patches of one beat
are almost redundant), so masked regions here are spans of several lengths plus, now and
then, a whole lead (forces inter-lead inference). The output shape never depends on the
data: exactly K tokens are visible per sample, so the encoder compiles once.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

# Masking-score layout (higher = masked first): uncovered tokens [0, tie), span-covered
# [1, 2), whole-lead 1e4 + ..., absent lead +inf.
_WHOLE_LEAD = 1e4
_TIE_NOISE = 1e-3
# Total span length drawn per lead, as a multiple of -ln(1 - mask_ratio) * n: with random
# starts, union coverage is then ~1 - (1 - r)^2, comfortably above the masking budget r, so
# the budget is filled from spans rather than from isolated tokens.
_SPAN_OVERSAMPLE = 2.0


def num_visible(num_tokens: int, mask_ratio: float) -> int:
  """Static visible-token count K = max(1, round((1 - mask_ratio) * num_tokens))."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
  return max(1, int(round((1.0 - mask_ratio) * num_tokens)))


def multiscale_mask(key: jax.Array, batch_size: int, num_leads: int, num_patches: int,
                    lead_mask: jax.Array, mask_ratio: float,
                    span_scales: Sequence[int] = (1, 2, 4),
                    whole_lead_prob: float = 0.1) -> tuple[jax.Array, jax.Array]:
  """Draws which tokens of the [L*n] grid stay visible.

  Per sample and lead, random spans of every length s in ``span_scales`` (equal total
  length per scale, random starts, overlaps allowed) raise the masking score of the patches
  they cover to the span's random priority (max over covering spans). Masking the highest
  scores therefore masks the union of the top-priority spans until the budget is met; only
  the last span may be cut. With probability ``whole_lead_prob`` a lead is lifted above all
  spans (masked whole when the budget allows); absent leads get +inf. The K lowest-score
  tokens stay visible (``top_k``, fixed shape).

  Args:
    key: PRNG key.
    batch_size, num_leads, num_patches: B, L, n (static).
    lead_mask: [B, L] bool, False for absent leads.
    mask_ratio: fraction of the L*n tokens to hide, in [0, 1).
    span_scales: span lengths in patches.
    whole_lead_prob: per-lead probability of masking the whole lead.

  Returns:
    visible_idx [B, K] int32, sorted ascending and unique; masked [B, L*n] bool = not
    visible (absent-lead tokens are masked too; the loss drops them by validity).
  """
  b, l, n = batch_size, num_leads, num_patches
  k = num_visible(l * n, mask_ratio)
  if k == l * n:  # Nothing to mask: skip the random draws entirely.
    idx = jnp.broadcast_to(jnp.arange(l * n, dtype=jnp.int32), (b, l * n))
    return idx, jnp.zeros((b, l * n), bool)

  scales = [min(int(s), n) for s in span_scales]
  total = _SPAN_OVERSAMPLE * -math.log(1.0 - min(mask_ratio, 0.95)) * n / len(scales)
  counts = [max(1, math.ceil(total / s)) for s in scales]
  m = sum(counts)
  # A single uniform draw feeds every random choice: each threefry call is costly to compile.
  u = jax.random.uniform(key, (b * l, 2 * m + 1 + n))
  u_start, priority = u[:, :m], u[:, m:2 * m]
  u_lead, u_tie = u[:, 2 * m].reshape(b, l, 1), u[:, 2 * m + 1:].reshape(b, l, n)
  pos, prio = [], []
  offset = 0
  for s, c in zip(scales, counts):
    start = jnp.floor(u_start[:, offset:offset + c] * (n - s + 1)).astype(jnp.int32)
    start = jnp.minimum(start, n - s)
    pos.append((start[:, :, None] + jnp.arange(s)).reshape(b * l, c * s))
    prio.append(jnp.repeat(1.0 + priority[:, offset:offset + c], s, axis=1))
    offset += c
  pos, prio = jnp.concatenate(pos, axis=1), jnp.concatenate(prio, axis=1)
  rows = jnp.arange(b * l)[:, None]
  score = jnp.zeros((b * l, n), jnp.float32).at[rows, pos].max(prio).reshape(b, l, n)
  score = score + jnp.where(u_lead < whole_lead_prob, _WHOLE_LEAD, 0.0)
  score = score + _TIE_NOISE * u_tie
  score = jnp.where(lead_mask[:, :, None], score, jnp.inf).reshape(b, l * n)

  # Visible = the K lowest masking scores.
  _, idx = jax.lax.top_k(-score, k)
  visible_idx = jnp.sort(idx, axis=-1).astype(jnp.int32)
  visible = jnp.zeros((b, l * n), bool).at[jnp.arange(b)[:, None], visible_idx].set(True)
  return visible_idx, ~visible
