"""Multi-scale span masking over the lead-major token grid, at one ratio on any lead subset.

IID patch masking at high ratios is easy to undo on ECG (neighbouring patches of one beat
are almost redundant), so masked regions here are spans of several lengths plus, now and
then, a whole lead (forces inter-lead inference).

The ratio holds among the tokens a sample actually has: sample i keeps
k_i = round((1 - ratio) * present_i) tokens visible (at least 1 when any lead is present),
so a 2-lead Holter record or a 1-lead crop is masked like a 12-lead one. The encoder still
sees a static K = round((1 - ratio) * L * n) slots (the most any sample can need), so it
compiles once; slots beyond k_i are padding that ``visible_valid`` marks False: they are
kept out of attention by the encoder and count as masked in the loss.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

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


class TokenMask(NamedTuple):
  """Which tokens of the [L*n] grid the encoder sees.

  visible_idx: [B, K] int32 grid indices; the sample's k_i visible tokens come first
    (ascending), then K - k_i padding slots (ascending, arbitrary tokens).
  visible_valid: [B, K] bool, True for the k_i real slots.
  masked: [B, L*n] bool, True for every token not in a real slot (absent-lead tokens
    included; the loss drops those through lead validity).
  """

  visible_idx: jax.Array
  visible_valid: jax.Array
  masked: jax.Array


def num_visible(num_tokens: int, mask_ratio: float) -> int:
  """Static visible-slot count K = max(1, round((1 - mask_ratio) * num_tokens))."""
  if not 0.0 <= mask_ratio < 1.0:
    raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
  return max(1, int(round((1.0 - mask_ratio) * num_tokens)))


def visible_counts(lead_mask: jax.Array, num_patches: int, mask_ratio: float) -> jax.Array:
  """Per-sample k_i [B] int32: round((1 - ratio) * present tokens), >= 1 if any is present.

  Clipped to the static K so that float rounding can never ask for more slots than exist.
  """
  present = jnp.sum(lead_mask, axis=1).astype(jnp.int32) * num_patches
  k = jnp.round((1.0 - mask_ratio) * present.astype(jnp.float32)).astype(jnp.int32)
  kmax = num_visible(lead_mask.shape[1] * num_patches, mask_ratio)
  return jnp.where(present > 0, jnp.clip(k, 1, kmax), 0)


def _span_scores(u_start: jax.Array, priority: jax.Array, n: int, scales: Sequence[int],
                 counts: Sequence[int]) -> jax.Array:
  """[R, n] max priority of the spans covering each position (0 where none does).

  A span of length s starts uniformly in [-(s - 1), n - 1] and its out-of-range part is
  dropped, so every position is covered with the same probability s / (n + s - 1); starts
  in [0, n - s] would cover the edges s times less often than the middle.
  """
  r = u_start.shape[0]
  pos, prio = [], []
  offset = 0
  for s, c in zip(scales, counts):
    start = jnp.floor(u_start[:, offset:offset + c] * (n + s - 1)).astype(jnp.int32) - (s - 1)
    start = jnp.minimum(start, n - 1)  # u == 1.0 guard.
    p = (start[:, :, None] + jnp.arange(s)).reshape(r, c * s)
    pos.append(jnp.where((p >= 0) & (p < n), p, n))  # Column n collects the dropped part.
    prio.append(jnp.repeat(1.0 + priority[:, offset:offset + c], s, axis=1))
    offset += c
  pos, prio = jnp.concatenate(pos, axis=1), jnp.concatenate(prio, axis=1)
  rows = jnp.arange(r)[:, None]
  return jnp.zeros((r, n + 1), jnp.float32).at[rows, pos].max(prio)[:, :n]


def multiscale_mask(key: jax.Array, batch_size: int, num_leads: int, num_patches: int,
                    lead_mask: jax.Array, mask_ratio: float,
                    span_scales: Sequence[int] = (1, 2, 4),
                    whole_lead_prob: float = 0.1) -> TokenMask:
  """Draws which tokens of the [L*n] grid stay visible.

  Per sample and lead, random spans of every length s in ``span_scales`` (equal total
  length per scale, position-uniform starts, overlaps allowed) raise the masking score of
  the patches they cover to the span's random priority (max over covering spans). Masking
  the highest scores therefore masks the union of the top-priority spans until the budget
  is met; only the last span may be cut. With probability ``whole_lead_prob`` a lead is
  lifted above all spans (masked whole when the budget allows); absent leads get +inf. The
  k_i lowest-score tokens of sample i stay visible (``visible_counts``).

  Args:
    key: PRNG key.
    batch_size, num_leads, num_patches: B, L, n (static).
    lead_mask: [B, L] bool, False for absent leads.
    mask_ratio: fraction of each sample's present tokens to hide, in [0, 1).
    span_scales: span lengths in patches.
    whole_lead_prob: per-lead probability of masking the whole lead.

  Returns:
    A ``TokenMask`` with K = ``num_visible(L * n, mask_ratio)`` slots.
  """
  b, l, n = batch_size, num_leads, num_patches
  k = num_visible(l * n, mask_ratio)
  counts_i = visible_counts(lead_mask, n, mask_ratio)
  if mask_ratio == 0.0:  # Nothing to mask: present tokens first, no random draws.
    score = jnp.broadcast_to(jnp.arange(l * n, dtype=jnp.float32), (b, l * n))
  else:
    scales = [min(int(s), n) for s in span_scales]
    total = _SPAN_OVERSAMPLE * -math.log(1.0 - min(mask_ratio, 0.95)) * n / len(scales)
    counts = [max(1, math.ceil(total / s)) for s in scales]
    m = sum(counts)
    # One uniform draw feeds every random choice: each threefry call is costly to compile.
    u = jax.random.uniform(key, (b * l, 2 * m + 1 + n))
    score = _span_scores(u[:, :m], u[:, m:2 * m], n, scales, counts).reshape(b, l, n)
    score = score + jnp.where(u[:, 2 * m].reshape(b, l, 1) < whole_lead_prob, _WHOLE_LEAD, 0.0)
    score = (score + _TIE_NOISE * u[:, 2 * m + 1:].reshape(b, l, n)).reshape(b, l * n)
  present = jnp.repeat(lead_mask, n, axis=1)
  score = jnp.where(present, score, jnp.inf)

  # The K lowest scores, lowest first; sample i's first k_i of them are its visible tokens.
  _, idx = jax.lax.top_k(-score, k)
  valid = jnp.arange(k)[None, :] < counts_i[:, None]
  # Real slots first, each group ascending (a stable, readable layout for the encoder).
  key_ = jnp.sort(jnp.where(valid, idx, l * n + idx), axis=-1)
  visible_idx = (key_ % (l * n)).astype(jnp.int32)
  visible_valid = key_ < l * n
  rows = jnp.arange(b)[:, None]
  visible = jnp.zeros((b, l * n), bool).at[
      rows, jnp.where(visible_valid, visible_idx, l * n)].set(True, mode="drop")
  return TokenMask(visible_idx, visible_valid, ~visible)
