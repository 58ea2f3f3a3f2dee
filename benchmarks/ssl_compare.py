r"""HL vs MAE-only vs SimCLR-only vs random init, at equal steps and batch, by linear probe.

  python benchmarks/ssl_compare.py                      # PTB-XL subset in ../shared/data
  python benchmarks/ssl_compare.py --steps=2000 --size=small --batch=128   # on a GPU

Pretrains each objective on the same shards (train split), probes each frozen encoder and a
random init of the same architecture on the same shards (val selects L2 and thresholds,
test reports), and writes benchmarks/results/ssl_compare_<name>.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shlex
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTBXL = os.path.join(ROOT, "..", "shared", "data", "ptbxl")


def ensure_ptbxl(out: str) -> str:
  if os.path.exists(os.path.join(out, "spec.json")):
    return out
  from data_pipelines import convert  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(PTBXL):
    raise SystemExit(f"{PTBXL} not found: pass --data=SHARDS or provide ../shared/data")
  convert.convert(convert.build_parser().parse_args([
      "--format=ptbxl", f"--input={PTBXL}", f"--labels={PTBXL}/ptbxl_labels.csv",
      f"--output={out}", "--num_shards=8", "--workers=2", "--quiet"]))
  return out


def pretrain_config(objective: str, a: argparse.Namespace):
  cfg = importlib.import_module(f"configs.{objective}").get_config(a.size)
  cfg.data.path = a.data
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
  cfg.seed = a.seed
  return cfg


def probe_config(pretrained: str, a: argparse.Namespace, random_like: str = ""):
  cfg = importlib.import_module("configs.probe").get_config(a.size)
  cfg.pretrained = pretrained
  cfg.random_like = random_like
  cfg.data.path = a.data
  cfg.label_fractions = tuple(float(f) for f in a.fractions.split(","))
  cfg.seed = a.seed
  return cfg


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default="/tmp/ecgjax_ptbxl_shards")
  p.add_argument("--name", default="ptbxl_subset")
  p.add_argument("--workdir", default="runs/ssl_compare")
  p.add_argument("--objectives", default="hl,mae,simclr")
  p.add_argument("--size", default="tiny")
  p.add_argument("--steps", type=int, default=300)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-3)
  p.add_argument("--rate", type=float, default=100.0)
  p.add_argument("--window_s", type=float, default=4.0)
  p.add_argument("--patch_ms", type=float, default=200.0)
  p.add_argument("--workers", type=int, default=0)
  p.add_argument("--fractions", default="0.01,0.1,1.0")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--cpu", action="store_true", default=True, help="float32 compute (CPU)")
  p.add_argument("--bf16", dest="cpu", action="store_false", help="bf16 compute (GPU/TPU)")
  a = p.parse_args()
  command = "python " + " ".join(shlex.quote(x) for x in sys.argv)
  if a.data == "/tmp/ecgjax_ptbxl_shards":
    ensure_ptbxl(a.data)
  from ecgjax import train  # pylint: disable=g-import-not-at-top
  from ecgjax.evaluation import probe  # pylint: disable=g-import-not-at-top
  rows, runs = [], {}
  for objective in a.objectives.split(","):
    run_dir = os.path.join(a.workdir, objective)
    t0 = time.time()
    final = train.train_and_evaluate(pretrain_config(objective, a), run_dir)
    runs[objective] = run_dir
    res = probe.run(probe_config(run_dir, a), os.path.join(run_dir, "probe"))
    rows.append({"encoder": objective, "pretrain_loss": final.get("loss"),
                 "pretrain_seconds": round(time.time() - t0, 1), "probe": res})
  first = next(iter(runs.values()))
  res = probe.run(probe_config("random", a, random_like=first),
                  os.path.join(a.workdir, "random", "probe"))
  rows.append({"encoder": "random_init", "probe": res})

  def frac_rows(r):
    return {str(float(f["label_fraction"])): f for f in r["probe"]["results"]}

  fracs = [str(float(f)) for f in a.fractions.split(",")]
  md = [f"# SSL comparison on {a.name} ({datetime.date.today().isoformat()})", "",
        f"Command: `{command}`", "",
        f"Equal compute: {a.steps} steps x batch {a.batch}, model {a.size}, {a.rate:g} Hz, "
        f"{a.window_s:g} s windows, {a.patch_ms:g} ms patches. Linear probe on the frozen "
        "encoder; test macro AUROC [95% bootstrap CI] / macro F1 (thresholds from val).", "",
        "| encoder | " + " | ".join(f"{float(f):g} of labels" for f in fracs) + " |",
        "|---|" + "---|" * len(fracs)]
  for r in rows:
    fr = frac_rows(r)
    cells = []
    for f in fracs:
      t = fr.get(f, {}).get("test", {})
      ci = t.get("macro_auroc_ci") or [None, None]
      cells.append(f"{t.get('macro_auroc', float('nan')):.3f} "
                   f"[{(ci[0] or float('nan')):.3f}, {(ci[1] or float('nan')):.3f}] / "
                   f"{t.get('macro_f1', float('nan')):.3f}")
    md.append(f"| {r['encoder']} | " + " | ".join(cells) + " |")
  out = {"date": datetime.date.today().isoformat(), "command": command, "args": vars(a),
         "rows": rows}
  os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
  base = os.path.join(ROOT, "benchmarks", "results", f"ssl_compare_{a.name}")
  with open(base + ".json", "w") as f:
    json.dump(out, f, indent=1, default=float)
  with open(base + ".md", "w") as f:
    f.write("\n".join(md) + "\n")
  print("\n".join(md))


if __name__ == "__main__":
  main()
