"""Params export for downstream users: OUT/params.safetensors + OUT/config.json + OUT/README.md.

  python main.py --config=configs/export.py --config.checkpoint=RUN_DIR --config.output=OUT
  python main.py --config=configs/export.py --config.checkpoint=RUN_DIR --config.init=random ...

Tensor names are the '/'-joined NNX state paths of the model's parameters (e.g.
'blocks/0/attn/query/kernel', kernels [in, out]); config.json holds everything needed to
rebuild the model and feed it: the model config, sampling rate, lead order, patch and
window length, normalisation. By default only the encoder is written (what embedding,
probes and fine-tuning use); ``config.include_heads=True`` adds the MAE decoder and the
projection head. README.md is the model card (:mod:`ecgjax.inference.model_card`). Files
are 0644 so colleagues can read a shared export. Every path may be a bucket (``gs://``):
files are serialised in memory and written whole through :mod:`ecgjax.storage`.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from safetensors import numpy as st_numpy

from ecgjax import checkpoint as ckpt_lib
from ecgjax import sharding
from ecgjax import state as state_lib
from ecgjax import storage
from ecgjax.models import signal_transformer as st

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
EXPORT_VERSION = 2  # 2: encoder-only by default ("heads" in config.json), model card.
FILE_MODE = 0o644
# Top-level SignalTransformer attributes that only pretraining uses (MAE decoder, SimCLR
# projection head); every other parameter is the encoder's.
HEAD_PARAMS = ("decoder_in", "mask_token", "decoder_lead_embed", "decoder_pos_embed",
               "decoder_blocks", "decoder_norm", "decoder_out", "proj_in", "proj_out")


def is_head_param(name: str) -> bool:
  return name.split("/", 1)[0] in HEAD_PARAMS


def load_train_config(run_dir: str) -> ml_collections.ConfigDict:
  path = storage.join(run_dir, "config.json")
  if not storage.exists(path):
    raise FileNotFoundError(f"{path} not found: {run_dir} is not an ecgjax training workdir")
  return ml_collections.ConfigDict(json.loads(storage.read_text(path)))


def param_name(path: tuple) -> str:
  """'/'-joined NNX state path: the tensor name in params.safetensors."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flatten_params(params_state) -> dict[str, np.ndarray]:
  flat = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(params_state)):
    name = param_name(path)
    flat[name] = np.asarray(jax.device_get(leaf))
  return flat


def restore_model(run_dir: str, step: int | None = None, init: str = "trained"):
  """(model, train_config, step) from a training workdir (any mesh), or a fresh init."""
  cfg = load_train_config(run_dir)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
  graphdef, state, shardings, _ = state_lib.create_state(cfg, mesh)
  restored_step = 0
  if init == "trained":
    manager = ckpt_lib.make_manager(storage.join(run_dir, "checkpoints"), cfg)
    try:
      out = ckpt_lib.restore(manager, ckpt_lib.abstract_with_shardings(state, shardings), None,
                             step=step)
    finally:
      manager.close()
    if out is None:
      raise FileNotFoundError(f"no checkpoint in {run_dir}/checkpoints")
    restored_step, state, _ = out
  elif init != "random":
    raise ValueError(f"config.init={init!r}; expected 'trained' or 'random'")
  model, _ = nnx.merge(graphdef, state)
  return model, cfg, restored_step


def export_config(cfg: ml_collections.ConfigDict, step: int, source: str, init: str,
                  include_heads: bool = False) -> dict[str, Any]:
  spec_stats = None
  if cfg.data.normalize == "dataset":
    from ecgjax.data import mixture  # pylint: disable=g-import-not-at-top
    spec_stats = mixture.train_spec(cfg.data)["lead_stats"]  # a mixture's, pooled.
  return {
      "export_version": EXPORT_VERSION,
      "model": state_lib.model_config(cfg).to_dict(),
      "model_size": cfg.model_size,
      "objective": cfg.objective,
      "sampling_rate": float(cfg.data.sampling_rate),
      "leads": list(cfg.data.leads),
      "patch_ms": float(cfg.patch_ms),
      "window_s": float(cfg.data.window_s),
      "pre_r_s": float(cfg.data.get("pre_r_s", 0.25)),  # eval-mode window start.
      "normalize": cfg.data.normalize,
      "lead_stats": spec_stats,
      "units": "mV",
      "step": int(step),
      "init": init,
      "source": storage.abspath(source),
      "embedding_dim": 2 * int(state_lib.model_config(cfg).width),
      "heads": bool(include_heads),
  }


def write_file(path: str, data: bytes | str) -> None:
  """Writes a whole file (0644 locally, not the umask/mkstemp default), atomically."""
  storage.write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data, FILE_MODE)


