r"""Clinical task suite job: every task x encoder x label fraction through one probe.

  python main.py --config=configs/tasks.py --config.pretrained=EXPORT[,random] --workdir=DIR

For each task of ``config.tasks`` (data, label mapping, metrics and split are config data,
see configs/tasks.py) and each encoder (the comma-separated ``pretrained`` entries, plus the
hand-crafted baseline): embed the task's shard splits once (cached by
embeddings.embed_split), map the labels, fit the linear probe per label fraction
(probe.fit_and_evaluate: L2 on val, thresholds on val, bootstrap CIs on test) and add the
task's own metrics. Writes DIR/tasks.json, DIR/tasks.md and DIR/tasks.png.
"""
from __future__ import annotations

import datetime
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from ecgjax import storage
from ecgjax.data import example
from ecgjax.data import spec as spec_lib
from ecgjax.data.source import ShardedSource
from ecgjax.evaluation import embeddings as probe_data
from ecgjax.evaluation import handcrafted
from ecgjax.evaluation import label_maps
from ecgjax.evaluation import metrics as probe_metrics
from ecgjax.evaluation import probe
from ecgjax.evaluation import task_report
from ecgjax.inference import encoder as encoder_lib

METRICS = ("macro_auroc", "auroc", "macro_f1", "f1", "accuracy", "se_ppv")
HEADLINE = ("macro_auroc", "auroc", "macro_f1", "f1", "accuracy")
SPLITS = ("shards", "mitbih_inter_patient", "external")
ENCODINGS = ("multi_hot", "class_index")
RESULTS_VERSION = 1


class TaskConfigError(ValueError):
  pass


def _data_path(config, t) -> str:
  if storage.is_remote(t.data) or os.path.isabs(t.data):
    return t.data
  return storage.join(config.data_root, t.data)


def selected(config) -> list[str]:
  names = list(config.tasks.keys())
  run = [n.strip() for n in str(config.run or "").split(",") if n.strip()]
  for n in run:
    if n not in names:
      raise TaskConfigError(f"config.run: unknown task {n!r}; tasks: {names}")
  return run or names


def validate(config, workdir: str | None) -> list[str]:
  """Checks the suite config before anything loads; returns the tasks to run."""
  def check(cond, field, msg):
    if not cond:
      raise TaskConfigError(f"config.{field}: {msg}")
  check(bool(workdir), "workdir", "give --workdir=DIR for tasks.json and the embedding cache")
  check(bool(config.pretrained), "pretrained",
        "give export / run dirs and/or 'random', comma-separated")
  fr = list(config.label_fractions)
  check(fr and all(0 < f <= 1 for f in fr), "label_fractions", f"{fr}: need values in (0, 1]")
  check(len(config.l2_grid) > 0 and all(l > 0 for l in config.l2_grid), "l2_grid",
        f"{list(config.l2_grid)}: need positive values")
  names = selected(config)
  for name in names:
    t = config.tasks[name]
    f = f"tasks.{name}"
    check(t.split in SPLITS, f"{f}.split", f"unknown split {t.split!r}; expected one of {SPLITS}")
    check(t.encoding in ENCODINGS, f"{f}.encoding",
          f"unknown encoding {t.encoding!r}; expected one of {ENCODINGS}")
    check(len(t.metrics) > 0, f"{f}.metrics", "name at least one metric")
    for m in t.metrics:
      check(m in METRICS, f"{f}.metrics", f"unknown metric {m!r}; expected one of {METRICS}")
    check(t.metrics[0] in HEADLINE, f"{f}.metrics",
          f"the first metric is the headline and must be one of {HEADLINE}")
    check("accuracy" not in t.metrics or t.encoding == "class_index", f"{f}.metrics",
          "'accuracy' needs encoding='class_index'")
    check(len(t.classes) > 0 and all(len(c) == 2 and len(c[1]) > 0 for c in t.classes),
          f"{f}.classes", "need ((class, (source label, ...)), ...)")
    cls = [c[0] for c in t.classes]
    check(set(t.exclusive) <= set(cls), f"{f}.exclusive", f"{list(t.exclusive)} not in {cls}")
    path = _data_path(config, t)
    check(storage.isfile(storage.join(path, spec_lib.SPEC_FILE)), f"{f}.data",
          f"{path!r} has no {spec_lib.SPEC_FILE}; convert it first (README: Clinical task "
          "suite) or set config.data_root")
    if t.split == "external":
      check(t.train_task in config.tasks, f"{f}.train_task",
            f"unknown task {t.train_task!r}; tasks: {list(config.tasks.keys())}")
      other = config.tasks[t.train_task]
      check([c[0] for c in other.classes] == cls and other.encoding == t.encoding,
            f"{f}.classes", f"must equal the classes/encoding of {t.train_task!r}")
    if t.split == "mitbih_inter_patient":
      scheme = (spec_lib.load(path).get("args") or {}).get("split_scheme")
      check(scheme == "mitbih_inter_patient", f"{f}.split",
            f"{path} was converted with split_scheme={scheme!r}; reconvert with "
            "--split_scheme=mitbih_inter_patient")
  return names


