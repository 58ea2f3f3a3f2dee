"""Record checks run by every reader before a record may reach a shard.

``validate`` returns ``None`` for a usable record, else one short reason. Reasons are
``"<kind>: <detail>"`` or ``"<kind> in lead(s) ..."`` so the converter can group rejects by
the text before ':' / ' in '.

What rejects the whole record, and why:
  * structural problems (shape mismatch, no leads, bad gain, float data with gain != 1):
    the record cannot be interpreted, nothing to keep.
  * unknown or duplicate lead names, missing required leads: a model selects leads by
    name, so a mislabelled row would silently feed the wrong electrode.
  * wrong sampling rate (when an expected rate is given) and too short: the pipeline
    resamples and crops later and relies on the declared rate/length.
  * NaN/Inf anywhere: one NaN poisons normalisation statistics and every loss it touches.
  * every lead flat: nothing is left to learn from. A record with *some* flat leads is
    kept by the readers (``drop_flat_leads``): a flat lead is a disconnected electrode or
    a zero-filled missing lead (2 of the 50 CinC-2021 samples, JS20004/JS20008, have V2,
    V4 and V6 all zero); stored as if real it would teach the model that the lead *is*
    zero, so its row is removed and the pipeline masks it as an absent lead, exactly
    like a lead the archive never recorded. ``max_flat_leads`` still rejects records
    that reach ``validate`` with more flat leads than that.
  * saturated leads: amplitudes are clipped, so morphology (QRS height, ST level) is wrong.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ecgjax.data.records import STANDARD_LEADS, EcgRecord, canonical_lead

# A lead whose peak-to-peak amplitude over the whole record stays below this is flat.
# Real ECG leads have QRS complexes of >= ~0.1 mV even in low-voltage records (the
# smallest lead over all PTB-XL / CinC / MIT-BIH samples spans 0.2 mV), while 0.01 mV is
# 10 adu at the common 1000 adu/mV and 2 adu at MIT-BIH's 200 adu/mV, i.e. quantisation
# noise of a disconnected channel.
FLAT_PEAK_TO_PEAK_MV = 0.01

# A lead is saturated when more than this fraction of its samples sits exactly on its
# minimum or maximum value (clipping at an ADC rail or amplifier limit makes a plateau
# at the extreme). Clean signals touch their extremes only at single peaks: the largest
# fraction over all shared PTB-XL / CinC / MIT-BIH leads is 2.7% (a constant tail at the
# end of one 100 Hz record). 5% leaves room above that and still catches a lead clipped
# at every beat.
SATURATION_FRACTION = 0.05

VALID_SPLITS = ("train", "val", "test", "")

# The std (mV) of a real ECG lead over a record is ~0.05-1 mV. Above this the numbers are
# almost surely µV (or adu) taken as mV; below the next, V taken as mV.
MICROVOLT_STD_MV = 20.0
VOLT_STD_MV = 0.002


def _leads_text(names: Sequence[str]) -> str:
  return ",".join(names)


def _per_lead(kind: str, names: Sequence[str]) -> str:
  """'nan_or_inf in lead V3' / 'nan_or_inf in leads V3,V4'."""
  plural = "s" if len(names) > 1 else ""
  return f"{kind} in lead{plural} {_leads_text(names)}"


def flat_leads(record: EcgRecord) -> list[str]:
  """Names of the leads whose peak-to-peak amplitude is below FLAT_PEAK_TO_PEAK_MV."""
  signal = np.asarray(record.signal)
  if signal.ndim != 2 or signal.shape[1] == 0 or signal.shape[0] != len(record.leads):
    return []
  gain = np.asarray(record.gain, np.float64)
  if gain.shape != (signal.shape[0],) or not np.all(gain > 0):
    return []
  with np.errstate(invalid="ignore"):
    p2p = (signal.max(axis=1).astype(np.float64) - signal.min(axis=1)) / gain
  return [l for l, v in zip(record.leads, p2p) if v < FLAT_PEAK_TO_PEAK_MV]


def drop_flat_leads(record: EcgRecord) -> EcgRecord:
  """Removes flat leads (they become absent, masked downstream) unless every lead is flat.

  The dropped names go to ``record.metadata['flat_leads']`` (comma-separated) so the
  converter can count them; an all-flat record is returned unchanged for ``validate``
  to reject.
  """
  flat = flat_leads(record)
  if not flat or len(flat) == len(record.leads):
    return record
  keep = [i for i, l in enumerate(record.leads) if l not in flat]
  return dataclasses.replace(
      record, signal=np.ascontiguousarray(np.asarray(record.signal)[keep]),
      leads=tuple(record.leads[i] for i in keep), gain=np.asarray(record.gain)[keep],
      metadata={**record.metadata, "flat_leads": ",".join(flat)})


def amplitude_hint(std_mv: float) -> str | None:
  """'values look like µV; pass units=uV' when a lead's std in 'mV' is implausible."""
  if not np.isfinite(std_mv) or std_mv <= 0:
    return None
  if std_mv > MICROVOLT_STD_MV:
    return "values look like µV; pass units=uV"
  if std_mv < VOLT_STD_MV:
    return "values look like V; pass units=V"
  return None