def write(out_dir: str, model, export_cfg: dict[str, Any], run_dir: str | None = None) -> str:
  """Writes params (encoder only unless ``export_cfg['heads']``), config.json, README.md.

  ``run_dir`` (the training workdir) lets the model card report the training config, data
  spec and probe results; it defaults to ``export_cfg['source']``.
  """
  if not storage.is_remote(out_dir) and not os.path.isdir(out_dir):
    os.makedirs(out_dir)
    os.chmod(out_dir, 0o755)  # readable by colleagues whatever the umask.
  flat = flatten_params(nnx.state(model, nnx.Param))
  if not export_cfg.get("heads", False):
    flat = {k: v for k, v in flat.items() if not is_head_param(k)}
  write_file(storage.join(out_dir, PARAMS_FILE), st_numpy.save(
      flat, metadata={"format": "ecgjax", "step": str(export_cfg["step"])}))
  write_file(storage.join(out_dir, CONFIG_FILE), json.dumps(export_cfg, indent=1))
  from ecgjax.inference import model_card  # pylint: disable=g-import-not-at-top
  model_card.write(out_dir, run_dir if run_dir is not None else export_cfg.get("source"))
  return out_dir


def load_params(export_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of ``params.safetensors``; a damaged file raises naming it."""
  path = storage.join(export_dir, PARAMS_FILE)
  remote = storage.is_remote(path)
  data = storage.read_bytes(path) if remote else None  # FileNotFoundError names the path.
  try:
    return st_numpy.load(data) if remote else st_numpy.load_file(path)
  except FileNotFoundError:
    raise
  except Exception as e:  # safetensors' errors do not name the file.
    raise ValueError(f"{path}: not a readable safetensors file (truncated or damaged? "
                     f"{type(e).__name__}: {e}); re-export or copy it again") from e


def load_model(export_dir: str):
  """(SignalTransformer with the exported weights, export config dict).

  An encoder-only export (the default) leaves the decoder and projection head at zero:
  embedding, probes and fine-tuning never run them. Pretraining cannot resume from it.
  """
  export_cfg = json.loads(storage.read_text(storage.join(export_dir, CONFIG_FILE)))
  mcfg = ml_collections.ConfigDict(export_cfg["model"])
  # Shapes only (eager random init compiles one small program per parameter shape); the
  # rules keep eval_shape from sharding by logical names when a global mesh is set.
  replicated = tuple((a, None) for a in st.LOGICAL_AXES)
  with nnx.use_eager_sharding(False), nnx.logical_axis_rules(replicated):
    model = nnx.eval_shape(lambda: st.SignalTransformer(mcfg, rngs=nnx.Rngs(0)))
  flat = load_params(export_dir)
  params = nnx.state(model, nnx.Param)
  pure = nnx.to_pure_dict(params)
  leaves = jax.tree_util.tree_leaves_with_path(pure)
  names = {param_name(p) for p, _ in leaves}
  heads = {n for n in names if is_head_param(n)}
  # The encoder always; the heads all or none (all when config.json says it has them).
  with_heads = bool(export_cfg.get("heads", heads & set(flat)))
  expected = names if with_heads else names - heads
  if set(flat) != expected:
    raise ValueError(f"{export_dir}/{PARAMS_FILE} does not match the model in {CONFIG_FILE}: "
                     f"missing {sorted(expected - set(flat))[:5]}, unexpected "
                     f"{sorted(set(flat) - expected)[:5]}")

  def value(p, x):
    name = param_name(p)
    if name in flat:
      return jax.numpy.asarray(flat[name], x.dtype)
    return jax.numpy.zeros(x.shape, x.dtype)  # a head absent from an encoder-only export.
  nnx.replace_by_pure_dict(params, jax.tree_util.tree_map_with_path(value, pure))
  nnx.update(model, params)
  export_cfg["heads"] = with_heads
  return model, export_cfg


def run(config: ml_collections.ConfigDict) -> str:
  if not config.checkpoint:
    raise ValueError("config.checkpoint: give the training workdir to export")
  if not config.output:
    raise ValueError("config.output: give the export directory")
  step = None if config.step < 0 else int(config.step)
  model, cfg, restored = restore_model(config.checkpoint, step, config.init)
  heads = bool(config.get("include_heads", False))
  out = write(config.output, model,
              export_config(cfg, restored, config.checkpoint, config.init, heads),
              run_dir=config.checkpoint)
  logging.info("exported %s %s (step %d, init=%s) to %s", cfg.model_size,
               "encoder + heads" if heads else "encoder", restored, config.init, out)
  return out
