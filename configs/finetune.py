"""Fine-tune a pretrained encoder + linear head end to end (layer-wise lr decay, early stop).

  python main.py --config=configs/finetune.py --config.pretrained=RUN_OR_EXPORT_DIR \
      --config.data.path=SHARDS_DIR --workdir=DIR
"""
import ml_collections


def get_config(arg: str | None = None):
  del arg
  c = ml_collections.ConfigDict()
  c.job = "finetune"
  c.pretrained = ""      # training workdir | export dir | 'random' (needs random_like)
  c.random_like = ""
  c.seed = 0
  c.batch_size = 32
  c.eval_every = 50
  c.patience = 4         # evaluations without val-AUROC gain before stopping
  c.bootstrap = 1000
  c.plots = True
  c.data = ml_collections.ConfigDict({"path": "", "stretch": (0.95, 1.05), "num_workers": 0,
                                      "read_threads": 2, "skip_corrupt": False})
  c.splits = ml_collections.ConfigDict({"train": "train", "val": "val", "test": "test"})
  c.optim = ml_collections.ConfigDict({"lr": 3e-4, "layer_decay": 0.75, "warmup_steps": 20,
                                       "total_steps": 500, "weight_decay": 0.05})
  return c