def validate(record: EcgRecord, *, min_duration_s: float = 2.0,
             expected_rate: float | None = None,
             required_leads: Sequence[str] | None = None,
             allowed_leads: Sequence[str] | None = STANDARD_LEADS,
             max_flat_leads: int = 0) -> str | None:
  """Returns None if the record is usable, else a short reason naming problem and leads.

  Args:
    record: the record to check.
    min_duration_s: shorter records are rejected (too short to crop a training window).
    expected_rate: if given, the declared sampling rate must equal it (within 1e-6).
    required_leads: leads that must be present (any spelling canonical_lead understands).
    allowed_leads: lead names a record may carry; None accepts any name.
    max_flat_leads: how many flat leads are tolerated (0: any flat lead rejects).
  """
  signal = np.asarray(record.signal)
  leads = tuple(record.leads)
  gain = np.asarray(record.gain)

  # Structure.
  if signal.ndim != 2:
    return f"shape mismatch: signal has {signal.ndim} dims, expected [leads, samples]"
  if not leads:
    return "no leads"
  if signal.shape[0] != len(leads):
    return f"shape mismatch: signal {tuple(signal.shape)} vs {len(leads)} lead names"
  if gain.shape != (len(leads),):
    return f"shape mismatch: gain {tuple(gain.shape)} vs {len(leads)} leads"
  if not (np.issubdtype(signal.dtype, np.integer) or np.issubdtype(signal.dtype, np.floating)):
    return f"bad dtype: {signal.dtype}"
  bad_gain = [l for l, g in zip(leads, gain) if not (np.isfinite(g) and g > 0)]
  if bad_gain:
    return f"bad gain: lead(s) {_leads_text(bad_gain)}"
  if np.issubdtype(signal.dtype, np.floating) and not np.all(gain == 1):
    return "bad gain: float signal must be in mV with gain 1"
  if record.split not in VALID_SPLITS:
    return f"bad split: {record.split!r}"

  # Lead names.
  if allowed_leads is not None:
    allowed = set(allowed_leads)
    unknown = [l for l in leads if l not in allowed]
    if unknown:
      return "unknown lead name: " + ",".join(repr(l) for l in unknown)
  seen, dups = set(), []
  for l in leads:
    if l in seen and l not in dups:
      dups.append(l)
    seen.add(l)
  if dups:
    return "duplicate lead: " + ",".join(repr(l) for l in dups)
  if required_leads:
    missing = [l for l in (canonical_lead(r) for r in required_leads) if l not in seen]
    if missing:
      return f"missing required leads: {_leads_text(missing)}"

  # Rate and length.
  rate = float(record.sampling_rate)
  if not (np.isfinite(rate) and rate > 0):
    return f"bad sampling rate: {rate:g}"
  if expected_rate is not None and abs(rate - float(expected_rate)) > 1e-6 * float(expected_rate):
    return f"wrong sampling rate: {rate:g} != {float(expected_rate):g}"
  duration = signal.shape[1] / rate
  if duration < min_duration_s:
    return f"too short: {round(duration, 2)} s < {float(min_duration_s)} s"

  # Values.
  if np.issubdtype(signal.dtype, np.floating):
    finite = np.isfinite(signal).all(axis=1)
    if not finite.all():
      return _per_lead("nan_or_inf", [l for l, ok in zip(leads, finite) if not ok])
  hi = signal.max(axis=1)
  lo = signal.min(axis=1)
  p2p_mv = (hi.astype(np.float64) - lo.astype(np.float64)) / gain.astype(np.float64)
  flat = p2p_mv < FLAT_PEAK_TO_PEAK_MV
  if flat.sum() > max_flat_leads or flat.all():
    return f"flat lead(s): {_leads_text([l for l, f in zip(leads, flat) if f])}"
  saturated = []
  for i, l in enumerate(leads):
    if flat[i]:
      continue  # Tolerated flat lead: every sample is at its extreme by definition.
    at_rail = np.count_nonzero(signal[i] == hi[i]) + np.count_nonzero(signal[i] == lo[i])
    if at_rail > SATURATION_FRACTION * signal.shape[1]:
      saturated.append(l)
  if saturated:
    return f"saturated lead(s): {_leads_text(saturated)}"
  return None
