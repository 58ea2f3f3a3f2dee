"""Shared base config for the three pretraining objectives (HL, MAE, SimCLR).

``get_config(arg)`` in hl.py / mae.py / simclr.py calls :func:`base` and changes only the
loss weights, so the three are compared at equal compute. ``arg`` is a comma-separated
list of variants: a model size (tiny, small, base, large) and/or 'demo'
(tiny model, embedded synthetic data, a few CPU minutes).
"""
from __future__ import annotations

import ml_collections

from ecgjax.data.records import STANDARD_LEADS
from ecgjax.models import signal_transformer

SIZES = ("tiny", "small", "base", "large")


def parse_arg(arg: str | None) -> tuple[str, set[str]]:
  tokens = {t.strip() for t in (arg or "").split(",") if t.strip()}
  sizes = tokens & set(SIZES)
  unknown = tokens - set(SIZES) - {"demo"}
  if unknown or len(sizes) > 1:
    raise ValueError(f"config arg {arg!r}: expected at most one of {SIZES} and/or 'demo'")
  size = sizes.pop() if sizes else ("tiny" if "demo" in tokens else "base")
  return size, tokens


def base(arg: str | None = None) -> ml_collections.ConfigDict:
  size, variants = parse_arg(arg)
  c = ml_collections.ConfigDict()
  c.objective = "hl"
  c.seed = 0
  c.total_steps = 100_000
  c.global_batch = 256
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.plot_every = 5000
  c.eval_every = 1000      # val_mae / val_nt_xent on data.eval_split (0 = off).
  c.eval_batches = 4       # fixed global batches per evaluation.
  c.max_bad_steps = 20
  c.probe_at_end = False  # the demo runs the linear probe summary after training.

  # Mesh over (data, fsdp, tensor); -1 = the devices left over.
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  # Logical param axis -> mesh axes (None = replicated). Data-parallel axes hold the batch.
  c.sharding_rules = [
      ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("kv", None),
      ("patch", None), ("leads", None), ("positions", None), ("proj", None),
      ("decoder_embed", "fsdp"), ("decoder_mlp", "tensor"), ("norm", None),
  ]

  c.model_size = size
  c.patch_ms = 100.0       # patch length along time; samples = patch_ms * rate / 1000.
  # The size preset, spelled out so any field can be overridden from the command line
  # (--config.model.depth=8); patch_size/max_patches are derived from data + patch_ms.
  c.model = ml_collections.ConfigDict(dict(signal_transformer.SIZES[size]))
  c.model.remat = "none"
  c.model.pos_embed = "learned"   # 'learned' | 'sincos'
  c.model.decoder_leadwise = False
  c.model.decoder_zero_init = False
  # First k decoder blocks attend across leads at the same instant only: val MAE 0.69 vs
  # 0.95 at step 200 (benchmarks/results/mae_ablation_ptbxl_subset_time_local.md).
  c.model.decoder_time_local = 1
  c.model.embed_std = 0.02        # init std of the learned lead/time embeddings.
  c.model.dtype = "bfloat16"
  # None: cuDNN fused attention on GPUs where it applies, else XLA; or "xla" / "cudnn".
  c.model.attention_impl = ml_collections.FieldReference(None, field_type=str)

  c.data = ml_collections.ConfigDict()
  c.data.path = ""               # converted shard dir; '' = build/use the synthetic default.
                                 # 'DIR:W,DIR:W' or data.mixture: a weighted mixture
                                 # (ecgjax/data/mixture.py); eval reads the first DIR.
  c.data.mixture = ()            # ('DIR[:WEIGHT]', ...) read by pretraining instead of path.
  c.data.train_split = "train"
  c.data.eval_split = "val"
  c.data.leads = list(STANDARD_LEADS)
  c.data.sampling_rate = 250.0   # the model's rate; resampled inside the jitted step.
  c.data.window_s = 5.0          # crop length; R-peak aligned.
  c.data.pre_r_s = 0.25          # a window starts this long before a detected R peak.
  c.data.stretch = (0.9, 1.1)    # time-stretch range (both views independently).
  c.data.normalize = "record"    # 'record' | 'record_joint' | 'dataset' | 'none'
  c.data.num_workers = 0         # grain worker processes (0 = in-process). In-process reads
                                 # 17.5k two-view samples/s on 1 core; 2 workers 9.0k,
                                 # since grain copies each batch into fresh shared memory
                                 # (benchmarks/README.md). Raise it on big hosts if the
                                 # input pipeline shows up as the step's bottleneck.
  c.data.read_threads = 1        # per process; more threads only contend for the GIL.
  c.data.prefetch = 256
  c.data.device_prefetch = 2
  c.data.skip_corrupt = False
  c.data.synthetic = ml_collections.ConfigDict(
      {"num_records": 6000, "seed": 0, "sampling_rate": 500.0, "duration_s": 10.0,
       "num_shards": 8, "dir": ""})   # dir '' = WORKDIR/../synthetic_shards

  c.augment = ml_collections.ConfigDict({
      "noise_std": 0.05, "noise_prob": 0.5,
      "powerline_amplitude": 0.05, "powerline_prob": 0.2,
      "wander_amplitude": 0.2, "wander_prob": 0.5,
      "scale_low": 0.8, "scale_high": 1.25, "scale_prob": 0.5,
      "lead_dropout_rate": 0.2, "lead_dropout_prob": 0.5,
  })

  c.loss = ml_collections.ConfigDict({
      "mask_ratio": 0.75, "span_scales": (1, 2, 4), "whole_lead_prob": 0.1,
      "mae_weight": 1.0, "contrastive_weight": 0.25, "temperature": 0.1,
      "norm_target": True,
      "norm_eps": 1e-6,     # variance floor of the per-patch target normalisation.
      "target": "input",    # 'input' (augmented view) | 'clean' (before augmentation).
  })

  # grad_accum=k splits each global batch into k micro-batches whose gradients are summed:
  # NT-Xent draws its negatives from each micro-batch (global_batch/k samples), not from the
  # whole global batch (tests/test_train.py checks it).
  c.optim = ml_collections.ConfigDict({
      "lr": 1.5e-4 * 256 / 256, "warmup_steps": 2000, "min_lr_ratio": 0.01,
      "weight_decay": 0.05, "b1": 0.9, "b2": 0.95, "clip_norm": 1.0, "grad_accum": 1,
  })

  if "demo" in variants:
    # Sized for a 2-core CPU: ~1 s/step. 100 Hz, 4 s windows, 200 ms patches = 240 tokens.
    c.total_steps = 150
    c.global_batch = 32
    c.log_every = 10
    c.checkpoint_every = 50
    c.plot_every = 75
    c.eval_every = 50
    c.eval_batches = 2
    c.model.dtype = "float32"   # bf16 matmuls are emulated (slow) on CPUs.
    c.patch_ms = 200.0
    c.data.sampling_rate = 100.0
    c.data.window_s = 4.0
    c.data.synthetic.num_records = 1500
    c.data.synthetic.num_shards = 4
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 40
    c.probe_at_end = True     # export + linear probe (pretrained vs random) at the end.
  return c
