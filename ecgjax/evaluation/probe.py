r"""Linear-probe job: frozen encoder -> embeddings -> L2 logistic/softmax probe -> metrics.

  python main.py --config=configs/probe.py --config.pretrained=RUN_OR_EXPORT_DIR \
      --config.data.path=SHARDS_DIR --workdir=DIR
  python main.py --config=configs/probe.py --config.pretrained=random \
      --config.random_like=RUN_OR_EXPORT_DIR --config.data.path=SHARDS_DIR --workdir=DIR

Labels, their encoding ('multi_hot' -> one logistic regression per class, 'class_index' ->
softmax regression) and the splits come from the shards' spec.json. Per label fraction:
seeded class-stratified train subset, features standardised on it, L2 chosen on val macro
AUROC, per-class F1 thresholds chosen on val (max F1), test metrics with bootstrap CIs.
Writes DIR/results.json, DIR/roc_curves.png, DIR/label_efficiency.png and prints a table.
``demo_summary`` runs after the demo pretraining: pretrained vs random init.
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from ecgjax import storage
from ecgjax.config import ConfigError
from ecgjax.data import mixture
from ecgjax.data import spec as spec_lib
from ecgjax.evaluation import embeddings as probe_data
from ecgjax.evaluation import fit as probe_fit
from ecgjax.evaluation import metrics as probe_metrics
from ecgjax.evaluation import report as probe_report
from ecgjax.inference import encoder as encoder_lib

RESULTS_VERSION = 1
SPLIT_KEYS = ("train", "val", "test")


class ProbeConfigError(ConfigError):
  pass


# A val/test split smaller than this gives metrics that are n/a (a class with no
# positives) or noise; the probe still runs but says so.
MIN_EVAL_RECORDS = 20


def validate(config, workdir: str | None) -> None:
  """Checks the probe config before anything loads; errors name the field."""
  def check(cond, field, msg):
    if not cond:
      raise ProbeConfigError(f"config.{field}: {msg}")
  if not workdir:  # a flag, not a config field.
    raise ProbeConfigError("--workdir: give --workdir=DIR for results.json and the embedding "
                           "cache")
  check(bool(config.pretrained), "pretrained",
        "give a training workdir, an export directory or 'random'")
  if config.pretrained != "random":
    encoder_lib.source_kind(config.pretrained)  # raises with what was expected.
  elif config.random_like:
    encoder_lib.source_kind(config.random_like)
  has_spec = bool(config.data.path) and storage.isfile(
      storage.join(config.data.path, spec_lib.SPEC_FILE))
  check(has_spec, "data.path", f"{config.data.path!r} has no {spec_lib.SPEC_FILE}; convert "
        "the dataset first (python -m data_pipelines.convert ...)")
  fr = list(config.label_fractions)
  check(fr and all(0 < f <= 1 for f in fr), "label_fractions", f"{fr}: need values in (0, 1]")
  check(len(config.l2_grid) > 0 and all(l > 0 for l in config.l2_grid), "l2_grid",
        f"{list(config.l2_grid)}: need positive values")
  check(int(config.bootstrap) >= 0, "bootstrap", f"{config.bootstrap} must be >= 0")
  check(int(config.batch_size) >= 1, "batch_size", f"{config.batch_size} must be >= 1")
  h = tuple(config.holdout)
  check(len(h) == 2 and all(0 < f < 0.5 for f in h), "holdout",
        f"{h}: need (val_fraction, test_fraction), each in (0, 0.5)")
  check(set(config.splits.keys()) == set(SPLIT_KEYS), "splits",
        f"keys {sorted(config.splits.keys())}; expected {SPLIT_KEYS}")


# ----------------------------------------------------------------------------- splits
def partial_note(spec: dict[str, Any]) -> str | None:
  """Why the splits may be smaller than the dataset's official ones; None if complete."""
  summary = spec.get("reader_summary") or {}
  missing = int(summary.get("missing_signal") or 0)
  rejected = int((spec.get("rejects") or {}).get("count") or 0)
  parts = []
  if missing:
    parts.append(f"{missing} labelled records have no signal in this conversion (a partial "
                 "download or subset)")
  if rejected:
    parts.append(f"{rejected} records were rejected at conversion (see rejects.jsonl)")
  if not parts:
    return None
  return "; ".join(parts) + ": split and class counts below are what the probe used."


