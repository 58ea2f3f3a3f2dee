"""Params export for downstream users: OUT/params.safetensors + OUT/config.json.

  python main.py --config=configs/export.py --config.checkpoint=RUN_DIR --config.output=OUT
  python main.py --config=configs/export.py --config.checkpoint=RUN_DIR --config.init=random ...

Tensor names are the '/'-joined NNX state paths of the encoder's parameters (e.g.
'encoder_blocks/0/attn/query/kernel'); config.json holds everything needed to rebuild the
model and feed it: the model config, sampling rate, lead order, patch and window length,
normalisation.
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
from ecgjax.models import signal_transformer as st

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
EXPORT_VERSION = 1


def load_train_config(run_dir: str) -> ml_collections.ConfigDict:
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {run_dir} is not an ecgjax training workdir")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


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
    manager = ckpt_lib.make_manager(os.path.join(run_dir, "checkpoints"), cfg)
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


def export_config(cfg: ml_collections.ConfigDict, step: int, source: str, init: str) -> dict[str, Any]:
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
      "source": os.path.abspath(source),
      "embedding_dim": 2 * int(state_lib.model_config(cfg).width),
  }


def write(out_dir: str, model, export_cfg: dict[str, Any]) -> str:
  os.makedirs(out_dir, exist_ok=True)
  flat = flatten_params(nnx.state(model, nnx.Param))
  st_numpy.save_file(flat, os.path.join(out_dir, PARAMS_FILE + ".tmp"),
                     metadata={"format": "ecgjax", "step": str(export_cfg["step"])})
  os.replace(os.path.join(out_dir, PARAMS_FILE + ".tmp"), os.path.join(out_dir, PARAMS_FILE))
  with open(os.path.join(out_dir, CONFIG_FILE), "w") as f:
    json.dump(export_cfg, f, indent=1)
  return out_dir


def load_params(export_dir: str) -> dict[str, np.ndarray]:
  return st_numpy.load_file(os.path.join(export_dir, PARAMS_FILE))


def load_model(export_dir: str):
  """(SignalTransformer with the exported weights, export config dict)."""
  with open(os.path.join(export_dir, CONFIG_FILE)) as f:
    export_cfg = json.load(f)
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
  if names != set(flat):
    raise ValueError(f"{export_dir}/{PARAMS_FILE} does not match the model in {CONFIG_FILE}: "
                     f"missing {sorted(names - set(flat))[:5]}, unexpected "
                     f"{sorted(set(flat) - names)[:5]}")
  new = jax.tree_util.tree_map_with_path(
      lambda p, x: jax.numpy.asarray(flat[param_name(p)], x.dtype), pure)
  nnx.replace_by_pure_dict(params, new)
  nnx.update(model, params)
  return model, export_cfg


def run(config: ml_collections.ConfigDict) -> str:
  if not config.checkpoint:
    raise ValueError("config.checkpoint: give the training workdir to export")
  if not config.output:
    raise ValueError("config.output: give the export directory")
  step = None if config.step < 0 else int(config.step)
  model, cfg, restored = restore_model(config.checkpoint, step, config.init)
  out = write(config.output, model, export_config(cfg, restored, config.checkpoint, config.init))
  logging.info("exported %s params (step %d, init=%s) to %s", cfg.model_size, restored,
               config.init, out)
  return out
