"""Probe metrics in plain numpy: AUROC (rank formula, ties count 1/2), F1, bootstrap CIs.

No sklearn at run time. Every function takes optional per-sample ``weights``: a bootstrap
resample is a vector of counts (how often each test record was drawn), so one sort per
class serves all resamples at once, and the point estimate is the all-ones case.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def auroc(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """Area under the ROC curve: P(score_pos > score_neg) + P(tie) / 2.

  Args:
    y: [N] binary labels.
    scores: [N] scores (higher = more positive).
    weights: None, [N] or [R, N] non-negative sample weights (bootstrap counts).

  Returns:
    A float (no weights or [N]) or [R] floats; NaN where a class has no positive or no
    negative weight (AUROC is undefined there).
  """
  y = np.asarray(y).astype(bool)
  s = np.asarray(scores, np.float64)
  w = np.ones_like(s) if weights is None else np.asarray(weights, np.float64)
  if s.size == 0:
    return np.full(w.shape[:-1], np.nan) if w.ndim > 1 else np.float64(np.nan)
  order = np.argsort(s, kind="stable")
  s, y, w = s[order], y[order], w[..., order]
  starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # tie groups of equal scores.
  pos = np.add.reduceat(w * y, starts, axis=-1)
  neg = np.add.reduceat(w * ~y, starts, axis=-1)
  neg_below = np.cumsum(neg, axis=-1) - neg
  wins = (pos * (neg_below + 0.5 * neg)).sum(-1)
  pairs = pos.sum(-1) * neg.sum(-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def roc_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1)."""
  y = np.asarray(y).astype(bool)
  s = np.asarray(scores, np.float64)
  order = np.argsort(-s, kind="stable")
  s, y = s[order], y[order]
  last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie group.
  tp = np.cumsum(y)[last]
  fp = (last + 1) - tp
  tpr = np.r_[0.0, tp / max(int(y.sum()), 1)]
  fpr = np.r_[0.0, fp / max(int((~y).sum()), 1)]
  return fpr, tpr


def best_f1_threshold(y: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
  """(threshold, F1) maximising F1 of ``scores >= threshold`` on (y, scores).

  The threshold sits halfway between the chosen score and the next lower one, so it
  gives the same predictions here and a margin on new data. With no positives F1 is
  undefined: returns (inf, nan), i.e. never predict the class.
  """
  y = np.asarray(y).astype(bool)
  s = np.asarray(scores, np.float64)
  num_pos = int(y.sum())
  if num_pos == 0 or s.size == 0:
    return float("inf"), float("nan")
  order = np.argsort(-s, kind="stable")
  s, y = s[order], y[order]
  last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
  tp = np.cumsum(y)[last]
  predicted = last + 1
  f1 = 2.0 * tp / (num_pos + predicted)   # 2TP / (2TP + FP + FN)
  best = int(np.argmax(f1))               # first max = highest threshold among ties.
  i = last[best]
  threshold = s[i] if i + 1 == s.size else 0.5 * (s[i] + s[i + 1])
  return float(threshold), float(f1[best])


def f1_counts(y: np.ndarray, pred: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
  """Per-class F1 = 2TP / (2TP + FP + FN) for [N, C] labels/predictions.

  ``weights`` None, [N] or [R, N]; returns [C] or [R, C], NaN where 2TP + FP + FN = 0.
  """
  y = np.asarray(y).astype(np.float64)
  p = np.asarray(pred).astype(np.float64)
  w = np.ones(y.shape[0]) if weights is None else np.asarray(weights, np.float64)
  tp = w @ (y * p)
  fp = w @ ((1 - y) * p)
  fn = w @ (y * (1 - p))
  denom = 2 * tp + fp + fn
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1.0), np.nan)


