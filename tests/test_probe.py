"""Linear probe: metrics against direct formulas, subsets, the job end to end, demo summary."""
import json
import os
import shutil

import numpy as np
import pytest

from ecgjax.evaluation import embeddings as probe_data
from ecgjax.evaluation import fit as probe_fit
from ecgjax.evaluation import metrics as pm
from ecgjax.evaluation import probe
from ecgjax.inference import encoder as encoder_lib
from tests.conftest import micro_config, requires_shared
from tests.trained_run import shared_trained_run

RESULT_KEYS = {"version", "created", "encoder", "task", "splits", "probe", "bootstrap",
               "results", "timing_s", "plots"}
ROW_KEYS = {"label_fraction", "num_train", "train_class_counts", "l2", "l2_selected_by",
            "val_macro_auroc_by_l2", "lbfgs_iterations", "converged", "val", "test", "notes"}
TEST_KEYS = {"macro_auroc", "macro_auroc_ci", "macro_f1", "macro_f1_ci", "per_class",
             "skipped_classes", "included_classes", "num_records"}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_shards) -> str:
  return shared_trained_run(tmp_path_factory, synthetic_shards)


# ------------------------------------------------------------------------- metrics
def _pairwise_auroc(y, s, w=None):
  """Direct definition: sum over (pos, neg) pairs of [s_p > s_n] + [s_p == s_n] / 2."""
  w = np.ones(len(y)) if w is None else w
  p, n = np.flatnonzero(y), np.flatnonzero(~y)
  if not p.size or not n.size or w[p].sum() == 0 or w[n].sum() == 0:
    return np.nan
  cmp = (s[p][:, None] > s[n][None]) + 0.5 * (s[p][:, None] == s[n][None])
  return float((w[p][:, None] * w[n][None] * cmp).sum() / (w[p].sum() * w[n].sum()))


def test_auroc_matches_pairwise_formula_with_ties_and_weights():
  rng = np.random.default_rng(0)
  for trial in range(20):
    n = int(rng.integers(2, 60))
    y = rng.random(n) < 0.4
    s = rng.integers(0, 6, n).astype(float) if trial % 2 else rng.standard_normal(n)
    np.testing.assert_allclose(pm.auroc(y, s), _pairwise_auroc(y, s), atol=1e-12)
    counts = rng.integers(0, 3, size=(4, n)).astype(float)
    want = [_pairwise_auroc(y, s, c) for c in counts]
    np.testing.assert_allclose(pm.auroc(y, s, counts), want, atol=1e-12)
  assert np.isnan(pm.auroc(np.zeros(5, bool), np.arange(5.0)))
  assert pm.auroc(np.array([0, 1], bool), np.array([0.0, 1.0])) == 1.0
  fpr, tpr = pm.roc_curve(np.array([0, 1, 1, 0], bool), np.array([0.1, 0.9, 0.5, 0.5]))
  np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
  np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])


def _f1(y, pred):
  tp, fp, fn = (y & pred).sum(), (~y & pred).sum(), (y & ~pred).sum()
  return 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else np.nan


def test_val_threshold_gives_max_f1_on_val():
  rng = np.random.default_rng(1)
  for trial in range(20):
    n = int(rng.integers(3, 80))
    y = rng.random(n) < 0.3
    y[0] = True
    s = np.round(rng.random(n), 1 if trial % 2 else 6)
    t, best = pm.best_f1_threshold(y, s)
    brute = max(_f1(y, s >= c) for c in np.unique(s))
    assert best == pytest.approx(brute)
    assert _f1(y, s >= t) == pytest.approx(brute)
  assert pm.best_f1_threshold(np.zeros(4, bool), np.arange(4.0))[0] == np.inf


