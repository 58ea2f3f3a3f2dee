"""Export a training run's encoder (or a random init of it) as safetensors + config.json."""
import ml_collections


def get_config(arg: str | None = None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = "export"
  c.checkpoint = ""   # training workdir
  c.output = ""       # export directory
  c.init = "trained"  # 'trained' | 'random' (same architecture, fresh weights)
  c.step = -1         # -1 = latest
  c.include_heads = False  # True: also the MAE decoder and projection head (encoder only by default).
  return c
