r"""HL vs MAE-only vs SimCLR-only vs random init vs hand-crafted features, by linear probe.

  python benchmarks/ssl_compare.py                                  # PTB-XL subset, 3 seeds
  python benchmarks/ssl_compare.py --seeds=0,1,2 --draws=5 --steps=300
  python benchmarks/ssl_compare.py --pretrain_data=/data/ptbxl:0.8,/data/mitbih_ds1:0.2
  python benchmarks/ssl_compare.py --steps=2000 --size=small --batch=128 --bf16   # GPU

Pretrains every objective once per seed at equal steps, batch and data (the seed sets the
init, data order and augmentation keys), embeds the probe shards' train/val/test splits
with each frozen encoder, a random init per seed and the hand-crafted baseline, and fits
the same L2 logistic-regression probe per label fraction and label-subset draw (val picks
L2 and thresholds; test reports). Differences to HL get paired bootstrap CIs on shared
test resamples (metrics.paired_bootstrap_difference). Writes
OUT_DIR/ssl_compare_<name>.{json,md}; ssl_compare_report.py formats them.
"""
from __future__ import annotations

import argparse
import ast
import datetime
import importlib
import json
import math
import os
import shlex
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import ssl_compare_report as report  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTBXL = os.path.join(ROOT, "..", "shared", "data", "ptbxl")
DEFAULT_DATA = "/tmp/ecgjax_ptbxl_shards"
# Decades 1e-7 .. 1e5 (x |W|^2 / 2 on a mean loss). 1e-5 .. 1e3 was too narrow: in the
# 3-seed run, 19 of 84 pretrained/random probes (mostly 1% labels) chose 1e3 while still
# improving on val, and 3 chose 1e-5.
L2_GRID = "1e-7,1e-6,1e-5,1e-4,1e-3,1e-2,1e-1,1,10,100,1e3,1e4,1e5"
SPLITS = ("train", "val", "test")


def ensure_ptbxl(out: str) -> str:
  """Converts the shared PTB-XL subset once to ``out`` (train/val/test from strat_fold)."""
  if os.path.exists(os.path.join(out, "spec.json")):
    return out
  from data_pipelines import convert  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(PTBXL):
    raise SystemExit(f"{PTBXL} not found: pass --data=SHARDS or provide ../shared/data")
  convert.convert(convert.build_parser().parse_args([
      "--format=ptbxl", f"--input={PTBXL}", f"--labels={PTBXL}/ptbxl_labels.csv",
      f"--output={out}", "--num_shards=8", "--workers=2", "--quiet"]))
  return out


def floats(s: str) -> list[float]:
  return [float(v) for v in s.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=DEFAULT_DATA, help="probe shards (train/val/test splits)")
  p.add_argument("--pretrain_data", default="",
                 help="pretraining config.data.path: a shard dir or a mixture "
                      "'PATH[:W],PATH[:W]' (passed through unchanged); '' = --data")
  p.add_argument("--name", default="ptbxl_subset")
  p.add_argument("--workdir", default="runs/ssl_compare")
  p.add_argument("--out_dir", default=os.path.join(ROOT, "benchmarks", "results"))
  p.add_argument("--objectives", default="hl,mae,simclr",
                 help="first one is A in A - B; OBJ@KEY=VALUE;KEY=VALUE is a variant with "
                      "config overrides (e.g. hl@data.normalize=record_joint)")
  p.add_argument("--class_diffs", default="",
                 help="label names whose own AUROC difference is also bootstrapped (e.g. HYP)")
  p.add_argument("--baselines", default="random,handcrafted")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--size", default="tiny")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--rate", type=float, default=100.0)
  p.add_argument("--window_s", type=float, default=4.0)
  p.add_argument("--patch_ms", type=float, default=200.0)
  p.add_argument("--workers", type=int, default=0)
  p.add_argument("--fractions", default="0.01,0.1,1.0")
  p.add_argument("--draws", type=int, default=5, help="label-subset draws at --draws_at")
  p.add_argument("--draws_at", default="0.01")
  p.add_argument("--l2_grid", default=L2_GRID)
  p.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples")
  p.add_argument("--bootstrap_seed", type=int, default=0)
  p.add_argument("--cpu", action="store_true", default=True, help="float32 compute (CPU)")
  p.add_argument("--bf16", dest="cpu", action="store_false", help="bf16 compute (GPU/TPU)")
  return p


