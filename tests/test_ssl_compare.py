"""Paired bootstrap of macro-AUROC differences (metrics.paired_bootstrap_difference), the
statistic behind benchmarks/ssl_compare.py, against hand-made cases and a plain numpy
reference (pairwise AUROC on explicitly resampled records)."""
import os
import sys

import numpy as np
import pytest

from ecgjax.evaluation import metrics

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
import ssl_compare_report as report  # pylint: disable=g-import-not-at-top,wrong-import-position


def _pairwise_auroc(y, s):
  """P(pos > neg) + P(tie)/2 over all (pos, neg) pairs; independent of metrics.auroc."""
  pos, neg = s[y], s[~y]
  if pos.size == 0 or neg.size == 0:
    return np.nan
  gt = (pos[:, None] > neg[None, :]).mean()
  eq = (pos[:, None] == neg[None, :]).mean()
  return gt + 0.5 * eq


def _case(n=60, c=3, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.random((n, c)) < 0.3
  y[0], y[1] = True, False  # every class has a positive and a negative.
  p = np.clip(0.5 * y + rng.normal(0, 0.4, (n, c)), 0, 1)
  return y, p, rng


def test_identical_predictions_give_exact_zero():
  y, p, _ = _case()
  out = metrics.paired_bootstrap_difference(y, [p, p * 0.5], [p, p * 0.5], [0, 1, 2], 200, 3)
  assert out["difference"] == 0.0
  assert out["ci"] == [0.0, 0.0]
  assert not out["excludes_zero"]
  np.testing.assert_array_equal(out["resampled"], 0.0)


def test_perfect_minus_reversed_is_one_in_every_resample():
  y, _, _ = _case()
  perfect = y.astype(float)        # AUROC 1 in every class.
  reversed_ = 1.0 - perfect        # AUROC 0 in every class.
  out = metrics.paired_bootstrap_difference(y, [perfect], [reversed_], [0, 1, 2], 100, 0)
  assert out["difference"] == 1.0
  assert out["ci"] == [1.0, 1.0]
  assert out["excludes_zero"]


def test_monotone_transform_is_a_zero_difference():
  # AUROC depends on ranks only: a strictly increasing map of B's scores changes nothing.
  y, p, _ = _case()
  out = metrics.paired_bootstrap_difference(y, [p], [np.sqrt(p) + 3.0], [0, 1, 2], 100, 1)
  assert out["difference"] == 0.0 and out["ci"] == [0.0, 0.0]


def test_matches_numpy_reference_on_shared_resamples():
  y, p, rng = _case(n=40, c=2, seed=5)
  a = [p, np.clip(p + rng.normal(0, 0.3, p.shape), 0, 1)]  # two runs (e.g. two seeds).
  b = [np.clip(p + rng.normal(0, 0.6, p.shape), 0, 1)]
  resamples, seed = 300, 11
  out = metrics.paired_bootstrap_difference(y, a, b, [0, 1], resamples, seed, chunk=1000)
  draws = np.random.default_rng(seed).integers(0, y.shape[0], size=(resamples, y.shape[0]))

  def macro(yy, pp):
    v = np.array([_pairwise_auroc(yy[:, c], pp[:, c]) for c in range(yy.shape[1])])
    return np.nanmean(v)

  ref = np.array([np.mean([macro(y[d], r[d]) for r in a]) - np.mean([macro(y[d], r[d]) for r in b])
                  for d in draws])
  np.testing.assert_allclose(out["resampled"], ref, rtol=0, atol=1e-12)
  point = np.mean([macro(y, r) for r in a]) - np.mean([macro(y, r) for r in b])
  assert out["difference"] == pytest.approx(point, abs=1e-12)
  np.testing.assert_allclose(out["ci"], np.percentile(ref, [2.5, 97.5]), atol=1e-12)


def test_paired_ci_is_narrower_than_unpaired_for_correlated_encoders():
  y, p, rng = _case(n=200, c=2, seed=2)
  b = np.clip(p + rng.normal(0, 0.05, p.shape), 0, 1)   # B ~ A: test noise is shared.
  paired = metrics.paired_bootstrap_difference(y, [p], [b], [0, 1], 400, 0)
  ca = metrics.bootstrap(y, p, np.full(2, 0.5), [0, 1], 400, 1)["macro_auroc_ci"]
  cb = metrics.bootstrap(y, b, np.full(2, 0.5), [0, 1], 400, 2)["macro_auroc_ci"]
  assert paired["ci"][1] - paired["ci"][0] < 0.5 * min(ca[1] - ca[0], cb[1] - cb[0])


def test_mismatched_test_sets_are_refused():
  y, p, _ = _case()
  with pytest.raises(ValueError, match="same test records"):
    metrics.paired_bootstrap_difference(y, [p], [p[:-1]], [0], 10, 0)


def test_cell_mean_sd_averages_draws_within_seed_first():
  runs = [{"seed": 0, "draw": 0, "auroc": 0.6}, {"seed": 0, "draw": 1, "auroc": 0.8},
          {"seed": 1, "draw": 0, "auroc": 0.9}, {"seed": 1, "draw": 1, "auroc": 0.9}]
  mean, sd, n = report.mean_sd_over_seeds(runs, "auroc")
  assert n == 2
  assert mean == pytest.approx(0.8)                     # (0.7 + 0.9) / 2
  assert sd == pytest.approx(np.std([0.7, 0.9], ddof=1))


def test_l2_edge_counts():
  grid = [1e-3, 1e-2, 1e-1]
  runs = [{"l2": 1e-3}, {"l2": 1e-2}, {"l2": 1e-1}, {"l2": 1e-2}]
  assert report.l2_edges(runs, grid) == {"runs": 4, "at_min": 1, "at_max": 1}


def test_paired_differences_and_markdown_end_to_end_on_synthetic_runs():
  import argparse  # pylint: disable=g-import-not-at-top
  import ssl_compare  # pylint: disable=g-import-not-at-top
  y, p, rng = _case(n=80, c=3, seed=4)
  noisy = lambda s: np.clip(p + rng.normal(0, s, p.shape), 0, 1)  # pylint: disable=unnecessary-lambda-assignment
  preds = {"hl": [(0.01, noisy(0.1)), (0.01, noisy(0.1)), (1.0, noisy(0.1)), (1.0, noisy(0.1))],
           "random_init": [(0.01, noisy(5.0)), (0.01, noisy(5.0)), (1.0, noisy(5.0)),
                           (1.0, noisy(5.0))],
           "handcrafted": [(0.01, p), (1.0, p)]}
  runs = [{"encoder": e, "seed": None if e == "handcrafted" else i % 2, "draw": 0,
           "fraction": f, "auroc": 0.5, "f1": 0.4, "l2": 1.0}
          for e, v in preds.items() for i, (f, _) in enumerate(v)]
  a = argparse.Namespace(resamples=100, bootstrap_seed=0)
  diffs = ssl_compare.paired_differences(y, preds, runs, "hl", ["random_init", "handcrafted"],
                                         [0.01, 1.0], a)
  by = {(d["b"], d["fraction"]): d for d in diffs}
  assert by[("random_init", 1.0)]["excludes_zero"] and by[("random_init", 1.0)]["difference"] > 0
  assert by[("handcrafted", 0.01)]["difference"] < 0   # the noiseless scores win.
  assert "resampled" not in by[("handcrafted", 0.01)]
  meta = {"name": "t", "date": "d", "command": "c", "seeds": [0, 1], "steps": 1, "batch": 2,
          "size": "tiny", "rate": 100.0, "window_s": 4.0, "patch_ms": 200.0,
          "pretrain_data": "x", "data": "x", "split_counts": {}, "draws": 1, "draws_at": [0.01],
          "l2_grid": [0.1, 1.0, 10.0], "resamples": 100, "bootstrap_seed": 0}
  edges = {e: report.l2_edges([r for r in runs if r["encoder"] == e], [0.1, 1.0, 10.0])
           for e in preds}
  md = report.markdown(meta, runs, list(preds), [0.01, 1.0], diffs, edges)
  assert "hl − random_init | 100% |" in md and "Differences whose 95% paired CI excludes 0" in md


def test_l2_plateau_at_the_end_is_not_counted_as_an_edge():
  grid = [1e-3, 1e-2, 1e-1]
  runs = [{"l2": 1e-1, "l2_at_edge": False}, {"l2": 1e-1, "l2_at_edge": True},
          {"l2": 1e-3, "l2_at_edge": False}]
  assert report.l2_edges(runs, grid) == {"runs": 3, "at_min": 0, "at_max": 1}


def test_objective_variants_and_per_class_differences():
  import argparse  # pylint: disable=g-import-not-at-top
  import ssl_compare  # pylint: disable=g-import-not-at-top
  from ecgjax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  assert ssl_compare.parse_objective("hl@data.normalize=record_joint;optim.lr=0.003") == (
      "hl", {"data.normalize": "record_joint", "optim.lr": 0.003})
  a = argparse.Namespace(size="tiny", pretrain_data="", data="d", steps=10, batch=4, rate=100.0,
                         window_s=4.0, patch_ms=200.0, workers=0, lr=1e-3, cpu=True,
                         resamples=50, bootstrap_seed=0, class_diffs="B")
  cfg = ssl_compare.pretrain_config("hl@data.normalize=record_joint", 0, a)
  assert cfg.data.normalize == "record_joint" and cfg.total_steps == 10
  with pytest.raises(SystemExit, match="no 'data.normalise'"):
    ssl_compare.pretrain_config("hl@data.normalise=record_joint", 0, a)
  y, p, rng = _case(n=80, c=3, seed=5)
  pa, pb = [p], [np.clip(p + rng.normal(0, 1.0, p.shape), 0, 1)]
  runs = [{"encoder": "A", "seed": 0, "fraction": 1.0, "auroc": 0.9, "auroc_B": 0.8},
          {"encoder": "B", "seed": 0, "fraction": 1.0, "auroc": 0.7, "auroc_B": 0.6}]
  diffs = ssl_compare.paired_differences(y, {"A": [(1.0, pa[0])], "B": [(1.0, pb[0])]}, runs,
                                         "A", ["B"], [1.0], a, ["A", "B", "C"])
  by = {d["scope"]: d for d in diffs}
  assert set(by) == {"macro", "B"} and by["B"]["per_seed"] == [pytest.approx(0.2)]
  yb = y[:, 1] > 0
  want = metrics.auroc(yb, pa[0][:, 1]) - metrics.auroc(yb, pb[0][:, 1])
  assert by["B"]["difference"] == pytest.approx(want, abs=1e-9)
  with pytest.raises(SystemExit, match="HYP"):
    ssl_compare.class_names(argparse.Namespace(class_diffs="HYP"), ["A", "B"])