def test_evaluate_skips_classes_without_positives_and_bootstrap_is_seeded():
  rng = np.random.default_rng(2)
  y = np.zeros((50, 3), bool)
  y[:20, 0] = True
  y[10:30, 1] = True  # class 2 never positive.
  p = np.clip(y * 0.5 + rng.random((50, 3)) * 0.6, 0, 1)
  out = pm.evaluate(y, p, np.full(3, 0.5), ["a", "b", "c"])
  assert out["included_classes"] == ["a", "b"] and "c" in out["skipped_classes"]
  assert out["per_class"]["c"]["auroc"] is None
  want = np.mean([_pairwise_auroc(y[:, c], p[:, c]) for c in (0, 1)])
  assert out["macro_auroc"] == pytest.approx(want)
  want_f1 = np.mean([_f1(y[:, c], p[:, c] >= 0.5) for c in (0, 1)])
  assert out["macro_f1"] == pytest.approx(want_f1)
  a = pm.bootstrap(y, p, np.full(3, 0.5), [0, 1], 300, seed=7)
  b = pm.bootstrap(y, p, np.full(3, 0.5), [0, 1], 300, seed=7)
  assert a == b
  lo, hi = a["macro_auroc_ci"]
  assert lo <= out["macro_auroc"] <= hi and hi - lo < 0.5
  lo, hi = a["macro_f1_ci"]
  assert lo <= out["macro_f1"] <= hi


# ------------------------------------------------------------------ subsets, splits
@pytest.mark.parametrize("multilabel", [True, False])
def test_label_fraction_subsets_keep_every_class_and_are_deterministic(multilabel):
  rng = np.random.default_rng(3)
  n, c = 500, 6
  if multilabel:
    y = (rng.random((n, c)) < np.array([0.5, 0.2, 0.1, 0.05, 0.01, 0.004])).astype(np.float32)
  else:
    y = np.eye(c, dtype=np.float32)[rng.choice(c, n, p=[0.5, 0.3, 0.1, 0.06, 0.03, 0.01])]
  assert y.sum(0).min() >= 1
  previous = set()
  for fraction in (0.01, 0.1, 0.5, 1.0):
    idx = probe_data.label_fraction_subset(y, fraction, seed=0)
    np.testing.assert_array_equal(idx, probe_data.label_fraction_subset(y, fraction, seed=0))
    assert (y[idx].sum(0) >= 1).all(), fraction
    assert len(idx) >= fraction * n and len(np.unique(idx)) == len(idx)
    if fraction < 1:
      assert len(idx) <= fraction * n + 2 * (c + 1) + c
    assert previous <= set(idx.tolist()) or multilabel  # nested for single-label tasks.
    previous = set(idx.tolist())
  assert not np.array_equal(probe_data.label_fraction_subset(y, 0.1, 0),
                            probe_data.label_fraction_subset(y, 0.1, 1))


def test_stratified_holdout_is_a_seeded_partition():
  y = np.eye(4, dtype=np.float32)[np.arange(200) % 4]
  val, test, rest = probe_data.stratified_holdout(y, (0.1, 0.2), seed=0)
  assert len(val) == 20 and len(test) == 40 and len(rest) == 140
  assert len(set(val) | set(test) | set(rest)) == 200
  assert (y[val].sum(0) == 5).all() and (y[test].sum(0) == 10).all()
  again = probe_data.stratified_holdout(y, (0.1, 0.2), seed=0)
  assert all(np.array_equal(a, b) for a, b in zip((val, test, rest), again))


def test_probe_fit_is_deterministic_and_learns():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((300, 16)).astype(np.float32)
  y = np.stack([x[:, 0] > 0, x[:, 1] + x[:, 2] > 0.5], 1).astype(np.float32)
  w = np.ones(300, np.float32)
  w[200:] = 0
  a = probe_fit.fit(x, y, w, [1e-3, 1.0], multilabel=True)
  b = probe_fit.fit(x, y, w, [1e-3, 1.0], multilabel=True)
  np.testing.assert_array_equal(a.w, b.w)
  assert (a.grad_norm < 1e-4).all()
  p = probe_fit.predict(x[200:], a.w[0], a.b[0], True)
  assert min(pm.auroc(y[200:, k], p[:, k]) for k in range(2)) > 0.9
  assert np.abs(a.w[1]).sum() < np.abs(a.w[0]).sum()  # stronger L2, smaller weights.
  yc = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3], 1)]
  s = probe_fit.fit(x, yc, w, [1e-3], multilabel=False)
  ps = probe_fit.predict(x[200:], s.w[0], s.b[0], False)
  np.testing.assert_allclose(ps.sum(1), 1.0, rtol=1e-6)
  assert (ps.argmax(1) == yc[200:].argmax(1)).mean() > 0.85