# ------------------------------------------------------------------------------ encoders
def load_encoders(config) -> list[tuple[str, encoder_lib.Encoder, Any]]:
  """[(display name, Encoder, embedder)] for ``pretrained`` entries (+ handcrafted)."""
  entries = [p.strip() for p in str(config.pretrained).split(",") if p.strip()]
  trained = [p for p in entries if p != "random"]
  like = config.random_like or (trained[0] if trained else "")
  out = []
  for p in entries:
    if p == "random":
      enc = encoder_lib.load("random", like, arch=None if like else config.arch,
                             seed=int(config.seed))
      name = "random"
    else:
      enc = encoder_lib.load(p, step=None if config.step < 0 else int(config.step))
      base = storage.basename(p)
      name = base if sum(storage.basename(q) == base for q in trained) == 1 else p
    out.append((name, enc, encoder_lib.BatchEmbedder(enc.model, int(config.batch_size))))
  if config.handcrafted:
    enc = handcrafted.make_encoder(out[0][1].meta)
    out.append(("handcrafted", enc, handcrafted.Embedder(int(config.batch_size))))
  return out


# ---------------------------------------------------------------------------------- data
def _record_ids(path: str, split: str) -> list[str]:
  src = ShardedSource(path, split)
  return [example.decode(src[i])["record_id"] for i in range(len(src))]


def _map(task, names: list[str], x, y, ids) -> tuple[Any, np.ndarray, list | None, dict]:
  """Applies keep / classes / class_index filtering to one split."""
  names_idx = {n: i for i, n in enumerate(names)}
  ok = np.ones(x.shape[0], bool)
  if len(task.keep):
    cols = [names_idx[k] for k in task.keep if k in names_idx]
    ok &= (y[:, cols] > 0).any(1) if cols else False
  ym = label_maps.map_labels(y, names, [tuple(c) for c in task.classes], tuple(task.exclusive),
                            allow_empty=task.split == "external")
  dropped = {"not in keep": int((~ok).sum())}
  if task.encoding == "class_index":
    one = ym.sum(1) == 1
    dropped["not exactly one class"] = int((ok & ~one).sum())
    ok &= one
  return x[ok], ym[ok], None if ids is None else [i for i, k in zip(ids, ok) if k], dropped


def task_data(name: str, config, enc, embedder, cache_dir: str, memo: dict
              ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any], list | None]:
  """({'train'|'val'|'test': (x, y)}, split report, test record ids or None); memoised."""
  key = (name, id(enc))
  if key in memo:
    return memo[key]
  t = config.tasks[name]
  path = _data_path(config, t)
  spec = spec_lib.load(path)
  names = list(spec["label_names"])
  present = [s for s in ("train", "val", "test") if int((spec.get("splits") or {}).get(s, 0))]
  data_cfg = ml_collections.ConfigDict({"path": path, "skip_corrupt": False})
  want_ids = bool(len(t.groups))
  raw, dropped = {}, {}
  for s in present:
    out = probe_data.embed_split(enc, embedder, data_cfg, s, cache_dir,
                                 int(config.read_threads))
    rid = _record_ids(path, s) if want_ids else None
    if rid is not None and len(rid) != out["x"].shape[0]:
      raise RuntimeError(f"{path} split {s}: {len(rid)} record ids but "
                         f"{out['x'].shape[0]} embeddings")
    raw[s] = _map(t, names, out["x"], out["y"], rid)
    dropped[s] = raw[s][3]
  origin = {}
  if t.split == "external":
    src, _, _ = task_data(t.train_task, config, enc, embedder, cache_dir, memo)
    xs = [raw[s][0] for s in present]
    data = {"train": src["train"], "val": src["val"],
            "test": (np.concatenate(xs), np.concatenate([raw[s][1] for s in present]))}
    test_ids = [i for s in present for i in (raw[s][2] or [])] if want_ids else None
    origin = {"train": f"task {t.train_task!r} train", "val": f"task {t.train_task!r} val",
              "test": f"all records of {path} ({', '.join(present)})"}
  else:
    if "train" not in raw:
      raise TaskConfigError(f"config.tasks.{name}.data: {path} has no 'train' split")
    data = {s: raw[s][:2] for s in raw}
    origin = {s: f"shards split {s!r}" for s in data}
    test_ids = raw["test"][2] if "test" in raw else None
    missing = [s for s in ("val", "test") if s not in data]
    if missing:
      x, y = data["train"]
      fractions = tuple(float(config.holdout[("val", "test").index(s)]) for s in missing)
      *held, rest = probe_data.stratified_holdout(y, fractions, int(config.seed))
      for s, idx, f in zip(missing, held, fractions):
        data[s] = (x[idx], y[idx])
        origin[s] = f"stratified {100 * f:g}% of train (seed {int(config.seed)})"
        if s == "test" and want_ids:
          test_ids = [raw["train"][2][i] for i in idx]
      data["train"] = (x[rest], y[rest])
  classes = [c[0] for c in t.classes]
  report = {"data": storage.abspath(path), "split": t.split, "origin": origin,
            "counts": {s: int(data[s][0].shape[0]) for s in ("train", "val", "test")},
            "class_counts": {s: probe_data.class_counts(data[s][1], classes)
                             for s in ("train", "val", "test")},
            "dropped": dropped, "conversion_rejects": (spec.get("rejects") or {}).get("count")}
  memo[key] = (data, report, test_ids)
  return memo[key]


