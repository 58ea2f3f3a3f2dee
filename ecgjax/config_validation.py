"""Checks a training config before anything is compiled; errors name the field."""
from __future__ import annotations

import os

import jax

from ecgjax.data.records import STANDARD_LEADS
from ecgjax.sharding import MESH_AXES, resolve_mesh_shape

_NORMALIZE = ("record", "dataset", "none")
_REMAT = ("none", "full", "dots_saveable", "minimal")


class ConfigError(ValueError):
  pass


def _check(cond: bool, field: str, msg: str) -> None:
  if not cond:
    raise ConfigError(f"config.{field}: {msg}")


def patch_size(config) -> int:
  """Samples per patch at the model's rate; patch_ms must land on a whole sample count."""
  exact = config.patch_ms * config.data.sampling_rate / 1000.0
  _check(abs(exact - round(exact)) < 1e-6 and round(exact) >= 1, "patch_ms",
         f"{config.patch_ms} ms at {config.data.sampling_rate} Hz is {exact:g} samples; "
         "choose a patch length that is a whole number (>= 1) of samples")
  return int(round(exact))


def num_patches(config) -> int:
  window = config.data.window_s * config.data.sampling_rate
  p = patch_size(config)
  _check(abs(window - round(window)) < 1e-6 and round(window) % p == 0, "data.window_s",
         f"{config.data.window_s} s at {config.data.sampling_rate} Hz = {window:g} samples, "
         f"not a multiple of the patch ({p} samples)")
  return int(round(window)) // p


def validate(config, num_devices: int | None = None) -> None:
  """Raises ConfigError on the first bad field; call before building the model."""
  num_devices = jax.device_count() if num_devices is None else num_devices
  _check(config.objective in ("hl", "mae", "simclr"), "objective",
         f"{config.objective!r} not in ('hl', 'mae', 'simclr')")
  for f in ("total_steps", "global_batch", "log_every", "checkpoint_every", "keep_checkpoints",
            "max_bad_steps"):
    _check(int(config[f]) >= 1, f, f"must be >= 1, got {config[f]}")
  try:
    shape = resolve_mesh_shape(config.mesh, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  _check(set(config.mesh.keys()) == set(MESH_AXES), "mesh",
         f"axes {sorted(config.mesh.keys())}; expected exactly {MESH_AXES}")
  dp = shape[0] * shape[1]
  _check(config.global_batch % (dp * jax.process_count()) == 0 and config.global_batch % dp == 0,
         "global_batch", f"{config.global_batch} is not divisible by the data-parallel size "
         f"{dp} (data x fsdp) and process count {jax.process_count()}")
  accum = int(config.optim.grad_accum)
  _check(accum >= 1 and (config.global_batch // dp) % accum == 0, "optim.grad_accum",
         f"{accum}: the per-device batch {config.global_batch // dp} must divide into it")
  d = config.data
  _check(d.sampling_rate > 0, "data.sampling_rate", f"must be > 0, got {d.sampling_rate}")
  num_patches(config)
  unknown = [l for l in d.leads if l not in STANDARD_LEADS]
  _check(not unknown and len(set(d.leads)) == len(d.leads) and d.leads, "data.leads",
         f"unknown or duplicate leads {unknown or list(d.leads)}; allowed: {STANDARD_LEADS}")
  _check(d.normalize in _NORMALIZE, "data.normalize", f"{d.normalize!r} not in {_NORMALIZE}")
  _check(len(d.stretch) == 2 and 0 < d.stretch[0] <= d.stretch[1], "data.stretch",
         f"{tuple(d.stretch)}: need 0 < low <= high")
  if d.path:
    _check(os.path.isdir(d.path), "data.path", f"{d.path!r} is not a directory")
    _check(os.path.exists(os.path.join(d.path, "spec.json")), "data.path",
           f"{d.path!r} has no spec.json; convert the archive first "
           "(python -m data_pipelines.convert ...)")
  l = config.loss
  _check(0.0 <= l.mask_ratio < 1.0, "loss.mask_ratio", f"{l.mask_ratio} not in [0, 1)")
  _check(l.mae_weight >= 0 and l.contrastive_weight >= 0 and
         l.mae_weight + l.contrastive_weight > 0, "loss",
         f"mae_weight={l.mae_weight}, contrastive_weight={l.contrastive_weight}: "
         "need non-negative weights, not both zero")
  _check(l.temperature > 0, "loss.temperature", f"must be > 0, got {l.temperature}")
  _check(config.model.remat in _REMAT, "model.remat", f"{config.model.remat!r} not in {_REMAT}")
  o = config.optim
  _check(o.lr > 0 and 0 <= o.warmup_steps, "optim.lr", f"lr {o.lr} must be > 0")