# ------------------------------------------------------------------------ the job
def _probe_config(pretrained, data_path, **kw):
  from configs import probe as probe_config  # pylint: disable=g-import-not-at-top
  c = probe_config.get_config("demo")
  c.pretrained = pretrained
  c.data.path = data_path
  c.data.read_threads = 2
  c.label_fractions = (0.1, 1.0)
  c.l2_grid = (1e-3, 1e-1)
  c.bootstrap = 100
  c.batch_size = 32
  for k, v in kw.items():
    c[k] = v
  return c


def test_probe_job_end_to_end_from_run_and_export(trained_run, synthetic_shards, tmp_path,
                                                  capsys):
  workdir = str(tmp_path / "probe")
  res = probe.run(_probe_config(trained_run, synthetic_shards), workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert RESULT_KEYS <= set(saved), set(saved) ^ RESULT_KEYS
  assert saved["encoder"]["kind"] == "run" and saved["encoder"]["step"] == 3
  assert saved["task"]["label_encoding"] == "class_index" and saved["task"]["num_classes"] == 6
  assert saved["splits"]["counts"] == {"train": 192, "val": 24, "test": 24}
  assert [r["label_fraction"] for r in saved["results"]] == [0.1, 1.0]
  for row in saved["results"]:
    assert ROW_KEYS <= set(row)
    t = row["test"]
    assert TEST_KEYS | {"accuracy", "macro_f1_argmax"} <= set(t)
    assert 0 <= t["macro_auroc"] <= 1 and len(t["per_class"]) == 6
    lo, hi = t["macro_auroc_ci"]
    assert lo <= t["macro_auroc"] <= hi
    assert all(v >= 1 for v in row["train_class_counts"].values())
  assert saved["results"][0]["num_train"] < saved["results"][1]["num_train"] == 192
  for png in ("roc_curves.png", "label_efficiency.png"):
    assert os.path.getsize(os.path.join(workdir, png)) > 1000
  assert "test macro AUROC" in capsys.readouterr().out
  assert res["results"][1]["test"]["macro_auroc"] == saved["results"][1]["test"]["macro_auroc"]

  # The export of the same step gives the same embeddings (up to float noise) and reuses
  # nothing from the run's cache (other source); a second identical probe is all cache.
  exp = probe.run(_probe_config(os.path.join(trained_run, "export"), synthetic_shards),
                  workdir)
  assert not any(e["cached"] for e in exp["splits"]["embeddings"].values())
  assert exp["results"][1]["test"]["macro_auroc"] == pytest.approx(
      res["results"][1]["test"]["macro_auroc"], abs=1e-3)
  again = probe.run(_probe_config(os.path.join(trained_run, "export"), synthetic_shards),
                    workdir)
  assert all(e["cached"] for e in again["splits"]["embeddings"].values())
  assert again["results"] == exp["results"]


def test_random_baseline_and_holdout_when_shards_lack_val_test(trained_run, synthetic_shards,
                                                                tmp_path):
  # Shards with only a train split: val/test are carved out of train, and recorded.
  data = tmp_path / "train_only"
  shutil.copytree(synthetic_shards, data)
  spec = json.loads((data / "spec.json").read_text())
  spec["shards"] = [s for s in spec["shards"] if s["split"] == "train"]
  spec["splits"] = {"train": spec["splits"]["train"]}
  (data / "spec.json").write_text(json.dumps(spec))
  cfg = _probe_config("random", str(data), random_like=os.path.join(trained_run, "export"),
                      plots=False, label_fractions=(1.0,))
  res = probe.run(cfg, str(tmp_path / "random"))
  assert res["encoder"]["kind"] == "random" and res["encoder"]["init"] == "random"
  counts = res["splits"]["counts"]
  assert counts["val"] + counts["test"] + counts["train"] == 192 and counts["val"] >= 12
  assert "stratified" in res["splits"]["origin"]["val"]
  assert "stratified" in res["splits"]["origin"]["test"]
  assert all(v >= 1 for v in res["splits"]["class_counts"]["test"].values())
  assert np.isfinite(res["results"][0]["test"]["macro_auroc"])
  # Without random_like the architecture comes from the probe config's own fields.
  cfg = _probe_config("random", synthetic_shards)
  cfg.arch.model.update(width=32, depth=1, num_heads=2, mlp_dim=64, local_depth=0)
  cfg.arch.window.window_s = 2.0
  enc = encoder_lib.load("random", arch=cfg.arch, seed=1)
  assert enc.meta["embedding_dim"] == 64 and enc.meta["model"]["depth"] == 1
  assert enc.window.window_samples == 200 and enc.window.sampling_rate == 100.0
  assert enc.meta["model"]["patch_size"] == 20  # demo arch: 200 ms patches at 100 Hz.


def test_demo_summary_compares_pretrained_and_random(trained_run, synthetic_shards, tmp_path,
                                                     capsys):
  run = tmp_path / "run"
  shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("export"))
  config = micro_config(synthetic_shards)
  out = probe.demo_summary(config, str(run))
  assert os.path.exists(run / "export" / "params.safetensors")
  saved = json.loads((run / "probe" / "results.json").read_text())
  assert {"pretrained", "random", "seconds", "plots"} <= set(saved)
  for name in ("pretrained", "random"):
    assert [r["label_fraction"] for r in saved[name]["results"]] == list(probe.DEMO_FRACTIONS)
  assert saved["random"]["encoder"]["init"] == "random"
  text = capsys.readouterr().out
  assert "pretrained" in text and "random init" in text
  assert out["pretrained"]["encoder"]["step"] == 3
  card = (run / "export" / "README.md").read_text()  # re-rendered with the probe results.
  auroc = saved["pretrained"]["results"][0]["test"]["macro_auroc"]
  assert "| pretrained | " in card and "| random init | " in card
  assert auroc is None or f"{auroc:.3f}" in card


