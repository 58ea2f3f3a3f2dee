"""Checks a training config before anything is compiled; errors name the field."""
from __future__ import annotations

import jax
import ml_collections

from ecgjax import cli
from ecgjax import storage
from ecgjax.config import ConfigError, _check, num_patches, patch_size  # noqa: F401 (re-exported)
from ecgjax.data import mixture
from ecgjax.data import spec as spec_lib
from ecgjax.data.records import STANDARD_LEADS
from ecgjax.models import signal_transformer
from ecgjax.sharding import MESH_AXES, resolve_mesh_shape

_NORMALIZE = ("record", "dataset", "none")
_EXTRA_TOP_LEVEL = ("job",)  # main.py's dispatch key.


def unknown_keys(config, reference) -> list[tuple[str, list[str]]]:
  """[(dotted key, known sibling keys)] for keys of ``config`` that ``reference`` lacks.

  ml_collections rejects unknown --config.x overrides, but a config *file* may set any
  key; a typo there (optim.learning_rate) would otherwise be silently ignored.
  """
  out = []

  def walk(c, r, prefix):
    for k in c.keys():
      if k not in r:
        if not (prefix == "" and k in _EXTRA_TOP_LEVEL):
          out.append((prefix + k, sorted(r.keys())))
      elif isinstance(c[k], ml_collections.ConfigDict) and isinstance(r[k], ml_collections.ConfigDict):
        walk(c[k], r[k], f"{prefix}{k}.")

  walk(config, reference, "")
  return out


def _reference_config(config) -> ml_collections.ConfigDict | None:
  try:
    from configs import common  # pylint: disable=g-import-not-at-top
  except ImportError:  # installed without the configs package: nothing to compare with.
    return None
  size = config.get("model_size")
  return common.base(size if size in common.SIZES else None)


def validate(config, num_devices: int | None = None, reference=None) -> None:
  """Raises ConfigError on the first bad field; call before building the model.

  ``reference``: the config whose keys are the allowed ones (default: configs.common.base).
  """
  num_devices = jax.device_count() if num_devices is None else num_devices
  reference = _reference_config(config) if reference is None else reference
  if reference is not None:
    for key, known in unknown_keys(config, reference):
      raise ConfigError(cli.unknown_key_message(key, known))
  _check(config.model_size in signal_transformer.SIZES, "model_size",
         f"{config.model_size!r} not in {tuple(signal_transformer.SIZES)}")
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
  _check(d.window_s > 0, "data.window_s", f"must be > 0, got {d.window_s}")
  for f in ("num_workers", "read_threads", "prefetch", "device_prefetch"):
    _check(int(d[f]) >= 0, f"data.{f}", f"must be >= 0, got {d[f]}")
  num_patches(config)
  unknown = [l for l in d.leads if l not in STANDARD_LEADS]
  _check(not unknown and len(set(d.leads)) == len(d.leads) and d.leads, "data.leads",
         f"unknown or duplicate leads {unknown or list(d.leads)}; allowed: {STANDARD_LEADS}")
  _check(d.normalize in _NORMALIZE, "data.normalize", f"{d.normalize!r} not in {_NORMALIZE}")
  _check(len(d.stretch) == 2 and 0 < d.stretch[0] <= d.stretch[1], "data.stretch",
         f"{tuple(d.stretch)}: need 0 < low <= high")
  try:
    sources = mixture.parse_sources(d)
  except mixture.MixtureError as e:
    raise ConfigError(str(e)) from e
  field = "data.mixture" if d.get("mixture") else "data.path"
  for i, src in enumerate(sources):
    name = f"{field}[{i}]" if len(sources) > 1 else field
    _check(storage.isdir(src.path), name, f"{src.path!r} is not a directory")
    _check(spec_lib.exists(src.path), name,
           f"{src.path!r} has no spec.json; convert the archive first "
           "(python -m data_pipelines.convert ...)")
  l = config.loss
  _check(0.0 <= l.mask_ratio < 1.0, "loss.mask_ratio", f"{l.mask_ratio} not in [0, 1)")
  _check(l.mae_weight >= 0 and l.contrastive_weight >= 0 and
         l.mae_weight + l.contrastive_weight > 0, "loss",
         f"mae_weight={l.mae_weight}, contrastive_weight={l.contrastive_weight}: "
         "need non-negative weights, not both zero")
  _check(l.temperature > 0, "loss.temperature", f"must be > 0, got {l.temperature}")
  _check(l.get("target", "input") in ("input", "clean"), "loss.target",
         f"{l.get('target')!r} not in ('input', 'clean')")
  _check(l.get("norm_eps", 0.0) >= 0, "loss.norm_eps", f"must be >= 0, got {l.get('norm_eps')}")
  _check(int(config.get("eval_every", 0)) >= 0 and int(config.get("eval_batches", 1)) >= 1,
         "eval_every", f"eval_every {config.get('eval_every')} must be >= 0 (0 = off) and "
         f"eval_batches {config.get('eval_batches')} >= 1")
  _check(config.model.remat in signal_transformer.REMAT_POLICIES, "model.remat",
         f"{config.model.remat!r} not in {signal_transformer.REMAT_POLICIES}")
  try:  # widths, heads, dtype... as the model will see them (no arrays are built).
    signal_transformer.model_config(config.model_size, **{
        **dict(config.model), "num_leads": len(d.leads), "patch_size": patch_size(config),
        "max_patches": num_patches(config)})
  except (KeyError, ValueError, TypeError) as e:
    raise ConfigError(f"config.model: {e}") from e
  o = config.optim
  _check(o.lr > 0 and 0 <= o.warmup_steps, "optim.lr", f"lr {o.lr} must be > 0")
