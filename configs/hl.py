"""Hybrid Learning: MAE on both masked views + lambda * NT-Xent between them (the method).

  python main.py --config=configs/hl.py --workdir=DIR            # base
  python main.py --config=configs/hl.py:demo --workdir=DIR       # tiny, synthetic, CPU
"""
from configs import common


def get_config(arg: str | None = None):
  c = common.base(arg)
  c.objective = "hl"
  c.loss.mae_weight = 1.0
  c.loss.contrastive_weight = 0.25
  return c
