"""SimCLR-only: the HL code with no reconstruction term (masking acts as augmentation).

Masking is only an augmentation here, so it hides half the tokens (``mask_ratio`` 0.5, as
``hybrid.objective_config("simclr")``) rather than HL's 75%: a lighter mask keeps enough of
each view for the pooled token to match its pair.
"""
from configs import common


def get_config(arg: str | None = None):
  c = common.base(arg)
  c.objective = "simclr"
  c.loss.mae_weight = 0.0
  c.loss.contrastive_weight = 1.0
  c.loss.mask_ratio = 0.5
  return c
