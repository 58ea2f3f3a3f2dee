"""Host-side, per-record preprocessing: lead selection, R-peak-aligned crops, resampling.

These are the steps that depend on a record's own rate, length and beats, so they run on
the host before batching. Everything stochastic and rate-independent (noise, wander,
scaling, lead dropout, masking) runs jitted on the device on whole batches
(``ecgjax.data.augment``, ``ecgjax.objectives.masking``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ecgjax.data.records import canonical_lead


def lead_rows(record_leads: Sequence[str], target_leads: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Rows of the record for each target lead (-1 if absent) and the present-mask."""
  where = {canonical_lead(l): i for i, l in enumerate(record_leads)}
  rows = np.asarray([where.get(l, -1) for l in target_leads], np.int64)
  return rows, rows >= 0


def choose_start(rng: np.random.Generator, r_peaks: np.ndarray, num_samples: int,
                 src_len: int, pre_r: int) -> int:
  """Start of an R-peak-aligned window: ``pre_r`` samples before a random detected beat.

  Falls back to a uniform start when no beat leaves room for a full window (few or no
  peaks, e.g. asystole or a failed detection), so every record still yields a window.
  """
  last = num_samples - src_len
  if last <= 0:
    return 0
  starts = r_peaks - pre_r
  starts = starts[(starts >= 0) & (starts <= last)]
  if starts.size:
    return int(starts[rng.integers(starts.size)])
  return int(rng.integers(last + 1))


def _decimate(seg: np.ndarray, k: int) -> np.ndarray:
  """Sum of k consecutive samples (a boxcar), as float32; strided adds beat reshape-sum."""
  m = seg.shape[1] // k
  acc = seg[:, 0:m * k:k].astype(np.float32)
  for j in range(1, k):
    acc += seg[:, j:m * k:k]
  return acc


def resample_window(signal: np.ndarray, rows: np.ndarray, gain: np.ndarray, start: int,
                    src_len: float, out_len: int) -> np.ndarray:
  """[len(rows), out_len] float32 mV: ``src_len`` source samples from ``start`` -> ``out_len``.

  One linear interpolation does both rate conversion and time stretch. When shrinking by
  k >= 2, blocks of k samples are first averaged (boxcar anti-aliasing: its first null is
  at the new sampling rate, and it is ~20x cheaper than a polyphase FIR; measured in
  benchmarks/input_pipeline.py). Rows of -1 (absent leads) come back as zeros; windows
  running past the record's end are zero-padded. Callers carry the lead mask.
  """
  num_samples = signal.shape[1]
  ratio = src_len / out_len
  k = int(ratio) if ratio >= 2 else 1
  present = rows >= 0
  out = np.zeros((rows.size, out_len), np.float32)
  if not present.any():
    return out
  src_rows = rows[present]
  seg = signal[src_rows, start:start + int(np.ceil(src_len)) + 2 * k]
  if seg.shape[1] < 2 * k:
    return out
  scale = (1.0 / (k * gain[src_rows])).astype(np.float32)[:, None]
  seg = _decimate(seg, k) if k > 1 else seg.astype(np.float32)
  # Sample j of the output sits at source position j * ratio; after decimation by k the
  # block b covers source [b*k, b*k + k), centred at b*k + (k-1)/2.
  pos = np.arange(out_len, dtype=np.float32) * np.float32(ratio / k)
  if k > 1:
    pos -= np.float32((k - 1) / (2 * k))
    np.maximum(pos, 0, out=pos)
  i0 = pos.astype(np.int32)
  np.minimum(i0, seg.shape[1] - 2, out=i0)
  frac = pos - i0
  y = seg.take(i0, axis=1)
  dy = seg.take(i0 + 1, axis=1)
  dy -= y
  dy *= frac
  y += dy
  y *= scale
  valid = int(np.floor((num_samples - 1 - start) / ratio)) + 1
  if valid < out_len:
    y[:, max(valid, 0):] = 0.0
  out[present] = y
  return out


def normalize(x: np.ndarray, present: np.ndarray, mode: str, stats: np.ndarray | None = None,
              eps: float = 1e-3) -> np.ndarray:
  """Per-lead normalisation; absent leads stay exactly zero.

  'record': z-score each lead over the window (robust to per-device gain differences);
  'dataset': subtract/divide the spec's per-lead mean/std ([2, L]); 'none': mV as is.
  """
  if mode == "record":
    x -= x.mean(axis=1, keepdims=True)
    std = np.sqrt(np.einsum("ij,ij->i", x, x) / x.shape[1])
    x *= (1.0 / (std + eps))[:, None]
  elif mode == "dataset":
    x = (x - stats[0][:, None]) / (stats[1][:, None] + eps)
  elif mode != "none":
    raise ValueError(f"data.normalize={mode!r}; expected 'record', 'dataset' or 'none'")
  x[~present] = 0.0
  return x
