"""Raw segments -> model windows: anti-alias, resample, normalise (jnp; jitted on device).

The host pipeline (:mod:`ecgjax.data.pipeline`) only slices each view's raw samples out
of the record, in the stored integer dtype. Everything numeric happens here, inside the
jitted train step, on whole batches: per-record boxcar decimation by ``k`` (the anti-alias
step; its first null sits at the new rate), linear interpolation at ``ratio`` source
samples per output sample (rate conversion times time stretch) and per-lead normalisation.
Moving this off the host was measured: it was 55% of the host's per-record time (about
180 us of 330 us on this 2-core machine, numpy), and on an accelerator it is a few
gathers. Eval and embedding jobs run the same function on the host CPU
(:func:`on_host`), so training and inference windows can never drift apart.

Batch fields (per record; a leading batch axis everywhere):
  seg1, seg2   [L, S] raw samples (int16, or float32 when the shards hold other dtypes)
  ratio1/2     float32  source samples per output sample
  valid1/2     int32    samples of the segment that lie inside the record
  k            int32    boxcar decimation factor (1 unless the record is >= 2x the rate)
  scale        [L] float32, mV per raw unit / k; 0 for leads the record lacks
  lead_mask    [L] bool
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NORMALIZE_MODES = ("record", "dataset", "none")


def resample(seg: jax.Array, scale: jax.Array, ratio: jax.Array, valid: jax.Array,
             k: jax.Array, out_len: int) -> jax.Array:
  """[B, L, S] raw segments -> [B, L, out_len] float32 mV.

  Block j of the decimated signal averages raw samples [jk, jk + k) and sits at raw
  position jk + (k - 1) / 2; output t sits at raw position t * ratio. Block sums come from
  differences of an (exact, integer for integer input) prefix sum, so a per-record k costs
  three gathers and no reshapes. Output past the record's end is 0.
  """
  b, _, s = seg.shape
  acc = jnp.int32 if jnp.issubdtype(seg.dtype, jnp.integer) else jnp.float32
  csum = jnp.pad(jnp.cumsum(seg.astype(acc), axis=-1), ((0, 0), (0, 0), (1, 0)))
  kf = k.astype(jnp.float32)[:, None]
  t = jnp.arange(out_len, dtype=jnp.float32)[None, :]
  pos = jnp.maximum(t * (ratio.astype(jnp.float32)[:, None] / kf) - (kf - 1) / (2 * kf), 0.0)
  i0 = jnp.minimum(pos.astype(jnp.int32), (s // k)[:, None] - 2)
  frac = (pos - i0)[:, None, :]

  def prefix(j):  # csum[..., j * k] for every lead: [B, L, out_len]
    idx = jnp.broadcast_to((j * k[:, None])[:, None, :], (b, seg.shape[1], out_len))
    return jnp.take_along_axis(csum, idx, axis=-1)

  c0, c1, c2 = prefix(i0), prefix(i0 + 1), prefix(i0 + 2)
  lo = (c1 - c0).astype(jnp.float32)
  hi = (c2 - c1).astype(jnp.float32)
  y = (lo + (hi - lo) * frac) * scale[:, :, None]
  inside = pos <= (valid // k)[:, None].astype(jnp.float32) - 1
  return jnp.where(inside[:, None, :], y, 0.0)


def normalize(x: jax.Array, present: jax.Array, mode: str, stats: Any = None,
              eps: float = 1e-3) -> jax.Array:
  """Per-lead normalisation of [..., L, T]; absent leads are exactly zero.

  'record': z-score each lead over the window (robust to per-device gain differences);
  'dataset': subtract/divide the spec's per-lead mean/std ([2, L]); 'none': mV as is.
  """
  if mode == "record":
    x = x - x.mean(axis=-1, keepdims=True)
    x = x / (jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True)) + eps)
  elif mode == "dataset":
    stats = jnp.asarray(stats, jnp.float32)
    x = (x - stats[0][:, None]) / (stats[1][:, None] + eps)
  elif mode != "none":
    raise ValueError(f"data.normalize={mode!r}; expected one of {NORMALIZE_MODES}")
  return x * present[..., None]


def _views(batch: dict[str, jax.Array], stats: Any, out_len: int,
           mode: str) -> dict[str, jax.Array]:
  out = {}
  for v in (1, 2):
    if f"seg{v}" in batch:
      x = resample(batch[f"seg{v}"], batch["scale"], batch[f"ratio{v}"], batch[f"valid{v}"],
                   batch["k"], out_len)
      out[f"view{v}"] = normalize(x, batch["lead_mask"], mode, stats)
  return out


def views(batch: dict[str, jax.Array], window) -> dict[str, jax.Array]:
  """{'view1'[, 'view2']: [B, L, T] float32} from a segment batch; traceable (jit it).

  ``window`` is a :class:`ecgjax.data.pipeline.WindowConfig` (rate, length, normalisation).
  """
  return _views(batch, window.lead_stats, window.window_samples, window.normalize)


@functools.partial(jax.jit, static_argnames=("out_len", "mode"))
def _views_jit(batch, stats, out_len: int, mode: str):
  return _views(batch, stats, out_len, mode)


@functools.cache
def _host_device() -> jax.Device:
  try:  # this process's own CPU: on multi-host jobs jax.devices() lists every process's.
    return jax.local_devices(backend="cpu")[0]
  except RuntimeError:  # JAX_PLATFORMS excludes cpu: use the default device.
    return jax.local_devices()[0]


def on_host(batch: dict[str, np.ndarray], window) -> dict[str, np.ndarray]:
  """:func:`views` on the host CPU for numpy consumers (eval, probe, embedding API)."""
  dev = _host_device()
  keys = [k for k in ("seg1", "seg2", "ratio1", "ratio2", "valid1", "valid2", "k", "scale",
                      "lead_mask") if k in batch]
  arrays = jax.device_put({k: batch[k] for k in keys}, dev)
  stats = None if window.lead_stats is None else jax.device_put(window.lead_stats, dev)
  out = _views_jit(arrays, stats, out_len=window.window_samples, mode=window.normalize)
  return {k: np.array(v) for k, v in out.items()}  # writable copies for numpy callers
