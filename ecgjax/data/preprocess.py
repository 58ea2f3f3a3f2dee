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


# Zero crossings on each side of the resampling kernel (ecgjax.data.windows), in periods of
# the lower of the two rates: the segment carries that much context around the window.
RESAMPLE_HALF_WIDTH = 8


def resample_context(ratio: float) -> int:
  """Source samples the resampling kernel reaches past an output at ``ratio``."""
  return int(np.ceil(RESAMPLE_HALF_WIDTH * max(ratio, 1.0))) + 1


def segment_length(out_len: int, ratio: float, max_stretch: float,
                   context: int | None = None) -> int:
  """Source samples to cut, from ``context`` samples before the window's first sample.

  ``context`` (default: what this ratio needs) is the left margin; the right margin is
  always what this record's own ratio needs.
  """
  longest = ratio * max_stretch
  right = resample_context(longest)
  left = right if context is None else context
  return left + int(np.ceil(out_len * longest)) + right + 1


def extract_segment(signal: np.ndarray, rows: np.ndarray | None, start: int, seg_len: int,
                    out: np.ndarray) -> int:
  """Copies raw samples [start, start + seg_len) of each row into ``out`` [len(rows), S].

  ``rows=None`` means every row of ``signal`` in order (the common case: one strided
  copy). Rows of -1 (leads the record lacks) and everything before the record's start
  (``start`` < 0: the resampling context of a window at the record's start), past its
  end or past ``seg_len`` are zeroed. Returns the segment index where the record ends
  (samples [0, valid) hold data or the zeros before the record). The only copy a record
  gets on the host, and no arithmetic: resampling and normalisation run on whole batches
  in :mod:`ecgjax.data.windows`.
  """
  valid = max(0, min(seg_len, out.shape[1], signal.shape[1] - start))
  lead = min(max(0, -start), valid)
  src = slice(start + lead, start + valid)
  out[:, :lead] = 0
  if rows is None:
    out[:, lead:valid] = signal[:, src]
    out[:, valid:] = 0
    return valid
  present = rows >= 0
  if valid > lead and present.any():
    out[present, lead:valid] = signal[rows[present], src]
    out[~present, lead:valid] = 0
  else:
    out[:, lead:valid] = 0
  out[:, valid:] = 0
  return valid
