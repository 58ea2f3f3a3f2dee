"""Raw segments -> model windows: anti-aliased resampling, normalisation (jnp; jitted).

The host pipeline (:mod:`ecgjax.data.pipeline`) only slices each view's raw samples out
of the record, in the stored integer dtype. Everything numeric happens here, inside the
jitted train step, on whole batches: a windowed-sinc low-pass and interpolation in one
gather (each output sample is the kernel-weighted sum of the raw samples around its source
position, at ``ratio`` source samples per output sample = rate conversion times time
stretch), then per-lead normalisation. Moving this off the host was measured: it was 55%
of the host's per-record time (about 180 us of 330 us on this 2-core machine, numpy), and
on an accelerator it is a few gathers. Eval and embedding jobs run the same function on
the host CPU (:func:`on_host`), so training and inference windows can never drift apart.

Batch fields (per record; a leading batch axis everywhere):
  seg1, seg2   [L, S] raw samples (int16, or float32 when the shards hold other dtypes),
               from ``WindowConfig.context`` samples before the window's first sample
  ratio1/2     float32  source samples per output sample
  valid1/2     int32    segment index where the record ends
  scale        [L] float32, mV per raw unit; 0 for leads the record lacks
  lead_mask    [L] bool
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ecgjax.data.preprocess import RESAMPLE_HALF_WIDTH

NORMALIZE_MODES = ("record", "record_joint", "dataset", "none")

# Kaiser window shape of the resampling kernel. With RESAMPLE_HALF_WIDTH = 8 zero crossings
# a side, the Kaiser estimate A = 2.285 * 2 pi * 0.2 * 16 + 7.95 = 54 dB for a transition of
# 0.4-0.6 x the new rate gives beta = 0.1102 * (54 - 8.7) = 5: measured, >= 53 dB from
# 0.6 x the new rate (60 Hz mains into a 100 Hz model) and < 0.3% ripple below 0.4 x.
_KAISER_BETA = 5.0


def _kernel(x: jax.Array) -> jax.Array:
  """Kaiser-windowed sinc at ``x`` cutoff half-periods (zero for |x| >= half width)."""
  z = RESAMPLE_HALF_WIDTH
  inside = jnp.abs(x) < z
  arg = jnp.sqrt(jnp.maximum(1.0 - jnp.square(x / z), 0.0))
  window = jnp.i0(_KAISER_BETA * arg) / np.i0(_KAISER_BETA)
  return jnp.where(inside, jnp.sinc(x) * window, 0.0)


def resample(seg: jax.Array, scale: jax.Array, ratio: jax.Array, valid: jax.Array,
             out_len: int, context: int) -> jax.Array:
  """[B, L, S] raw segments -> [B, L, out_len] float32 mV, anti-aliased.

  Output t sits at raw position context + t * ratio. Its value is a windowed-sinc FIR
  designed per record: the cutoff is the lower Nyquist of the two rates (max(ratio, 1)
  source samples per half-period), so tones above the new Nyquist are removed before they
  can alias, and interpolation is band-limited rather than linear. The segment carries
  ``context`` samples on both sides of the window (``preprocess.resample_context`` of the
  largest ratio), which is also the static kernel reach: 2 * context + 2 taps, whatever
  each record's ratio (mixed rates, stretch share one compile). Weights are renormalised
  over the samples before the record's end, so DC stays exact there; before the record's
  start the segment holds zeros. Output past the record's end is 0.
  """
  b, l, s = seg.shape
  taps = 2 * context + 2
  r = ratio.astype(jnp.float32)[:, None, None]                            # [B, 1, 1]
  pos = context + jnp.arange(out_len, dtype=jnp.float32)[None, :, None] * r  # [B, T, 1]
  j = jnp.floor(pos).astype(jnp.int32) + jnp.arange(1 - taps // 2, taps // 2 + 1)
  w = _kernel((pos - j) / jnp.maximum(r, 1.0))                            # [B, T, taps]
  w = jnp.where((j >= 0) & (j < valid[:, None, None]), w, 0.0)
  w = w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1e-6)
  # One tap per scan step, leads last: each step gathers whole [L] rows of the [S, L]
  # segment. On CPU this ran 3-4x faster than one [B, L, T, taps] gather + contraction,
  # and the scan keeps the compile short where an unrolled loop over taps does not.
  seg_t = jnp.swapaxes(seg, 1, 2)                                         # [B, S, L]
  rows = jax.vmap(lambda a, i: a[i])

  def tap(acc, jw):
    jk, wk = jw
    return acc + rows(seg_t, jk).astype(jnp.float32) * wk[..., None], None

  y, _ = jax.lax.scan(tap, jnp.zeros((b, out_len, l), jnp.float32),
                      (jnp.moveaxis(jnp.clip(j, 0, s - 1), 2, 0), jnp.moveaxis(w, 2, 0)))
  y = jnp.swapaxes(y, 1, 2) * scale[:, :, None]                           # [B, L, T]
  inside = pos[:, :, 0] <= valid[:, None].astype(jnp.float32) - 1
  return jnp.where(inside[:, None, :], y, 0.0)


def normalize(x: jax.Array, present: jax.Array, mode: str, stats: Any = None,
              eps: float = 1e-3) -> jax.Array:
  """Per-lead normalisation of [..., L, T]; absent leads are exactly zero.

  'record': z-score each lead over the window (robust to per-device gain differences, but
  erases the between-lead amplitude ratios that voltage criteria use);
  'record_joint': centre each lead, then divide every lead by one RMS over the window's
  present leads, which keeps those ratios;
  'dataset': subtract/divide the spec's per-lead mean/std ([2, L]); 'none': mV as is.
  """
  if mode in ("record", "record_joint"):
    x = x - x.mean(axis=-1, keepdims=True)
    ms = jnp.mean(x * x, axis=-1, keepdims=True)                              # [..., L, 1]
    if mode == "record_joint":
      p = present[..., None].astype(ms.dtype)
      ms = jnp.sum(ms * p, axis=-2, keepdims=True) / jnp.maximum(
          jnp.sum(p, axis=-2, keepdims=True), 1.0)
    x = x / (jnp.sqrt(ms) + eps)
  elif mode == "dataset":
    stats = jnp.asarray(stats, jnp.float32)
    x = (x - stats[0][:, None]) / (stats[1][:, None] + eps)
  elif mode != "none":
    raise ValueError(f"data.normalize={mode!r}; expected one of {NORMALIZE_MODES}")
  return x * present[..., None]


def _views(batch: dict[str, jax.Array], stats: Any, out_len: int, context: int,
           mode: str) -> dict[str, jax.Array]:
  out = {}
  for v in (1, 2):
    if f"seg{v}" in batch:
      x = resample(batch[f"seg{v}"], batch["scale"], batch[f"ratio{v}"], batch[f"valid{v}"],
                   out_len, context)
      out[f"view{v}"] = normalize(x, batch["lead_mask"], mode, stats)
  return out


def views(batch: dict[str, jax.Array], window) -> dict[str, jax.Array]:
  """{'view1'[, 'view2']: [B, L, T] float32} from a segment batch; traceable (jit it).

  ``window`` is a :class:`ecgjax.data.pipeline.WindowConfig` (rate, length, normalisation).
  """
  return _views(batch, window.lead_stats, window.window_samples, window.context,
                window.normalize)


@functools.partial(jax.jit, static_argnames=("out_len", "context", "mode"))
def _views_jit(batch, stats, out_len: int, context: int, mode: str):
  return _views(batch, stats, out_len, context, mode)


@functools.cache
def _host_device() -> jax.Device:
  try:  # this process's own CPU: on multi-host jobs jax.devices() lists every process's.
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS excludes cpu: use the default device.
    return jax.local_devices()[0]


def on_host(batch: dict[str, np.ndarray], window) -> dict[str, np.ndarray]:
  """:func:`views` on the host CPU for numpy consumers (eval, probe, embedding API)."""
  dev = _host_device()
  keys = [k for k in ("seg1", "seg2", "ratio1", "ratio2", "valid1", "valid2", "scale",
                      "lead_mask") if k in batch]
  arrays = jax.device_put({k: batch[k] for k in keys}, dev)
  stats = None if window.lead_stats is None else jax.device_put(window.lead_stats, dev)
  out = _views_jit(arrays, stats, out_len=window.window_samples, context=window.context,
                   mode=window.normalize)
  return {k: np.array(v) for k, v in out.items()}  # writable copies for numpy callers
