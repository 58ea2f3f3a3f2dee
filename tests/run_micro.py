"""Subprocess entry for resume tests: train the micro config, then export."""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ecgjax import train  # noqa: E402
from ecgjax.inference import export  # noqa: E402
from tests.conftest import micro_config  # noqa: E402

if __name__ == "__main__":
  logging.basicConfig(level=logging.INFO)
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--data", required=True)
  p.add_argument("--steps", type=int, default=8)
  a = p.parse_args()
  cfg = micro_config(a.data)
  cfg.total_steps = a.steps
  train.train_and_evaluate(cfg, a.workdir)
  model, tcfg, step = export.restore_model(a.workdir)
  export.write(os.path.join(a.workdir, "export"), model, export.export_config(tcfg, step, a.workdir, "trained"))
