"""MAE-only: the HL code with lambda = 0 (no contrastive term, no projection-head work)."""
from configs import common


def get_config(arg: str | None = None):
  c = common.base(arg)
  c.objective = "mae"
  c.loss.mae_weight = 1.0
  c.loss.contrastive_weight = 0.0
  return c
