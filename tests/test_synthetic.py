"""Tests for the synthetic 12-lead ECG generator."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from ecgjax.data import synthetic
from ecgjax.data.records import STANDARD_LEADS, EcgRecord

FS = 500.0
_LEAD = {name: i for i, name in enumerate(STANDARD_LEADS)}
_SINUS = ("normal_sinus", "sinus_bradycardia", "sinus_tachycardia", "st_elevation")


def _records_of(name: str, count: int, seed: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
  c = synthetic.CLASS_NAMES.index(name)
  return [synthetic.generate_record(np.random.default_rng([seed, i]), c) for i in range(count)]


def _rr(r_peaks: np.ndarray) -> np.ndarray:
  return np.diff(r_peaks) / FS


def test_class_names():
  assert 5 <= len(synthetic.CLASS_NAMES) <= 6
  assert len(set(synthetic.CLASS_NAMES)) == len(synthetic.CLASS_NAMES)


@pytest.mark.parametrize("class_index", range(len(synthetic.CLASS_NAMES)))
def test_shapes_and_dtypes(class_index):
  signal, r_peaks = synthetic.generate_record(np.random.default_rng(0), class_index)
  assert signal.shape == (12, 5000) and signal.dtype == np.float32
  assert np.all(np.isfinite(signal))
  assert r_peaks.dtype == np.int64 and r_peaks.ndim == 1
  assert np.all(np.diff(r_peaks) > 0)
  assert r_peaks.min() >= 0 and r_peaks.max() < 5000
  # Plausible ECG amplitudes in mV.
  assert 0.2 < np.ptp(signal[_LEAD["II"]]) < 8.0


def test_other_rate_and_duration():
  signal, r_peaks = synthetic.generate_record(np.random.default_rng(1), 0, 250.0, 4.0)
  assert signal.shape == (12, 1000)
  assert r_peaks.max() < 1000


def test_bad_class_rejected():
  with pytest.raises(ValueError):
    synthetic.generate_record(np.random.default_rng(0), len(synthetic.CLASS_NAMES))


def test_deterministic():
  a = list(synthetic.generate_records(8, seed=5))
  b = list(synthetic.generate_records(8, seed=5))
  c = list(synthetic.generate_records(8, seed=6))
  for ra, rb in zip(a, b):
    np.testing.assert_array_equal(ra.signal, rb.signal)
    np.testing.assert_array_equal(ra.r_peaks, rb.r_peaks)
    assert (ra.labels, ra.split) == (rb.labels, rb.split)
  assert not np.array_equal(a[0].signal, c[0].signal)
  # Record i does not depend on how many records were asked for.
  np.testing.assert_array_equal(a[3].signal, next(
      r for r in synthetic.generate_records(4, seed=5) if r.record_id == "syn000003").signal)


def test_record_fields():
  records = list(synthetic.generate_records(12, seed=0))
  for i, r in enumerate(records):
    assert isinstance(r, EcgRecord)
    assert r.record_id == f"syn{i:06d}"
    assert r.signal.dtype == np.int16 and r.signal.shape == (12, 5000)
    assert r.leads == STANDARD_LEADS
    np.testing.assert_array_equal(r.gain, np.full(12, 1000.0))
    assert r.sampling_rate == FS
    assert len(r.labels) == 1 and 0 <= r.labels[0] < len(synthetic.CLASS_NAMES)
    assert r.metadata == {"class": synthetic.CLASS_NAMES[r.labels[0]]}
    assert r.split in ("train", "val", "test")
    assert r.r_peaks is not None and r.r_peaks.dtype == np.int64
  assert {r.labels[0] for r in records} == set(range(len(synthetic.CLASS_NAMES)))


def test_digital_units_match_physical():
  rng = np.random.default_rng([0, 0])
  signal, _ = synthetic.generate_record(rng, 0)
  record = next(synthetic.generate_records(1, seed=0))
  np.testing.assert_allclose(record.physical(), signal, atol=0.5e-3 + 1e-6)


def test_splits_and_balance():
  splits = [synthetic.split_for_index(i) for i in range(1000)]
  counts = collections.Counter(splits)
  assert counts == {"train": 800, "val": 100, "test": 100}
  # Splits are not aligned with the round-robin classes.
  labels = np.arange(1000) % len(synthetic.CLASS_NAMES)
  for split in ("val", "test"):
    per_class = np.bincount(labels[np.asarray(splits) == split])
    assert np.count_nonzero(per_class) == len(synthetic.CLASS_NAMES)
  records = list(synthetic.generate_records(60, seed=1))
  assert [r.split for r in records] == splits[:60]
  assert np.all(np.bincount([r.labels[0] for r in records]) == 60 // len(synthetic.CLASS_NAMES))


def test_einthoven_goldberger():
  for r in synthetic.generate_records(12, seed=2):
    s = r.signal.astype(np.int64)  # Digital units: each lead rounded once (<= 0.5 adu).
    i, ii, iii = s[_LEAD["I"]], s[_LEAD["II"]], s[_LEAD["III"]]
    assert np.abs(iii - (ii - i)).max() <= 2
    assert np.abs(2 * s[_LEAD["aVR"]] + (i + ii)).max() <= 3
    assert np.abs(2 * s[_LEAD["aVL"]] - (2 * i - ii)).max() <= 3
    assert np.abs(2 * s[_LEAD["aVF"]] - (2 * ii - i)).max() <= 3
    assert np.abs(s[_LEAD["aVR"]] + s[_LEAD["aVL"]] + s[_LEAD["aVF"]]).max() <= 2


@pytest.mark.parametrize("name", synthetic.CLASS_NAMES)
def test_r_peaks_are_qrs_maxima_in_lead_ii(name):
  half = int(0.015 * FS)  # Search +-15 ms around each reported peak.
  offsets = []
  for signal, r_peaks in _records_of(name, 10):
    # 6 ms moving average against the white noise; the QRS is much wider.
    lead = np.convolve(signal[_LEAD["II"]], np.ones(3) / 3, mode="same")
    for p in r_peaks:
      if p < 100 or p > lead.size - 100:
        continue
      y = np.abs(lead[p - half:p + half + 1] - np.median(lead[p - 100:p + 100]))
      assert y[half] >= 0.8 * y.max()  # At the top of the lobe, up to noise.
      offsets.append(abs(int(np.argmax(y)) - half))
  offsets = np.asarray(offsets)
  assert offsets.size > 50
  # Conducted beats are sharp: within 8 ms. PVCs are broad and flat-topped.
  limit = 4 if name != "premature_ventricular" else 8
  assert offsets.max() <= limit
  assert np.mean(offsets <= 2) > 0.9


def test_heart_rate_ranges_by_class():
  hr = {name: np.array([60.0 / np.mean(_rr(r)) for _, r in _records_of(name, 15)])
        for name in synthetic.CLASS_NAMES}
  assert np.all((hr["sinus_bradycardia"] > 35) & (hr["sinus_bradycardia"] < 65))
  assert np.all((hr["normal_sinus"] > 52) & (hr["normal_sinus"] < 108))
  assert np.all((hr["sinus_tachycardia"] > 88) & (hr["sinus_tachycardia"] < 155))
  assert (np.mean(hr["sinus_bradycardia"]) + 15 < np.mean(hr["normal_sinus"])
          < np.mean(hr["sinus_tachycardia"]) - 15)
  # Ranges overlap on purpose: rate alone must not separate neighbouring classes.
  assert hr["sinus_bradycardia"].max() > 55 or hr["normal_sinus"].min() < 62


def test_af_rr_irregularity_exceeds_sinus():
  cv = lambda r: np.std(_rr(r)) / np.mean(_rr(r))
  af = np.array([cv(r) for _, r in _records_of("atrial_fibrillation", 24)])
  sinus = np.array([cv(r) for name in _SINUS for _, r in _records_of(name, 12)])
  assert np.median(af) > 4 * np.median(sinus)
  # Sinus records with an occasional premature atrial beat overlap the mildest AF.
  assert np.mean(af > np.percentile(sinus, 80)) > 0.9


def test_sinus_rhythm_is_regular_apart_from_ectopy():
  for name in _SINUS:
    for i in range(20):
      rng = np.random.default_rng([4, i])
      times, rr, kind = synthetic._beat_times(rng, name, 60.0 / 75.0, 10.0)
      assert np.all(np.diff(times) > 0.25)
      normal = (kind == 0)
      normal[1:] &= normal[:-1]  # Intervals between two sinus beats.
      assert np.std(rr[normal]) / np.mean(rr[normal]) < 0.08
      assert np.sum(kind != 0) <= 2


def test_pvc_records_have_premature_beats_and_pauses():
  # A premature beat followed by a compensatory pause: short/long far beyond sinus HRV.
  for _, r in _records_of("premature_ventricular", 8):
    rr = _rr(r)
    assert rr.min() < 0.75 * rr.max()


def test_st_elevation_shifts_st_segment():
  def max_st(name):
    out = []
    for signal, r_peaks in _records_of(name, 12):
      r_in = r_peaks[(r_peaks > 100) & (r_peaks < signal.shape[1] - 100)]
      # ST level: 80 ms after R versus PR baseline 70 ms before R, averaged over beats.
      st = signal[:, r_in + 40].mean(1) - signal[:, r_in - 35].mean(1)
      out.append(np.abs(st).max())
    return np.median(out)
  assert max_st("st_elevation") > 1.5 * max_st("normal_sinus")


def test_speed_smoke():
  records = list(synthetic.generate_records(24, seed=9))
  assert len(records) == 24
