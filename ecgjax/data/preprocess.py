"""Host-side, per-record preprocessing: lead selection and R-peak-aligned raw slices.

These are the steps that depend on a record's own length, leads and beats, so they run on
the host before batching, and they only index. Resampling and normalisation
(``ecgjax.data.windows``) and the stochastic augmentations (``ecgjax.data.augment``,
``ecgjax.objectives.masking``) run jitted on whole batches.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from ecgjax.data.records import canonical_lead


def lead_rows(record_leads: Sequence[str], target_leads: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Rows of the record for each target lead (-1 if absent) and the present-mask.

  Cached (an archive has a handful of lead layouts); the arrays are read-only.
  """
  return _lead_rows(tuple(record_leads), tuple(target_leads))


@functools.lru_cache(maxsize=1024)
def _lead_rows(record_leads: tuple[str, ...], target_leads: tuple[str, ...]):
  where = {canonical_lead(l): i for i, l in enumerate(record_leads)}
  rows = np.asarray([where.get(l, -1) for l in target_leads], np.int64)
  present = rows >= 0
  rows.flags.writeable = present.flags.writeable = False
  return rows, present


def copy_rows(record_leads: Sequence[str], target_leads: Sequence[str]) -> np.ndarray | None:
  """``rows`` for :func:`extract_segment`: None when the record already is in target order."""
  return _copy_rows(tuple(record_leads), tuple(target_leads))


@functools.lru_cache(maxsize=1024)
def _copy_rows(record_leads: tuple[str, ...], target_leads: tuple[str, ...]):
  rows, _ = _lead_rows(record_leads, target_leads)
  return None if rows.tolist() == list(range(len(record_leads))) else rows


def choose_start(u: float, r_peaks: np.ndarray, num_samples: int, src_len: int,
                 pre_r: int) -> int:
  """Start of an R-peak-aligned window: ``pre_r`` samples before a beat picked by ``u``.

  ``u`` is a uniform draw in [0, 1) (the pipeline draws a whole batch's at once). Falls
  back to a uniform start when no beat leaves room for a full window (few or no peaks,
  e.g. asystole or a failed detection), so every record still yields a window.
  """
  last = num_samples - src_len
  if last <= 0:
    return 0
  starts = r_peaks - pre_r
  starts = starts[(starts >= 0) & (starts <= last)]
  if starts.size:
    return int(starts[int(u * starts.size)])
  return int(u * (last + 1))


def first_beat_start(r_peaks: np.ndarray, num_samples: int, src_len: int, pre_r: int) -> int:
  """The eval window's start: ``pre_r`` before the first beat with a full window after it."""
  r = r_peaks - pre_r
  ok = r[(r >= 0) & (r + src_len <= num_samples)]
  return int(ok[0]) if ok.size else 0


def decimation(source_rate: float, target_rate: float) -> int:
  """Integer boxcar factor applied before interpolation (1 when not shrinking >= 2x)."""
  ratio = source_rate / target_rate
  return int(ratio) if ratio >= 2 else 1


def segment_length(out_len: int, ratio: float, max_stretch: float) -> int:
  """Source samples to cut so any window (stretch <= max_stretch) can be interpolated."""
  return int(np.ceil(out_len * ratio * max_stretch)) + 2 * max(1, int(ratio)) + 2


def extract_segment(signal: np.ndarray, rows: np.ndarray | None, start: int, seg_len: int,
                    out: np.ndarray) -> int:
  """Copies raw samples [start, start + seg_len) of each row into ``out`` [len(rows), S].

  ``rows=None`` means every row of ``signal`` in order (the common case: one strided
  copy). Rows of -1 (leads the record lacks) and everything past the record's end or
  past ``seg_len`` are zeroed. Returns the number of samples inside the record. The only
  copy a record gets on the host, and no arithmetic: resampling and normalisation run on
  whole batches in :mod:`ecgjax.data.windows`.
  """
  valid = max(0, min(seg_len, out.shape[1], signal.shape[1] - start))
  if rows is None:
    out[:, :valid] = signal[:, start:start + valid]
    out[:, valid:] = 0
    return valid
  present = rows >= 0
  if valid and present.any():
    out[present, :valid] = signal[rows[present], start:start + valid]
    out[~present, :valid] = 0
  else:
    out[:, :valid] = 0
  out[:, valid:] = 0
  return valid
