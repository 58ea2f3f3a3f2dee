r"""Scores `ecgjax.data.rpeaks.detect_r_peaks` on the MIT-BIH Arrhythmia Database.

Run from the project root:

  python benchmarks/rpeaks_mitbih.py [--data=../shared/data/mitbih] \
      [--tolerance_ms=150] [--leads=all|MLII]

Only beat annotations count as reference R peaks; rhythm, noise and other non-beat
labels (including ventricular flutter waves '!') are dropped, so a detection on them is
a false positive. Matching is one-to-one within the tolerance. The totals are gross
figures: summed TP/FP/FN over all beats of all records.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import sys
import time

import numpy as np
import scipy
import wfdb

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

from ecgjax.data import rpeaks  # pylint: disable=g-import-not-at-top

# Annotation symbols that mark a heartbeat (PhysioNet's list of beat codes).
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")


def match_peaks(reference: np.ndarray, detected: np.ndarray,
                tolerance: int) -> tuple[int, int, int]:
  """One-to-one matching, closest pairs first; returns (tp, fp, fn)."""
  reference = np.sort(np.asarray(reference, np.int64))
  detected = np.sort(np.asarray(detected, np.int64))
  if len(reference) == 0 or len(detected) == 0:
    return 0, len(detected), len(reference)
  # Candidate pairs: each detection against the references within the tolerance. Both
  # lists are sorted, so the window of references per detection is a contiguous slice.
  lo = np.searchsorted(reference, detected - tolerance, side="left")
  hi = np.searchsorted(reference, detected + tolerance, side="right")
  counts = hi - lo
  det_idx = np.repeat(np.arange(len(detected)), counts)
  offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  ref_idx = np.repeat(lo, counts) + offsets
  dist = np.abs(detected[det_idx] - reference[ref_idx])
  order = np.argsort(dist, kind="stable")
  ref_used = np.zeros(len(reference), bool)
  det_used = np.zeros(len(detected), bool)
  tp = 0
  for k in order:
    d, r = det_idx[k], ref_idx[k]
    if not ref_used[r] and not det_used[d]:
      ref_used[r] = det_used[d] = True
      tp += 1
  return tp, len(detected) - tp, len(reference) - tp


def _safe_div(a: float, b: float) -> float:
  return a / b if b else float("nan")


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", default="../shared/data/mitbih")
  parser.add_argument("--tolerance_ms", type=float, default=150.0)
  parser.add_argument("--leads", default="all",
                      help="'all' or a comma-separated list of lead names, e.g. MLII")
  parser.add_argument("--records", default="",
                      help="optional comma-separated subset of record names")
  parser.add_argument("--output", default=str(
      _ROOT / "benchmarks" / "results" / "rpeaks_mitbih.json"))
  args = parser.parse_args(argv)

  data = pathlib.Path(args.data)
  if not data.is_absolute():
    data = (pathlib.Path.cwd() / data).resolve()
  names = (data / "RECORDS").read_text().split()
  if args.records:
    wanted = set(args.records.split(","))
    names = [n for n in names if n in wanted]

  rows = []
  detect_seconds = 0.0
  wall_start = time.perf_counter()
  print(f"{'record':>6} {'beats':>6} {'TP':>6} {'FP':>5} {'FN':>5} "
        f"{'Se':>7} {'+P':>7}")
  for name in names:
    record = wfdb.rdrecord(str(data / name))
    ann = wfdb.rdann(str(data / name), "atr")
    keep = np.array([s in BEAT_SYMBOLS for s in ann.symbol], bool)
    reference = np.asarray(ann.sample, np.int64)[keep]
    lead_names = list(record.sig_name)
    signal = np.asarray(record.p_signal, np.float64).T
    if args.leads != "all":
      wanted_leads = args.leads.split(",")
      index = [lead_names.index(l) for l in wanted_leads if l in lead_names]
      if not index:
        print(f"{name:>6} skipped: no lead in {wanted_leads} (has {lead_names})")
        continue
      signal = signal[index]
      lead_names = [lead_names[i] for i in index]
    signal = np.nan_to_num(signal)
    fs = float(record.fs)
    t0 = time.perf_counter()
    detected = rpeaks.detect_r_peaks(signal, fs, lead_names)
    detect_seconds += time.perf_counter() - t0
    tolerance = int(round(args.tolerance_ms * 1e-3 * fs))
    tp, fp, fn = match_peaks(reference, detected, tolerance)
    se, ppv = _safe_div(tp, tp + fn), _safe_div(tp, tp + fp)
    rows.append(dict(record=name, leads=lead_names, beats=len(reference), tp=tp,
                     fp=fp, fn=fn, se=se, ppv=ppv))
    print(f"{name:>6} {len(reference):>6} {tp:>6} {fp:>5} {fn:>5} "
          f"{se:>7.4f} {ppv:>7.4f}", flush=True)
  wall = time.perf_counter() - wall_start

  tp = sum(r["tp"] for r in rows)
  fp = sum(r["fp"] for r in rows)
  fn = sum(r["fn"] for r in rows)
  totals = dict(records=len(rows), beats=tp + fn, tp=tp, fp=fp, fn=fn,
                se=_safe_div(tp, tp + fn), ppv=_safe_div(tp, tp + fp),
                detect_seconds=detect_seconds, wall_seconds=wall,
                records_per_second=_safe_div(len(rows), detect_seconds),
                records_per_second_with_io=_safe_div(len(rows), wall))
  print(f"{'total':>6} {tp + fn:>6} {tp:>6} {fp:>5} {fn:>5} "
        f"{totals['se']:>7.4f} {totals['ppv']:>7.4f}")
  print(f"gross sensitivity {totals['se']:.4f}, positive predictivity "
        f"{totals['ppv']:.4f}; {totals['records_per_second']:.1f} records/s "
        f"(detection only), {totals['records_per_second_with_io']:.1f} records/s "
        f"with file reading")

  try:
    import neurokit2  # pylint: disable=g-import-not-at-top
    nk_version = neurokit2.__version__
  except ImportError:  # Only recorded for comparison with the reference figures.
    nk_version = None
  result = dict(
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      data=str(data), tolerance_ms=args.tolerance_ms, leads=args.leads,
      beat_symbols="".join(sorted(BEAT_SYMBOLS)), totals=totals, per_record=rows,
      versions=dict(python=platform.python_version(), numpy=np.__version__,
                    scipy=scipy.__version__, wfdb=wfdb.__version__,
                    neurokit2=nk_version))
  output = pathlib.Path(args.output)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
