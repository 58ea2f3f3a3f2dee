r"""Which choices make the MAE term of HL learn: short HL runs, held-out MAE per variant.

  python benchmarks/mae_ablation.py --variants=base,clean_target --seeds=0
  python benchmarks/mae_ablation.py --report      # table + figure from the runs so far

Each variant is ``configs/hl.py:demo`` on the PTB-XL subset (train folds only; see
--data) with a few config overrides (``VARIANTS``). Every run logs ``val_mae`` on the val
folds (``ecgjax.validation``: fixed windows and masks, clean views, per-patch normalised
targets; 1.0 = predicting each patch's mean) and the cross-lead linear baseline
(``benchmarks/linear_baseline.py``) is scored on the same windows and masks. Results are
merged into benchmarks/results/mae_ablation_<name>.json run by run, so variants can be
run in separate invocations; --report writes the .md table and the curve figure.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import ssl_compare  # pylint: disable=wrong-import-position

ROOT = ssl_compare.ROOT

# name -> (config overrides as dotted keys, what it tests).
VARIANTS: dict[str, tuple[dict, str]] = {
    "base": ({}, "configs/hl.py:demo as it was (lr 1e-3, 200 ms patches)"),
    "clean_target": ({"loss.target": "clean"}, "MAE targets from the view before augmentation"),
    "norm_floor": ({"loss.norm_eps": 0.01}, "variance floor 0.01 (std 0.1) on target patches"),
    "zero_init": ({"model.decoder_zero_init": True}, "zero-initialised decoder output"),
    "sincos": ({"model.pos_embed": "sincos"}, "fixed sin-cos positions (same instant aligned "
               "across leads from step 0)"),
    "patch300": ({"patch_ms": 300.0}, "300 ms patches (ST-MEM)"),
    "patch100": ({"patch_ms": 100.0}, "100 ms patches (base config)"),
    "leadwise": ({"model.decoder_leadwise": True}, "lead-wise decoder (ST-MEM)"),
    "lr3e-3": ({"optim.lr": 3e-3}, "learning rate 3e-3"),
    "embed_std1": ({"model.embed_std": 1.0}, "lead/time embeddings initialised at std 1 "
                   "(as large as a patch token) instead of 0.02"),
    "embed_std0.2": ({"model.embed_std": 0.2}, "lead/time embeddings initialised at std 0.2"),
    "no_contrastive": ({"loss.contrastive_weight": 0.0}, "MAE term alone (does NT-Xent slow "
                       "the reconstruction?)"),
    "time_local": ({"model.decoder_time_local": 1}, "first decoder block attends across "
                   "leads at the same instant only (axial)"),
    "time_local2": ({"model.decoder_time_local": 2}, "both decoder blocks same-instant only"),
    "lr1e-2": ({"optim.lr": 1e-2}, "learning rate 1e-2"),
    "warmup10": ({"optim.warmup_steps": 10}, "warm-up 10 steps instead of 40"),
}


def parse_combo(name: str) -> dict:
  """'a+b' -> the union of variants a and b's overrides."""
  out = {}
  for part in name.split("+"):
    if part not in VARIANTS:
      raise SystemExit(f"unknown variant {part!r}; choose from {sorted(VARIANTS)} (join with +)")
    out.update(VARIANTS[part][0])
  return out


def set_dotted(cfg, key: str, value) -> None:
  *path, leaf = key.split(".")
  node = cfg
  for p in path:
    node = node[p]
  node[leaf] = value


def run_config(variant: str, seed: int, a: argparse.Namespace):
  from configs import hl  # pylint: disable=g-import-not-at-top
  cfg = hl.get_config("demo")
  cfg.data.path = a.data
  cfg.total_steps = a.steps
  cfg.global_batch = a.batch
  cfg.data.window_s = a.window_s
  cfg.log_every = a.eval_every // 2 or 1
  cfg.eval_every = a.eval_every
  cfg.eval_batches = a.eval_batches
  cfg.checkpoint_every = a.steps
  cfg.plot_every = a.steps
  cfg.probe_at_end = False
  cfg.seed = seed
  for k, v in parse_combo(variant).items():
    set_dotted(cfg, k, v)
  return cfg