def test_partial_conversions_are_flagged():
  assert probe.partial_note({"reader_summary": {}, "rejects": {"count": 0}}) is None
  note = probe.partial_note({"reader_summary": {"missing_signal": 19812}})
  assert "19812 labelled records have no signal" in note


def test_probe_config_errors_name_the_field(synthetic_shards, tmp_path):
  cfg = _probe_config("", synthetic_shards)
  with pytest.raises(probe.ProbeConfigError, match="config.pretrained"):
    probe.run(cfg, str(tmp_path))
  cfg = _probe_config("random", str(tmp_path))
  with pytest.raises(probe.ProbeConfigError, match="config.data.path"):
    probe.run(cfg, str(tmp_path))
  cfg = _probe_config("random", synthetic_shards, label_fractions=(0.0, 1.0))
  with pytest.raises(probe.ProbeConfigError, match="label_fractions"):
    probe.run(cfg, str(tmp_path))
  with pytest.raises(FileNotFoundError, match="neither a training workdir"):
    probe.run(_probe_config(str(tmp_path), synthetic_shards), str(tmp_path))


# ---------------------------------------------------------------------- real data
def test_ptbxl_subset_multilabel_probe_and_embedding_match(trained_run, tmp_path):
  """Real PTB-XL records (skipped without ../shared/data): multi-hot task, partial split,
  and the embedding API (its own R-peak detection) equals the pipeline's eval windows."""
  ptbxl = requires_shared("ptbxl")
  import pandas as pd  # pylint: disable=g-import-not-at-top
  from data_pipelines import convert  # pylint: disable=g-import-not-at-top
  labels = pd.read_csv(ptbxl / "ptbxl_labels.csv")
  sub = labels[labels.in_records100_subset == 1]
  sub = pd.concat([sub[sub.split == s].head(n) for s, n in
                   (("train", 60), ("val", 20), ("test", 20))])
  sub.to_csv(tmp_path / "labels.csv", index=False)
  shards = str(tmp_path / "shards")
  convert.convert(convert.build_parser().parse_args([
      "--format=ptbxl", f"--input={ptbxl}", f"--labels={tmp_path / 'labels.csv'}",
      f"--output={shards}", "--num_shards=1", "--workers=1", "--quiet"]))
  export_dir = os.path.join(trained_run, "export")
  res = probe.run(_probe_config(export_dir, shards, plots=False, label_fractions=(1.0,)),
                  str(tmp_path / "probe"))
  assert res["task"]["label_encoding"] == "multi_hot"
  assert res["task"]["label_names"] == ["NORM", "MI", "STTC", "CD", "HYP"]
  # Records without a diagnostic superclass are left out and counted (Strodthoff et al.).
  dropped = {s: int((sub[sub.split == s].n_superclasses == 0).sum()) for s in ("train", "val", "test")}
  assert res["splits"]["dropped_no_label"]["counts"] == dropped
  assert res["splits"]["counts"] == {s: n - dropped[s] for s, n in
                                     (("train", 60), ("val", 20), ("test", 20))}
  assert set(res["splits"]["patients_shared_between_splits"].values()) == {0}
  assert res["results"][0]["test"]["macro_auroc"] is not None

  import ecgjax  # pylint: disable=g-import-not-at-top
  from ecgjax.inference import export  # pylint: disable=g-import-not-at-top
  from ecgjax.data import example, pipeline  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model, _ = export.load_model(export_dir)
  data_cfg = export.load_train_config(trained_run).data
  data_cfg.path = shards
  ds, source = pipeline.make_eval_dataset(data_cfg, "test", batch_size=8)
  batch = ds[0]
  embed = nnx.jit(lambda m, x, k: m.embed(x, k))
  want = np.asarray(embed(model, jnp.asarray(batch["view1"]), jnp.asarray(batch["lead_mask"])))
  recs = [example.decode(source[i]) for i in range(8)]
  signals = np.stack([r["signal"].astype(np.float32) / r["gain"][:, None] for r in recs])
  got = ecgjax.load_pretrained(export_dir).embed(signals, 100.0, recs[0]["leads"])
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_strong_l2_plateau_is_not_a_grid_edge():
  """At 1% labels the chosen L2 often sits at the top of the grid. That is a plateau, not a
  narrow grid: as L2 grows the weights tend to sum_i (y_i - mean y) x_i / L2 (an independent
  numpy computation here), so the val AUROC stops changing and the stronger-L2 tie-break lands on
  the end. ``l2_at_edge`` must say no then, and yes when the end is still improving."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((400, 32)).astype(np.float32)
  y = (x[:, :4].sum(1) + 2.0 * rng.standard_normal(400) > 0).astype(np.float32)[:, None]
  w = np.zeros(400, np.float32)
  w[:18] = 1.0  # 18 labelled records, like the 1% fraction of the PTB-XL subset.
  grid = [1e-5, 1e-3, 1e-1, 1e1, 1e3, 1e5]
  fit = probe_fit.fit(x, y, w, grid, multilabel=True)
  xv, yv = x[200:], y[200:, 0]
  scores = [pm.auroc(yv, probe_fit.predict(xv, fit.w[g], fit.b[g], True)[:, 0])
            for g in range(len(grid))]
  direction = ((y[:18, 0] - y[:18, 0].mean())[:, None] * x[:18]).sum(0)
  limit = pm.auroc(yv, xv @ direction)
  assert scores[-1] == pytest.approx(limit, abs=1e-3)
  assert scores[-2] == pytest.approx(scores[-1], abs=1e-3)  # the plateau.
  assert not probe.l2_at_edge(scores, len(grid) - 1)
  assert probe.l2_at_edge([0.5, 0.6, 0.7], 2) and probe.l2_at_edge([0.9, 0.6, 0.7], 0)
  assert not probe.l2_at_edge([0.5, 0.8, 0.7], 1) and not probe.l2_at_edge([0.7, 0.6, 0.6], 2)
