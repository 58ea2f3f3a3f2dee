r"""Linear probe of a frozen encoder on any converted dataset (labels/splits from spec.json).

  python main.py --config=configs/probe.py --config.pretrained=RUN_OR_EXPORT_DIR \
      --config.data.path=SHARDS_DIR --workdir=DIR
  python main.py --config=configs/probe.py --config.pretrained=random \
      --config.random_like=RUN_OR_EXPORT_DIR --config.data.path=SHARDS_DIR --workdir=DIR
  python main.py --config=configs/probe.py:demo --config.pretrained=random ...  # demo arch

The arg (a model size and/or 'demo', as for the pretraining configs) only sets the
architecture of a random encoder given without ``random_like``.
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None):
  arch = common.base(arg)
  c = ml_collections.ConfigDict()
  c.job = "probe"
  c.pretrained = ""     # training workdir (latest checkpoint) | export dir | 'random'
  c.random_like = ""    # pretrained='random': copy this run's / export's architecture
  c.step = -1           # training workdir: checkpoint step (-1 = latest)
  c.seed = 0            # label-fraction subsets, held-out splits, bootstrap, random init

  c.data = ml_collections.ConfigDict()
  c.data.path = ""              # converted shard dir (spec.json gives labels and splits)
  c.data.skip_corrupt = False
  c.data.read_threads = 4
  # Split names in the shards; a missing val/test is carved out of train (stratified, seed).
  c.splits = ml_collections.ConfigDict({"train": "train", "val": "val", "test": "test"})
  c.holdout = (0.1, 0.1)        # (val, test) fractions of train when the shards lack them

  c.label_fractions = (0.01, 0.1, 1.0)
  c.l2_grid = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # x |W|^2 / 2 on a mean loss
  c.max_iter = 500              # L-BFGS iterations (stops earlier at |grad| < tol)
  c.tol = 1e-5
  c.bootstrap = 1000            # test resamples for the 95% CIs (0 = none)
  c.batch_size = 256            # embedding batch (rounded up to the device count)
  c.cache_dir = ""              # '' = WORKDIR/embeddings
  c.plots = True

  # Architecture of pretrained='random' without random_like: the pretraining config's.
  c.arch = ml_collections.ConfigDict()
  c.arch.model_size = arch.model_size
  c.arch.model = arch.model
  c.arch.patch_ms = arch.patch_ms
  c.arch.window = ml_collections.ConfigDict({
      "leads": list(arch.data.leads), "sampling_rate": arch.data.sampling_rate,
      "window_s": arch.data.window_s, "pre_r_s": arch.data.pre_r_s,
      "normalize": arch.data.normalize})
  return c