# --------------------------------------------------------------------------- pretraining
def parse_objective(name: str) -> tuple[str, dict[str, Any]]:
  """'hl' or 'hl@data.normalize=record_joint;optim.lr=0.003' -> (config module, overrides).

  A variant is an objective with config overrides, pretrained and probed like the others,
  so one run compares e.g. two normalisations with paired CIs."""
  module, _, rest = name.partition("@")
  overrides = {}
  for item in filter(None, rest.split(";")):
    key, eq, value = item.partition("=")
    if not eq:
      raise SystemExit(f"--objectives: {item!r} in {name!r} is not KEY=VALUE")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return module, overrides


def pretrain_config(objective: str, seed: int, a: argparse.Namespace):
  module, overrides = parse_objective(objective)
  cfg = importlib.import_module(f"configs.{module}").get_config(a.size)
  cfg.data.path = a.pretrain_data or a.data
  cfg.total_steps = a.steps
  cfg.global_batch = a.batch
  cfg.log_every = max(1, a.steps // 20)
  cfg.checkpoint_every = a.steps
  cfg.plot_every = a.steps
  cfg.data.sampling_rate = a.rate
  cfg.data.window_s = a.window_s
  cfg.patch_ms = a.patch_ms
  cfg.data.num_workers = a.workers
  cfg.optim.lr = a.lr
  cfg.optim.warmup_steps = max(1, a.steps // 20)
  if a.cpu:
    cfg.model.dtype = "float32"
  cfg.seed = seed
  for key, value in overrides.items():
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
      node = node[part]
    if leaf not in node:
      raise SystemExit(f"--objectives: {objective!r}: config has no {key!r}")
    node[leaf] = value
  return cfg


def pretrain_all(a: argparse.Namespace, objectives: list[str], seeds: list[int]
                 ) -> dict[tuple[str, int], dict[str, Any]]:
  """{(objective, seed): {'run_dir', 'loss', 'seconds'}}; a finished run only resumes."""
  from ecgjax import train  # pylint: disable=g-import-not-at-top
  out = {}
  for seed in seeds:
    for objective in objectives:
      run_dir = os.path.join(a.workdir, f"{objective}_s{seed}")
      t0 = time.time()
      final = train.train_and_evaluate(pretrain_config(objective, seed, a), run_dir) or {}
      out[(objective, seed)] = {"run_dir": run_dir, "loss": final.get("loss"),
                                "seconds": round(time.time() - t0, 1)}
  return out


# ------------------------------------------------------------------------------ encoders
def load_encoders(a: argparse.Namespace, runs: dict[tuple[str, int], dict[str, Any]],
                  objectives: list[str], seeds: list[int]) -> list[tuple[str, int | None, Any, Any]]:
  """[(encoder name, seed or None, Encoder, embedder)]: pretrained, random, hand-crafted."""
  from ecgjax.evaluation import handcrafted  # pylint: disable=g-import-not-at-top
  from ecgjax.inference import encoder as encoder_lib  # pylint: disable=g-import-not-at-top
  baselines = [b for b in a.baselines.split(",") if b]
  unknown = set(baselines) - {"random", "handcrafted"}
  if unknown:
    raise SystemExit(f"--baselines: unknown {sorted(unknown)} (known: random, handcrafted)")
  out = []
  for seed in seeds:
    for objective in objectives:
      enc = encoder_lib.load(runs[(objective, seed)]["run_dir"])
      out.append((objective, seed, enc, encoder_lib.BatchEmbedder(enc.model, 256)))
    if "random" in baselines:
      enc = encoder_lib.load("random", random_like=runs[(objectives[0], seed)]["run_dir"],
                             seed=seed)
      out.append(("random_init", seed, enc, encoder_lib.BatchEmbedder(enc.model, 256)))
  if "handcrafted" in baselines:
    enc = handcrafted.make_encoder(out[0][2].meta)
    out.append(("handcrafted", None, enc, handcrafted.Embedder(256)))
  return out


def embed_splits(enc, embedder, probe_cfg, cache_dir: str
                 ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], float]:
  """{split: (x, y)} of the probe shards' own splits (cached), and the seconds spent."""
  from ecgjax.evaluation import embeddings  # pylint: disable=g-import-not-at-top
  data, seconds = {}, 0.0
  for split in SPLITS:
    out = embeddings.embed_split(enc, embedder, probe_cfg.data, split, cache_dir, 2)
    data[split] = (np.asarray(out["x"]), np.asarray(out["y"]))
    seconds += out["seconds"]
  return data, seconds


# --------------------------------------------------------------------------------- probes
def probe_config(a: argparse.Namespace):
  cfg = importlib.import_module("configs.probe").get_config(a.size)
  cfg.data.path = a.data
  cfg.data.read_threads = 2
  cfg.l2_grid = tuple(floats(a.l2_grid))
  cfg.bootstrap = 0  # per-encoder CIs are replaced by the paired ones.
  return cfg


def draws_for(fraction: float, a: argparse.Namespace) -> int:
  at = floats(a.draws_at)
  return a.draws if fraction < 1.0 and any(math.isclose(fraction, f) for f in at) else 1


def probe_encoder(name: str, seed: int | None, data, labels: list[str], multilabel: bool,
                  probe_cfg, a: argparse.Namespace) -> tuple[list[dict[str, Any]], dict]:
  """One run per (fraction, draw); draw d uses label-subset seed d for every encoder.

  Returns (runs, {(fraction, draw): test probabilities [N, C]}).
  """
  from ecgjax.evaluation import probe  # pylint: disable=g-import-not-at-top
  runs, preds = [], {}
  for fraction in floats(a.fractions):
    for draw in range(draws_for(fraction, a)):
      cfg = probe_cfg.copy_and_resolve_references()
      cfg.label_fractions, cfg.seed = (fraction,), draw
      rows, roc = probe.fit_and_evaluate(data, labels, multilabel, cfg)
      row = rows[0]
      runs.append({"encoder": name, "seed": seed, "fraction": fraction, "draw": draw,
                   "auroc": row["test"]["macro_auroc"], "f1": row["test"]["macro_f1"],
                   "val_auroc": row["val"]["macro_auroc"], "l2": row["l2"],
                   "l2_at_edge": row["l2_at_edge"],
                   "val_auroc_by_l2": row["val_macro_auroc_by_l2"],
                   "num_train": row["num_train"], "converged": row["converged"],
                   **{f"auroc_{c}": row["test"]["per_class"][c]["auroc"]
                      for c in class_names(a, labels)}})
      preds[(fraction, draw)] = roc["p"]
  return runs, preds


def class_names(a: argparse.Namespace, labels: list[str]) -> list[str]:
  """--class_diffs as label names (checked against the probe data's labels)."""
  names = [c for c in (getattr(a, "class_diffs", "") or "").split(",") if c]
  unknown = sorted(set(names) - set(labels))
  if unknown:
    raise SystemExit(f"--class_diffs: {unknown} not in the probe labels {labels}")
  return names


def paired_differences(y_test: np.ndarray, preds: dict[str, list[tuple[float, np.ndarray]]],
                       runs: list[dict[str, Any]], a_name: str, others: list[str],
                       fractions: list[float], a: argparse.Namespace,
                       labels: list[str] | None = None) -> list[dict[str, Any]]:
  """A - B for each other encoder and fraction, on shared resamples of the test records:
  macro AUROC, then the AUROC of each --class_diffs class on the same resamples."""
  from ecgjax.evaluation import metrics  # pylint: disable=g-import-not-at-top
  y = y_test > 0
  classes = [c for c in range(y.shape[1]) if 0 < y[:, c].sum() < y.shape[0]]
  scopes = [("macro", classes, "auroc")] + [
      (c, [labels.index(c)], f"auroc_{c}") for c in class_names(a, labels or [])]
  out = []
  for scope, cls, key in scopes:
    for b_name in others:
      for f in fractions:
        pa = [p for frac, p in preds[a_name] if frac == f]
        pb = [p for frac, p in preds[b_name] if frac == f]
        d = metrics.paired_bootstrap_difference(y, pa, pb, cls, a.resamples, a.bootstrap_seed)
        d.pop("resampled")
        sel = lambda e: [r for r in runs if r["encoder"] == e and r["fraction"] == f]  # pylint: disable=cell-var-from-loop
        d.update(a=a_name, b=b_name, fraction=f, runs_a=len(pa), runs_b=len(pb), scope=scope,
                 per_seed=report.per_seed_differences(sel(a_name), sel(b_name), key))
        out.append(d)
  return out


# ----------------------------------------------------------------------------------- main
def main() -> None:
  a = build_parser().parse_args()
  command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
  seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
  objectives = [o for o in a.objectives.split(",") if o]
  fractions = sorted(floats(a.fractions))
  if a.data == DEFAULT_DATA:
    ensure_ptbxl(a.data)
  from ecgjax.data import spec as spec_lib  # pylint: disable=g-import-not-at-top
  spec = spec_lib.load(a.data)
  missing = [s for s in SPLITS if not int((spec.get("splits") or {}).get(s, 0))]
  if missing:
    raise SystemExit(f"--data={a.data}: no {missing} split; the comparison needs the probe "
                     "shards' own train/val/test so every encoder scores the same test records")
  labels, multilabel = list(spec["label_names"]), spec["label_encoding"] == "multi_hot"
  timing: dict[str, Any] = {"start": time.time()}
  pre = pretrain_all(a, objectives, seeds)
  timing["pretrain_s"] = round(time.time() - timing.pop("start"), 1)
  probe_cfg = probe_config(a)
  cache_dir = os.path.join(a.workdir, "embeddings")
  runs, preds, y_test = [], {}, None
  timing["embed_s"], timing["probe_s"] = 0.0, 0.0
  for name, seed, enc, embedder in load_encoders(a, pre, objectives, seeds):
    data, t_embed = embed_splits(enc, embedder, probe_cfg, cache_dir)
    if y_test is not None and not np.array_equal(y_test, data["test"][1]):
      raise RuntimeError(f"{name} (seed {seed}) embedded a different test set: pairing needs "
                         "the same records in the same order for every encoder")
    y_test = data["test"][1]
    t0 = time.time()
    r, p = probe_encoder(name, seed, data, labels, multilabel, probe_cfg, a)
    runs += r
    preds.setdefault(name, []).extend((f, v) for (f, _), v in p.items())
    timing["embed_s"] += t_embed
    timing["probe_s"] += time.time() - t0
  encoders = list(preds)
  diffs = paired_differences(y_test, preds, runs, objectives[0],
                             [e for e in encoders if e != objectives[0]], fractions, a, labels)
  grid = floats(a.l2_grid)
  edges = {e: report.l2_edges([r for r in runs if r["encoder"] == e], grid) for e in encoders}
  meta = {"name": a.name, "date": datetime.date.today().isoformat(), "command": command,
          "seeds": seeds, "steps": a.steps, "batch": a.batch, "size": a.size, "rate": a.rate,
          "window_s": a.window_s, "patch_ms": a.patch_ms,
          "pretrain_data": a.pretrain_data or a.data, "data": a.data,
          "split_counts": {k: int(v) for k, v in spec["splits"].items()},
          "draws": a.draws, "draws_at": floats(a.draws_at), "l2_grid": grid,
          "resamples": a.resamples, "bootstrap_seed": a.bootstrap_seed}
  timing = {k: round(v, 1) for k, v in timing.items()}
  out = {"meta": meta, "args": vars(a), "timing_s": timing,
         "pretraining": [{"objective": o, "seed": s, **v} for (o, s), v in pre.items()],
         "runs": runs, "paired_differences": diffs, "l2_edges": edges}
  os.makedirs(a.out_dir, exist_ok=True)
  base = os.path.join(a.out_dir, f"ssl_compare_{a.name}")
  with open(base + ".json", "w") as f:
    json.dump(out, f, indent=1, default=float)
  md = report.markdown(meta, runs, encoders, fractions, diffs, edges)
  with open(base + ".md", "w") as f:
    f.write(md)
  print(md)
  print("timing (s):", timing, "->", base + ".{json,md}")


if __name__ == "__main__":
  main()