# ------------------------------------------------------------------------------- metrics
def _bootstrap(stat, n: int, resamples: int, seed: int) -> list[float] | None:
  """95% percentile CI of ``stat(indices)`` over record resamples."""
  if resamples <= 0 or n == 0:
    return None
  rng = np.random.default_rng(seed)
  v = np.asarray([stat(rng.integers(0, n, n)) for _ in range(resamples)], np.float64)
  v = v[np.isfinite(v)]
  return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v.size else None


def se_ppv(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict[str, dict[str, Any]]:
  """Per class sensitivity TP/(TP+FN) and positive predictivity TP/(TP+FP)."""
  y, pred = np.asarray(y) > 0, np.asarray(pred) > 0
  out = {}
  for c, name in enumerate(classes):
    tp = int((y[:, c] & pred[:, c]).sum())
    fn, fp = int((y[:, c] & ~pred[:, c]).sum()), int((~y[:, c] & pred[:, c]).sum())
    out[name] = {"se": probe_metrics.clean(tp / (tp + fn)) if tp + fn else None,
                 "ppv": probe_metrics.clean(tp / (tp + fp)) if tp + fp else None,
                 "tp": tp, "fn": fn, "fp": fp}
  return out


def task_metrics(t, classes: list[str], y: np.ndarray, p: np.ndarray, thr: np.ndarray,
                 row: dict[str, Any], config) -> dict[str, Any]:
  """{metric: {'value', 'ci'} | per-class dict} for the task's metric list."""
  test = row["test"]
  single = t.encoding == "class_index"
  pred = (np.eye(len(classes))[p.argmax(1)] if single else p >= thr[None]) if len(y) else p
  b, seed = int(config.bootstrap), int(config.seed)
  out = {}
  for m in t.metrics:
    if m in ("macro_auroc", "auroc"):
      out[m] = {"value": test["macro_auroc"], "ci": test["macro_auroc_ci"]}
      if m == "auroc" and len(classes) > 1:
        out[m]["per_class"] = {c: test["per_class"][c]["auroc"] for c in classes}
    elif m in ("macro_f1", "f1"):
      if single:  # the field's convention: F1 of the argmax decision.
        inc = [classes.index(c) for c in test["included_classes"]]
        f1 = lambda idx: float(np.nanmean(probe_metrics.f1_counts(  # pylint: disable=g-long-lambda
            y[idx][:, inc], pred[idx][:, inc]))) if inc else float("nan")
        out[m] = {"value": probe_metrics.clean(f1(np.arange(len(y)))),
                  "ci": _bootstrap(f1, len(y), b, seed), "decision": "argmax"}
      else:
        out[m] = {"value": test["macro_f1"], "ci": test["macro_f1_ci"],
                  "decision": "per-class threshold chosen on val"}
    elif m == "accuracy":
      acc = lambda idx: float((p[idx].argmax(1) == y[idx].argmax(1)).mean())
      out[m] = {"value": probe_metrics.clean(acc(np.arange(len(y)))) if len(y) else None,
                "ci": _bootstrap(acc, len(y), b, seed)}
    elif m == "se_ppv":
      out[m] = se_ppv(y, pred, classes)
  return out


def group_metrics(t, classes, y, p, thr, ids, config) -> dict[str, Any]:
  """Headline AUROC / F1 per record-id-prefix group (e.g. per external source)."""
  out = {}
  for gname, prefix in t.groups:
    idx = np.asarray([i for i, r in enumerate(ids) if r.startswith(prefix)], np.int64)
    if idx.size == 0:
      out[gname] = {"records": 0}
      continue
    ev = probe_metrics.evaluate(y[idx], p[idx], thr, classes)
    inc = [classes.index(c) for c in ev["included_classes"]]
    ci = probe_metrics.bootstrap(y[idx], p[idx], thr, inc, int(config.bootstrap),
                                 int(config.seed))
    out[gname] = {"records": int(idx.size), "macro_auroc": ev["macro_auroc"],
                  "macro_auroc_ci": ci["macro_auroc_ci"], "macro_f1": ev["macro_f1"],
                  "included_classes": ev["included_classes"],
                  "per_class_auroc": {c: ev["per_class"][c]["auroc"] for c in classes}}
  return out


def evaluate_task(name: str, config, enc, embedder, cache_dir: str, memo: dict
                  ) -> dict[str, Any]:
  t = config.tasks[name]
  data, report, ids = task_data(name, config, enc, embedder, cache_dir, memo)
  classes = [c[0] for c in t.classes]
  yte = data["test"][1]

  def extra(row, pte, thr):
    row["metrics"] = task_metrics(t, classes, yte, pte, thr, row, config)
    if len(t.groups) and ids is not None:
      row["groups"] = group_metrics(t, classes, yte, pte, thr, ids, config)

  rows, _ = probe.fit_and_evaluate(data, classes, t.encoding == "multi_hot", config, extra)
  return {"splits": report, "results": rows}


# ------------------------------------------------------------------------------------ job
def run(config: ml_collections.ConfigDict, workdir: str | None) -> dict[str, Any]:
  """The task-suite job (main.py, config.job == 'tasks')."""
  names = validate(config, workdir)
  storage.makedirs(workdir)
  cache_dir = config.cache_dir or storage.join(workdir, "embeddings")
  start = time.time()
  encoders = load_encoders(config)
  steps = [(n, e) for n in names for e in range(len(encoders))]
  results: dict[str, Any] = {n: {"definition": config.tasks[n].to_dict(), "encoders": {}}
                             for n in names}
  memo: dict = {}
  done_s = []
  for k, (n, e) in enumerate(steps):
    ename, enc, embedder = encoders[e]
    logging.info("[%d/%d] task %s, encoder %s ...", k + 1, len(steps), n, ename)
    t0 = time.time()
    out = evaluate_task(n, config, enc, embedder, cache_dir, memo)
    results[n]["encoders"][ename] = out["results"]
    results[n]["splits"] = out["splits"]
    done_s.append(time.time() - t0)
    head = config.tasks[n].metrics[0]
    value = out["results"][-1]["metrics"][head]["value"]
    eta = np.mean(done_s) * (len(steps) - k - 1)
    logging.info("[%d/%d] task %s, encoder %s: %s %s at fraction %g (%.0fs); ETA %dm%02ds",
                 k + 1, len(steps), n, ename, head,
                 "n/a" if value is None else f"{value:.3f}",
                 out["results"][-1]["label_fraction"], done_s[-1], eta // 60, eta % 60)
  summary = {
      "version": RESULTS_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "encoders": {n: {"kind": enc.kind, "source": enc.meta.get("source"),
                       "step": enc.meta.get("step"), "model_size": enc.meta.get("model_size"),
                       "window": {"leads": list(enc.window.leads),
                                  "sampling_rate": enc.window.sampling_rate,
                                  "window_samples": enc.window.window_samples,
                                  "pre_r_s": enc.window.pre_r_s,
                                  "normalize": enc.window.normalize}}
                   for n, enc, _ in encoders},
      "probe": {"label_fractions": [float(f) for f in config.label_fractions],
                "l2_grid": [float(l) for l in config.l2_grid], "max_iter": int(config.max_iter),
                "bootstrap": int(config.bootstrap), "seed": int(config.seed),
                "selection": "L2 by val macro AUROC, thresholds by val max F1"},
      "tasks": results,
      "seconds": round(time.time() - start, 1),
  }
  if jax.process_index() == 0:
    task_report.write(workdir, summary)
    print(task_report.markdown(summary), flush=True)
  return summary
