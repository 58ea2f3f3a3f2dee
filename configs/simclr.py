"""SimCLR-only: the HL code with no reconstruction term (masking acts as augmentation)."""
from configs import common


def get_config(arg: str | None = None):
  c = common.base(arg)
  c.objective = "simclr"
  c.loss.mae_weight = 0.0
  c.loss.contrastive_weight = 1.0
  return c