def drops_unlabelled(spec: dict[str, Any]) -> bool:
  """PTB-XL probes leave out records with no diagnostic superclass (Strodthoff et al. 2021)."""
  return spec.get("format") == "ptbxl" and spec.get("label_encoding") == "multi_hot"


def load_splits(enc: encoder_lib.Encoder, config, cache_dir: str
                ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
  """Embeds the shard splits and carves missing val/test out of train (seeded, stratified,
  patient-wise: a patient's records stay in one split).

  Returns ({'train'|'val'|'test': (x, y)}, split report for results.json).
  """
  spec = spec_lib.load(config.data.path)
  present = {k: v for k, v in (spec.get("splits") or {}).items() if int(v) > 0}
  names = {k: config.splits[k] for k in SPLIT_KEYS}
  if names["train"] not in present:
    raise ProbeConfigError(f"config.splits.train: {names['train']!r} is not a split of "
                           f"{config.data.path} (splits: {sorted(present)})")
  embedder = encoder_lib.BatchEmbedder(enc.model, int(config.batch_size))
  data, groups, files, dropped = {}, {}, {}, {}
  drop = drops_unlabelled(spec)
  for key in SPLIT_KEYS:
    if names[key] in present:
      out = probe_data.embed_split(enc, embedder, config.data, names[key], cache_dir,
                                   int(config.data.get("read_threads", 4)))
      keep = np.asarray(out["y"]).sum(1) > 0 if drop else np.ones(out["y"].shape[0], bool)
      dropped[key] = int((~keep).sum())
      data[key] = (out["x"][keep], out["y"][keep])
      groups[key] = probe_data.patient_groups(out["record_id"], out["patient_id"])[keep]
      files[key] = {k: out[k] for k in ("file", "cached", "seconds")}
  origin = {k: f"shards split {names[k]!r}" for k in data}
  missing = [k for k in ("val", "test") if k not in data]
  if missing:
    x, y = data["train"]
    g = groups["train"]
    fractions = tuple(float(config.holdout[("val", "test").index(k)]) for k in missing)
    *held, rest = probe_data.stratified_holdout(y, fractions, int(config.seed), groups=g)
    for k, idx, f in zip(missing, held, fractions):
      data[k], groups[k] = (x[idx], y[idx]), g[idx]
      origin[k] = (f"stratified, patient-wise {100 * f:g}% of {names['train']!r} "
                   f"(seed {int(config.seed)}; the shards have no {names[k]!r} split)")
    data["train"], groups["train"] = (x[rest], y[rest]), g[rest]
    origin["train"] += f" minus the held-out {' and '.join(missing)} records"
  labels = list(spec["label_names"])
  note = partial_note(spec)
  warnings = small_split_warnings(data, origin)
  for w in warnings:
    logging.warning("%s", w)
  report = {
      "origin": origin,
      "counts": {k: int(data[k][0].shape[0]) for k in SPLIT_KEYS},
      "class_counts": {k: probe_data.class_counts(data[k][1], labels) for k in SPLIT_KEYS},
      "spec_counts": {k: int(v) for k, v in (spec.get("splits") or {}).items()},
      "dropped_no_label": {"rule": ("records with no diagnostic superclass left out "
                                    "(Strodthoff et al. 2021)") if drop else "none dropped",
                           "counts": dropped},
      "patients": {k: int(np.unique(groups[k]).size) for k in SPLIT_KEYS},
      "patients_shared_between_splits": probe_data.shared_groups(
          {k: groups[k] for k in SPLIT_KEYS}),
      "grouping": "patient_id from the shards, else record_id",
      "partial": note is not None,
      "partial_note": note,
      "warnings": warnings,
      "embeddings": files,
  }
  return data, report


def small_split_warnings(data: dict[str, tuple[np.ndarray, np.ndarray]],
                         origin: dict[str, str]) -> list[str]:
  """One line per val/test split too small for meaningful metrics."""
  out = []
  for k in ("val", "test"):
    n = int(data[k][0].shape[0])
    if n < MIN_EVAL_RECORDS:
      out.append(f"{k} has only {n} record(s) ({origin[k]}): its metrics will be n/a or "
                 f"noise; convert with a {k} split or raise config.holdout (fewer than "
                 f"{MIN_EVAL_RECORDS} records)")
  return out


# ------------------------------------------------------------------------------- probe
def _macro_auroc(y: np.ndarray, p: np.ndarray) -> float:
  aucs = [probe_metrics.auroc(y[:, c], p[:, c]) for c in range(y.shape[1])]
  aucs = np.asarray(aucs, np.float64)
  return float(np.mean(aucs[np.isfinite(aucs)])) if np.isfinite(aucs).any() else float("nan")


def _select_l2(fit: probe_fit.Fit, zval: np.ndarray, yval: np.ndarray, multilabel: bool
               ) -> tuple[int, dict[str, float | None], str]:
  """Index of the grid value with the best val macro AUROC (ties -> stronger L2)."""
  scores = []
  for g in range(len(fit.l2)):
    scores.append(_macro_auroc(yval, probe_fit.predict(zval, fit.w[g], fit.b[g], multilabel)))
  scores = np.asarray(scores)
  by_l2 = {f"{l:g}": probe_metrics.clean(s) for l, s in zip(fit.l2, scores)}
  if np.isfinite(scores).any():
    best = max(range(len(scores)), key=lambda g: (np.nan_to_num(scores[g], nan=-1.0), fit.l2[g]))
    return best, by_l2, "val macro AUROC"
  # No class has both positives and negatives in val: fall back to val log-loss.
  losses = []
  for g in range(len(fit.l2)):
    p = np.clip(probe_fit.predict(zval, fit.w[g], fit.b[g], multilabel), 1e-7, 1 - 1e-7)
    losses.append(float(-(yval * np.log(p) + (1 - yval) * np.log(1 - p)).mean()))
  return int(np.argmin(losses)), by_l2, "val log-loss (val macro AUROC undefined)"


def l2_at_edge(scores: Sequence[float | None], g: int, tol: float = 1e-3) -> bool:
  """Whether grid index ``g`` is an end of the (ascending) grid and beats its neighbour by > tol.

  Only then may the optimum lie beyond the grid. A plateau that reaches the end is not a
  too-narrow grid: as L2 grows the weights tend to X^T (y - mean y) / L2, whose ranking, and so
  AUROC, no longer changes (likewise as L2 -> 0 on separable data), so several strong values tie
  and the tie-break (stronger L2) lands on the end. ``None`` scores (undefined AUROC) count as
  lowest.
  """
  n = len(scores)
  if n < 2 or g not in (0, n - 1):
    return False
  s = [-1.0 if v is None or not np.isfinite(v) else float(v) for v in scores]
  return s[g] > s[1 if g == 0 else n - 2] + tol


def fit_and_evaluate(data: dict[str, tuple[np.ndarray, np.ndarray]], labels: list[str],
                     multilabel: bool, config, on_predictions: Callable[..., None] | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """One result row per label fraction, plus the largest fraction's test ROC inputs.

  ``on_predictions(row, test_probs, thresholds)``, if given, sees each fraction's test
  predictions, so callers can add metrics (evaluation/tasks.py) without refitting.
  """
  (xtr, ytr), (xva, yva), (xte, yte) = (data[k] for k in SPLIT_KEYS)
  rows, roc = [], {}
  for fraction in sorted(float(f) for f in config.label_fractions):
    idx = probe_data.label_fraction_subset(ytr, fraction, int(config.seed))
    mean, std = probe_fit.standardizer(xtr, idx)
    z = lambda x: (x - mean) / std  # pylint: disable=cell-var-from-loop
    weights = np.zeros(xtr.shape[0], np.float32)
    weights[idx] = 1.0
    fit = probe_fit.fit(z(xtr), ytr, weights, list(config.l2_grid), multilabel,
                        int(config.max_iter), float(config.tol))
    g, by_l2, criterion = _select_l2(fit, z(xva), yva, multilabel)
    notes = []
    at_edge = l2_at_edge(list(by_l2.values()), g)
    if at_edge:
      notes.append(f"selected L2 {fit.l2[g]:g} is at the edge of l2_grid and still improving "
                   "there; consider extending it")
    pva = probe_fit.predict(z(xva), fit.w[g], fit.b[g], multilabel)
    pte = probe_fit.predict(z(xte), fit.w[g], fit.b[g], multilabel)
    thresholds = np.full(len(labels), 0.5)
    for c, name in enumerate(labels):
      t, _ = probe_metrics.best_f1_threshold(yva[:, c], pva[:, c])
      if np.isfinite(t):
        thresholds[c] = t
      else:
        notes.append(f"{name}: no positives in val, F1 threshold left at 0.5")
    val = probe_metrics.evaluate(yva, pva, thresholds, labels)
    test = probe_metrics.evaluate(yte, pte, thresholds, labels)
    included = [labels.index(n) for n in test["included_classes"]]
    ci = probe_metrics.bootstrap(yte, pte, thresholds, included, int(config.bootstrap),
                                 int(config.seed))
    test["macro_auroc_ci"], test["macro_f1_ci"] = ci["macro_auroc_ci"], ci["macro_f1_ci"]
    if not multilabel and yte.shape[0]:
      pred = np.eye(len(labels))[pte.argmax(1)]
      f1 = probe_metrics.f1_counts(yte, pred)
      test["accuracy"] = float((pte.argmax(1) == yte.argmax(1)).mean())
      test["macro_f1_argmax"] = (probe_metrics.clean(float(np.nanmean(f1[included])))
                                 if included else None)
    rows.append({
        "label_fraction": fraction, "num_train": int(idx.size),
        "train_class_counts": probe_data.class_counts(ytr[idx], labels),
        "l2": float(fit.l2[g]), "l2_selected_by": criterion, "val_macro_auroc_by_l2": by_l2,
        "l2_at_edge": at_edge,
        "lbfgs_iterations": int(fit.iterations[g]),
        "converged": bool(fit.iterations[g] < int(config.max_iter)),
        "val": {k: val[k] for k in ("macro_auroc", "macro_f1", "skipped_classes")},
        "test": test, "notes": notes,
    })
    roc = {"fraction": fraction, "y": yte, "p": pte}
    if on_predictions is not None:
      on_predictions(rows[-1], pte, thresholds)
  return rows, roc


def evaluate_encoder(enc: encoder_lib.Encoder, config, cache_dir: str
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(results.json dict, ROC inputs) for one encoder on config.data."""
  start = time.time()
  encoder_lib.log_encoder(enc)
  spec = spec_lib.load(config.data.path)
  labels = list(spec["label_names"])
  encoding = spec["label_encoding"]
  multilabel = encoding == "multi_hot"
  data, split_report = load_splits(enc, config, cache_dir)
  t_embed = time.time() - start
  rows, roc = fit_and_evaluate(data, labels, multilabel, config)
  w = enc.window
  results = {
      "version": RESULTS_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "encoder": {
          "kind": enc.kind, "pretrained": config.pretrained, "source": enc.meta.get("source"),
          "step": enc.meta.get("step"), "init": enc.meta.get("init"),
          "seed": enc.meta.get("seed"), "model_size": enc.meta.get("model_size"),
          "objective": enc.meta.get("objective"), "embedding_dim": enc.meta.get("embedding_dim"),
          "window": {"leads": list(w.leads), "sampling_rate": w.sampling_rate,
                     "window_samples": w.window_samples,
                     "window_s": w.window_samples / w.sampling_rate, "pre_r_s": w.pre_r_s,
                     "normalize": w.normalize,
                     "start": "pre_r_s before the first R peak that leaves a full window "
                              "(pipeline eval mode)"}},
      "task": {"data_path": storage.abspath(config.data.path), "label_names": labels,
               "label_encoding": encoding, "num_classes": len(labels),
               "probe": ("logistic regression per class (sigmoid)" if multilabel
                         else "softmax regression")},
      "splits": split_report,
      "probe": {"optimizer": "optax.lbfgs, full batch, zoom line search",
                "max_iter": int(config.max_iter), "tol": float(config.tol),
                "l2_grid": [float(l) for l in config.l2_grid],
                "standardize": "mean/std of the probe's train records",
                "l2_selection": "max val macro AUROC (ties -> stronger L2)",
                "thresholds": "per class, max F1 on val", "seed": int(config.seed)},
      "bootstrap": {"resamples": int(config.bootstrap), "seed": int(config.seed),
                    "level": 0.95, "method": "percentile, test records resampled"},
      "results": rows,
      "timing_s": {"embed": round(t_embed, 2), "probe": round(time.time() - start - t_embed, 2)},
  }
  return results, roc


def run(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
  """The probe job (main.py, config.job == 'probe')."""
  validate(config, workdir)
  storage.makedirs(workdir)
  enc = encoder_lib.load(config.pretrained, config.random_like, arch=config.arch,
                         seed=int(config.seed), step=None if config.step < 0 else int(config.step),
                         data_path=config.data.path)
  cache_dir = config.cache_dir or storage.join(workdir, "embeddings")
  results, roc = evaluate_encoder(enc, config, cache_dir)
  if jax.process_index() == 0:
    probe_report.write(workdir, results, roc, plots=bool(config.plots))
    print(probe_report.table(results), flush=True)
  return results


# -------------------------------------------------------------------------------- demo
DEMO_FRACTIONS = (0.1, 1.0)


def demo_config(train_config, workdir: str) -> ml_collections.ConfigDict:
  """Probe settings for the demo summary: the training data, two fractions."""
  c = ml_collections.ConfigDict({
      "job": "probe", "pretrained": storage.join(workdir, "export"), "random_like": "",
      "step": -1, "seed": int(train_config.seed),
      "data": {"path": mixture.primary_path(train_config.data), "skip_corrupt": bool(train_config.data.skip_corrupt),
               "read_threads": 2},
      "splits": {"train": "train", "val": "val", "test": "test"}, "holdout": (0.1, 0.1),
      "label_fractions": DEMO_FRACTIONS, "l2_grid": (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
      "max_iter": 300, "tol": 1e-5, "bootstrap": 1000, "batch_size": 64, "cache_dir": "",
      "plots": True, "arch": None})
  return c


def demo_summary(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """After the demo pretraining: export, probe pretrained vs random init, print a table.

  The random baseline is the pretraining run's own initialisation (same seed), so the
  difference is what pretraining learned. Writes WORKDIR/export and WORKDIR/probe/.
  """
  from ecgjax.inference import export  # pylint: disable=g-import-not-at-top
  start = time.time()
  export_dir = storage.join(workdir, "export")
  logging.info("exporting the encoder to %s…", export_dir)
  model, cfg, step = export.restore_model(workdir)
  if jax.process_index() == 0:
    export.write(export_dir, model, export.export_config(cfg, step, workdir, "trained"))
  logging.info("exported in %.1fs; probing pretrained vs random init…", time.time() - start)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("demo_export_written")
  pc = demo_config(config, workdir)
  out_dir = storage.join(workdir, "probe")
  cache_dir = storage.join(out_dir, "embeddings")
  trained = encoder_lib.load(export_dir)
  random = encoder_lib.load("random", random_like=export_dir, seed=int(config.seed))
  res_p, roc_p = evaluate_encoder(trained, pc, cache_dir)
  with pc.unlocked():
    pc.pretrained, pc.random_like = "random", export_dir
  res_r, _ = evaluate_encoder(random, pc, cache_dir)
  summary = {"version": RESULTS_VERSION, "pretrained": res_p, "random": res_r,
             "seconds": round(time.time() - start, 2)}
  if jax.process_index() == 0:
    probe_report.write_demo(out_dir, summary, roc_p)
    from ecgjax.inference import model_card  # pylint: disable=g-import-not-at-top
    model_card.write(export_dir, workdir)  # the card now reports the probe results.
    print(probe_report.demo_table(summary), flush=True)
  logging.info("demo probe summary in %.1fs -> %s", time.time() - start, out_dir)
  return summary
