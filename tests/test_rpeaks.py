"""Tests for ecgjax.data.rpeaks: synthetic accuracy, edge cases and MIT-BIH figures."""
from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

from ecgjax.data import rpeaks

_ROOT = pathlib.Path(__file__).resolve().parents[1]
_MITBIH = (_ROOT / "../shared/data/mitbih").resolve()


def _load_benchmark():
  """The benchmark module owns the beat-symbol list and the matcher; reuse them."""
  spec = importlib.util.spec_from_file_location(
      "rpeaks_mitbih", _ROOT / "benchmarks" / "rpeaks_mitbih.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _scores(reference, detected, tolerance):
  tp, fp, fn = _load_benchmark().match_peaks(reference, detected, tolerance)
  return tp / max(tp + fn, 1), tp / max(tp + fp, 1)


def _synthetic(fs, seconds=30.0, rr=(0.6, 1.1), noise=0.03, wander=0.3, seed=0,
               wide_every=0):
  """One lead of Gaussian QRS-like spikes with P/T waves, noise and baseline wander.

  Returns (signal [samples] in mV, true peak indices).
  """
  rng = np.random.default_rng(seed)
  n = int(seconds * fs)
  t = np.arange(n) / fs
  peaks = []
  pos = 0.5
  while pos < seconds - 0.5:
    peaks.append(pos)
    pos += rng.uniform(*rr)
  x = np.zeros(n)
  for k, p in enumerate(peaks):
    wide = wide_every and k % wide_every == wide_every - 1
    width, amp = (0.04, -1.8) if wide else (0.012, 1.2)
    x += amp * np.exp(-0.5 * ((t - p) / width) ** 2)
    x += 0.15 * np.exp(-0.5 * ((t - p + 0.17) / 0.025) ** 2)  # P wave
    x += 0.3 * np.exp(-0.5 * ((t - p - 0.3) / 0.05) ** 2)  # T wave
  x += wander * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6))
  x += noise * rng.standard_normal(n)
  return x, np.round(np.asarray(peaks) * fs).astype(np.int64)


@pytest.mark.parametrize("fs", [100.0, 250.0, 500.0])
def test_synthetic_single_lead(fs):
  x, truth = _synthetic(fs, seed=int(fs))
  detected = rpeaks.detect_r_peaks(x[None], fs)
  se, ppv = _scores(truth, detected, int(0.05 * fs))
  assert se >= 0.99 and ppv >= 0.99, (se, ppv)


def test_output_is_sorted_unique_int64_in_range():
  x, _ = _synthetic(250.0)
  detected = rpeaks.detect_r_peaks(x[None], 250.0, ["II"])
  assert detected.dtype == np.int64
  assert np.all(np.diff(detected) > 0)
  assert detected.min() >= 0 and detected.max() < x.shape[-1]


def test_fiducial_is_the_qrs_extremum():
  fs = 500.0
  x, truth = _synthetic(fs, noise=0.005, wander=0.0, seed=3)
  detected = rpeaks.detect_r_peaks(x[None], fs)
  assert len(detected) == len(truth)
  assert np.max(np.abs(detected - truth)) <= 2


def test_inverted_and_flat_leads_with_noise():
  fs = 360.0
  x, truth = _synthetic(fs, noise=0.05, seed=7)
  inverted = -0.6 * x + 0.05 * np.random.default_rng(1).standard_normal(x.shape)
  signal = np.stack([x, inverted, np.full_like(x, 0.2), np.zeros_like(x)])
  detected = rpeaks.detect_r_peaks(signal, fs, ["I", "II", "III", "aVR"])
  se, ppv = _scores(truth, detected, int(0.05 * fs))
  assert se >= 0.99 and ppv >= 0.99, (se, ppv)
  # The inverted lead alone must work too.
  detected = rpeaks.detect_r_peaks(inverted[None], fs)
  se, ppv = _scores(truth, detected, int(0.05 * fs))
  assert se >= 0.99 and ppv >= 0.99, (se, ppv)


def test_noisy_lead_does_not_spoil_a_clean_one():
  fs = 250.0
  x, truth = _synthetic(fs, seed=11)
  rng = np.random.default_rng(2)
  junk = np.zeros_like(x)
  for start in rng.integers(0, len(x) - 200, size=25):  # electrode pops
    junk[start:start + int(rng.integers(20, 200))] += rng.normal(0, 2.0)
  junk += 0.2 * rng.standard_normal(len(x))
  detected = rpeaks.detect_r_peaks(np.stack([x, junk]), fs)
  se, ppv = _scores(truth, detected, int(0.05 * fs))
  assert se >= 0.98 and ppv >= 0.98, (se, ppv)


def test_irregular_rhythm_with_wide_ectopic_beats():
  fs = 360.0
  x, truth = _synthetic(fs, seconds=60.0, rr=(0.35, 1.4), seed=5, wide_every=4)
  detected = rpeaks.detect_r_peaks(x[None], fs)
  se, ppv = _scores(truth, detected, int(0.075 * fs))
  assert se >= 0.99 and ppv >= 0.99, (se, ppv)


def test_flat_records_return_empty():
  assert rpeaks.detect_r_peaks(np.zeros((12, 1000)), 100.0).size == 0
  assert rpeaks.detect_r_peaks(np.full((2, 5000), 0.3), 500.0).size == 0
  assert rpeaks.detect_r_peaks(np.zeros((1, 10)), 100.0).size == 0  # Too short.


def test_nan_lead_is_ignored():
  fs = 100.0
  x, truth = _synthetic(fs, seconds=10.0, seed=9)
  signal = np.stack([x, np.full_like(x, np.nan)])
  detected = rpeaks.detect_r_peaks(signal, fs)
  se, ppv = _scores(truth, detected, int(0.05 * fs))
  assert se >= 0.99 and ppv >= 0.99, (se, ppv)


@pytest.mark.skipif(not (_MITBIH / "RECORDS").exists(),
                    reason=f"MIT-BIH data not found at {_MITBIH}")
def test_mitbih_subset():
  """Clean (100), noisy (105), AF with multiform PVCs (203), PVC-rich (208) records."""
  wfdb = pytest.importorskip("wfdb")
  bench = _load_benchmark()
  tp = fp = fn = 0
  for name in ("100", "105", "203", "208"):
    record = wfdb.rdrecord(str(_MITBIH / name))
    ann = wfdb.rdann(str(_MITBIH / name), "atr")
    reference = np.asarray(
        [s for s, sym in zip(ann.sample, ann.symbol) if sym in bench.BEAT_SYMBOLS])
    detected = rpeaks.detect_r_peaks(record.p_signal.T, record.fs, record.sig_name)
    counts = bench.match_peaks(reference, detected, int(0.15 * record.fs))
    if name == "100":
      assert counts[1] <= 2 and counts[2] <= 2, counts
    tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
  # Measured at the time of writing: Se 0.9964, +P 0.9927.
  assert tp / (tp + fn) >= 0.993
  assert tp / (tp + fp) >= 0.990