def results_path(name: str) -> str:
  return os.path.join(ROOT, "benchmarks", "results", f"mae_ablation_{name}.json")


def load(name: str) -> dict:
  path = results_path(name)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {"runs": {}, "baselines": {}}


def save(name: str, res: dict) -> None:
  os.makedirs(os.path.dirname(results_path(name)), exist_ok=True)
  with open(results_path(name), "w") as f:
    json.dump(res, f, indent=1)


def geometry(cfg) -> str:
  return f"{cfg.data.sampling_rate:g}Hz_{cfg.data.window_s:g}s_{cfg.patch_ms:g}ms"


def run_one(variant: str, seed: int, a: argparse.Namespace, res: dict) -> None:
  from ecgjax import train  # pylint: disable=g-import-not-at-top
  from ecgjax import plots  # pylint: disable=g-import-not-at-top
  cfg = run_config(variant, seed, a)
  geo = geometry(cfg)
  if geo not in res["baselines"]:
    from benchmarks import linear_baseline  # pylint: disable=g-import-not-at-top
    t0 = time.time()
    res["baselines"][geo] = linear_baseline.run(cfg, train.window_config(cfg))
    res["baselines"][geo]["seconds"] = round(time.time() - t0, 1)
    save(a.name, res)
  workdir = os.path.join(a.workdir, f"{variant}_s{seed}")
  t0 = time.time()
  final = train.train_and_evaluate(cfg, workdir)
  rows = plots.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  curve = [(r["step"], r["val_mae"]) for r in rows if "val_mae" in r]
  train_mae = [(r["step"], r["mae"]) for r in rows if "mae" in r]
  res["runs"][f"{variant}/s{seed}"] = {
      "variant": variant, "seed": seed, "overrides": parse_combo(variant), "geometry": geo,
      "seconds": round(time.time() - t0, 1), "steps": a.steps, "batch": a.batch,
      "final_val_mae": final.get("val_mae"), "final_val_nt_xent": final.get("val_nt_xent"),
      "final_train_mae": final.get("mae"), "val_mae_curve": curve, "train_mae_curve": train_mae,
      "step_time_s": final.get("step_time_s"), "command": a.command,
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes")}
  save(a.name, res)


def report(name: str) -> str:
  """Writes mae_ablation_<name>.md and .png from the json; returns the markdown."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  res = load(name)
  by_variant: dict[str, list[dict]] = {}
  for r in res["runs"].values():
    by_variant.setdefault(r["variant"], []).append(r)
  base = os.path.splitext(results_path(name))[0]
  md = [f"# MAE ablation on {name}", "",
        "Held-out-record MAE (`val_mae`: val folds, fixed windows and masks, clean views, "
        "per-patch normalised targets; 1.0 = predicting each patch's mean; lower is better) "
        "after short HL pretraining runs (`configs/hl.py:demo` + overrides, train folds "
        "only). The cross-lead linear baseline is scored on the same windows and masks.", "",
        "Data: the PTB-XL subset in ../shared/data/ptbxl (1,987 records, 100 Hz), converted "
        "with `python -m data_pipelines.convert --format=ptbxl --input=../shared/data/ptbxl "
        "--labels=../shared/data/ptbxl/ptbxl_labels.csv --output=SHARDS --num_shards=8`; "
        "pretraining reads the train folds (1,490 records), val_mae the val fold (242 records; "
        "`eval_batches` x batch fixed windows).", "",
        "| variant | overrides | seeds | steps | val_mae at each eval | final val_mae "
        "(mean ± sd) | final val NT-Xent | linear baseline (model space / mV) | s/run |",
        "|---|---|---|---|---|---|---|---|---|"]
  for v, runs in sorted(by_variant.items(), key=lambda kv: np.mean(
      [r["final_val_mae"] for r in kv[1]])):
    vals = np.asarray([r["final_val_mae"] for r in runs])
    sd = f" ± {vals.std(ddof=1):.3f}" if len(vals) > 1 else " (1 seed)"
    bl = res["baselines"].get(runs[0]["geometry"], {})
    over = ", ".join(f"{k}={v2}" for k, v2 in runs[0]["overrides"].items()) or "-"
    curve = " → ".join(f"{m:.3f}" for _, m in runs[0]["val_mae_curve"])
    md.append(f"| {v} | {over} | {','.join(str(r['seed']) for r in runs)} | {runs[0]['steps']}"
              f"{' (killed)' if runs[0].get('stopped_early') else ''} | "
              f"{curve} | {vals.mean():.3f}{sd} | "
              f"{np.mean([r['final_val_nt_xent'] or np.nan for r in runs]):.3f} | "
              f"{bl.get('model', {}).get('mae', float('nan')):.3f} / "
              f"{bl.get('mV', {}).get('mae', float('nan')):.3f} | "
              f"{_seconds(runs)} |")
  any_run = next(iter(res["runs"].values()), None)
  if any_run:
    md += ["", f"Setup: {any_run['geometry'].rsplit('_', 1)[0].replace('_', ', ')} windows "
           f"(patch length per variant), batch {any_run['batch']}, tiny model, fp32, "
           "2 shared CPU cores (s/run includes compiles and 5-15 other processes on the same "
           "cores, so it is not a speed measurement). Curves: "
           f"`{os.path.basename(base)}.png`."]
  cmds = sorted({r["command"] for r in res["runs"].values()})
  md += ["", "Commands:", ""] + [f"- `{c}`" for c in cmds]
  with open(base + ".md", "w") as f:
    f.write("\n".join(md) + "\n")
  _curve_figure(base + ".png", res)
  return "\n".join(md)


def _seconds(runs: list[dict]) -> str:
  secs = [r["seconds"] for r in runs if r.get("seconds") is not None]
  return f"{sum(secs) / len(secs):.0f}" if secs else "-"


def _curve_figure(path: str, res: dict) -> None:
  from ecgjax import plots  # pylint: disable=g-import-not-at-top
  plt = plots.plt
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for key, r in sorted(res["runs"].items()):
    if r["val_mae_curve"]:
      ax.plot(*zip(*r["val_mae_curve"]), "o-", ms=3, lw=1, label=key)
  for geo, bl in res["baselines"].items():
    ax.axhline(bl["model"]["mae"], ls="--", lw=1, color="tab:red")
    ax.text(0.99, bl["model"]["mae"], f"cross-lead linear, {geo}", fontsize=6, color="tab:red",
            va="bottom", ha="right", transform=ax.get_yaxis_transform())
  ax.axhline(1.0, color="0.6", ls=":", lw=1)
  ax.set_xlabel("step")
  ax.set_ylabel("val_mae (held-out records)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, ncol=2)
  plots._save(fig, path, dpi=100)  # pylint: disable=protected-access


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default="/tmp/ecgjax_ptbxl_shards")
  p.add_argument("--name", default="ptbxl_subset")
  p.add_argument("--workdir", default="runs/mae_ablation")
  p.add_argument("--variants", default="base", help="comma list; join variants with +")
  p.add_argument("--seeds", default="0")
  p.add_argument("--steps", type=int, default=150)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--window_s", type=float, default=2.4,
                 help="a multiple of every patch length compared (100/200/300 ms)")
  p.add_argument("--eval_every", type=int, default=50)
  p.add_argument("--eval_batches", type=int, default=2)
  p.add_argument("--report", action="store_true", help="only write the table and figure")
  a = p.parse_args()
  a.command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
  if not a.report:
    if a.data == "/tmp/ecgjax_ptbxl_shards":
      ssl_compare.ensure_ptbxl(a.data)
    res = load(a.name)
    for variant in a.variants.split(","):
      for seed in (int(s) for s in a.seeds.split(",")):
        run_one(variant, seed, a, res)
  print(report(a.name))


if __name__ == "__main__":
  main()