def _nanmean(x: np.ndarray, axis: int = -1) -> np.ndarray:
  """Mean over finite entries; NaN (not a warning) when there are none."""
  ok = np.isfinite(x)
  n = ok.sum(axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(n > 0, np.where(ok, x, 0.0).sum(axis) / np.maximum(n, 1), np.nan)


def evaluate(y: np.ndarray, probs: np.ndarray, thresholds: np.ndarray,
             label_names: list[str]) -> dict[str, Any]:
  """Point estimates on one split: per-class AUROC / F1 and their macro averages.

  A class with no positives (or no negatives) in ``y`` has no AUROC and no meaningful F1;
  it is left out of both macros and listed in ``skipped_classes`` with the reason.
  """
  y = np.asarray(y).astype(bool)
  pos = y.sum(0)
  neg = y.shape[0] - pos
  f1 = f1_counts(y, probs >= thresholds[None])
  per_class, skipped, included = {}, {}, []
  for c, name in enumerate(label_names):
    auc = float(auroc(y[:, c], probs[:, c]))
    per_class[name] = {"auroc": clean(auc), "f1": clean(float(f1[c])),
                       "threshold": clean(float(thresholds[c])), "positives": int(pos[c])}
    if pos[c] == 0:
      skipped[name] = "no positives in this split: AUROC and F1 undefined"
    elif neg[c] == 0:
      skipped[name] = "no negatives in this split: AUROC undefined"
    else:
      included.append(c)
  aucs = np.asarray([per_class[label_names[c]]["auroc"] for c in included], np.float64)
  f1s = np.asarray([f1[c] for c in included], np.float64)
  return {
      "macro_auroc": clean(float(_nanmean(aucs))) if included else None,
      "macro_f1": clean(float(_nanmean(f1s))) if included else None,
      "per_class": per_class,
      "skipped_classes": skipped,
      "included_classes": [label_names[c] for c in included],
      "num_records": int(y.shape[0]),
  }


def bootstrap_counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
  """[R, N] counts of each of N records in R resamples with replacement.

  Resample r is ``rng.integers(0, n, size=(R, n))[r]`` as counts, so any caller that draws
  from the same generator state gets the same resamples.
  """
  draws = rng.integers(0, n, size=(resamples, n))
  return np.bincount((draws + n * np.arange(resamples)[:, None]).ravel(),
                     minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def macro_auroc(y: np.ndarray, probs: np.ndarray, classes: Sequence[int],
                weights: np.ndarray | None = None) -> np.ndarray:
  """Mean AUROC over ``classes`` of [N, C] (y, probs); per resample if weights is [R, N].

  A class undefined in a resample (no positive or no negative weight) is left out of it.
  """
  per = np.stack([auroc(y[:, c], probs[:, c], weights) for c in classes], axis=-1)
  return _nanmean(per)


def paired_bootstrap_difference(y: np.ndarray, probs_a: Sequence[np.ndarray],
                                probs_b: Sequence[np.ndarray], classes: Sequence[int],
                                resamples: int, seed: int, level: float = 0.95,
                                chunk: int = 100) -> dict[str, Any]:
  """Macro AUROC of A minus B on the same test records, with a paired percentile CI.

  A and B are each one or more runs (pretraining seeds x label-subset draws), every run's
  [N, C] test probabilities for the same N records ``y``. Each resample's record counts
  are shared by all runs of both sides; within a resample the runs' macro AUROCs are
  averaged per side and then differenced. Shared resamples cancel the test-set noise
  common to both encoders, which unpaired CIs double-count. The CI is conditional on the
  runs given (it reflects test-set sampling, not seed-to-seed spread; report that apart).

  Returns {'difference' (all-ones point estimate), 'ci', 'level', 'resamples', 'seed',
  'excludes_zero', 'resampled' ([R] differences, for tests and plots)}.
  """
  y = np.asarray(y).astype(bool)
  a, b = [np.asarray(p, np.float64) for p in probs_a], [np.asarray(p, np.float64) for p in probs_b]
  if not a or not b:
    raise ValueError("paired_bootstrap_difference: each side needs at least one run")
  for p in a + b:
    if p.shape != y.shape:
      raise ValueError(f"paired_bootstrap_difference: probabilities {p.shape} do not match "
                       f"labels {y.shape}; both sides must score the same test records")
  classes = list(classes)

  def side(runs, w):
    return np.mean([macro_auroc(y, p, classes, w) for p in runs], axis=0)

  point = float(side(a, None) - side(b, None))
  rng = np.random.default_rng(seed)
  diffs = []
  for start in range(0, max(int(resamples), 0), chunk):
    counts = bootstrap_counts(rng, y.shape[0], min(chunk, resamples - start))
    diffs.append(side(a, counts) - side(b, counts))
  diffs = np.concatenate(diffs) if diffs else np.zeros(0)
  finite = diffs[np.isfinite(diffs)]
  ci = None
  if finite.size:
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    ci = [float(np.percentile(finite, lo)), float(np.percentile(finite, hi))]
  return {"difference": clean(point), "ci": ci, "level": level, "resamples": int(resamples),
          "seed": int(seed), "excludes_zero": bool(ci is not None and (ci[0] > 0 or ci[1] < 0)),
          "resampled": diffs}


def bootstrap(y: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, classes: list[int],
              resamples: int, seed: int, level: float = 0.95,
              chunk: int = 100) -> dict[str, Any]:
  """Percentile CIs of macro AUROC and macro F1 over ``classes`` by resampling records.

  Resample r draws N records with replacement (seeded); a class with no positives (or
  negatives) in a resample is left out of that resample's macro.
  """
  y = np.asarray(y).astype(bool)
  n = y.shape[0]
  if resamples <= 0 or n == 0 or not classes:
    return {"resamples": int(resamples), "seed": int(seed), "level": level,
            "macro_auroc_ci": None, "macro_f1_ci": None}
  rng = np.random.default_rng(seed)
  pred = probs >= thresholds[None]
  aucs, f1s = [], []
  for start in range(0, resamples, chunk):
    counts = bootstrap_counts(rng, n, min(chunk, resamples - start))
    per_auc = np.stack([auroc(y[:, c], probs[:, c], counts) for c in classes], axis=-1)
    per_f1 = f1_counts(y[:, classes], pred[:, classes], counts)
    # F1 of a class with no positives drawn is 0 or undefined; leave it out like AUROC.
    per_f1 = np.where(counts @ y[:, classes] > 0, per_f1, np.nan)
    aucs.append(_nanmean(per_auc))
    f1s.append(_nanmean(per_f1))
  lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
  aucs, f1s = np.concatenate(aucs), np.concatenate(f1s)

  def ci(v):
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, lo)), float(np.percentile(v, hi))] if v.size else None

  return {"resamples": int(resamples), "seed": int(seed), "level": level,
          "macro_auroc_ci": ci(aucs), "macro_f1_ci": ci(f1s)}


def clean(x: float) -> float | None:
  """JSON-friendly: NaN/inf -> None."""
  return None if x is None or not np.isfinite(x) else float(x)
