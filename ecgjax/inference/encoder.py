"""Frozen encoders for probes and embeddings: a training run, an export, or a random init.

  enc = encoder.load("runs/hl")                 # latest checkpoint, restored on any mesh
  enc = encoder.load("runs/hl/export")          # params.safetensors + config.json
  enc = encoder.load("random", random_like="runs/hl/export")   # same architecture, fresh
  fn = encoder.BatchEmbedder(enc.model, batch_size=256)      # jitted, batch-sharded

Whatever the source, ``Encoder.meta`` has the layout of an export's config.json (model
config, rate, leads, window, normalisation), so downstream code feeds every encoder the
windows it was trained on. ``Encoder.identity`` is what its embeddings depend on (the
embedding cache key).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from ecgjax import sharding
from ecgjax import storage
from ecgjax.data import pipeline
from ecgjax.inference import export
from ecgjax.models import signal_transformer as st

DEFAULT_PRE_R_S = 0.25  # exports written before pre_r_s was recorded used this default.


@dataclasses.dataclass
class Encoder:
  model: st.SignalTransformer
  meta: dict[str, Any]      # export config.json layout.
  kind: str                 # 'run' | 'export' | 'random'
  identity: dict[str, Any]  # what the embeddings depend on.

  @property
  def window(self) -> pipeline.WindowConfig:
    return window_config(self.meta)

  def describe(self) -> str:
    return f"{self.kind} {self.meta.get('source', '')} (step {self.meta.get('step', 0)})"


def window_config(meta: dict[str, Any]) -> pipeline.WindowConfig:
  """The eval-mode window an encoder expects, from its export config."""
  leads = tuple(meta["leads"])
  rate = float(meta["sampling_rate"])
  stats = None
  if meta["normalize"] == "dataset":
    stats = pipeline.lead_stats_array(meta.get("lead_stats") or {}, leads)
  return pipeline.WindowConfig(
      leads=leads, sampling_rate=rate, window_samples=int(round(meta["window_s"] * rate)),
      pre_r_s=float(meta.get("pre_r_s", DEFAULT_PRE_R_S)), normalize=meta["normalize"],
      lead_stats=stats)


def source_kind(path: str) -> str:
  """'random', 'export' or 'run'; raises with what was expected otherwise."""
  if path == "random":
    return "random"
  if storage.isfile(storage.join(path, export.PARAMS_FILE)) and storage.isfile(
      storage.join(path, export.CONFIG_FILE)):
    return "export"
  if storage.isdir(storage.join(path, "checkpoints")) and storage.isfile(
      storage.join(path, "config.json")):
    return "run"
  raise FileNotFoundError(
      f"{path!r} is neither a training workdir (config.json + checkpoints/), an export "
      f"directory ({export.PARAMS_FILE} + {export.CONFIG_FILE}) nor 'random'")


def _meta_from_train_config(cfg: ml_collections.ConfigDict, step: int, source: str,
                            init: str) -> dict[str, Any]:
  meta = export.export_config(cfg, step, source, init)
  meta.setdefault("pre_r_s", float(cfg.data.get("pre_r_s", DEFAULT_PRE_R_S)))
  return meta


def read_meta(path: str) -> dict[str, Any]:
  """Export-config layout of a run or export directory, without loading weights."""
  kind = source_kind(path)
  if kind == "export":
    return json.loads(storage.read_text(storage.join(path, export.CONFIG_FILE)))
  if kind == "run":
    return _meta_from_train_config(export.load_train_config(path), 0, path, "random")
  raise ValueError("read_meta needs a run or export directory, not 'random'")


def arch_meta(arch: ml_collections.ConfigDict, data_path: str = "") -> dict[str, Any]:
  """Export-config layout for an architecture given by config fields (random baselines).

  ``arch`` has model_size, model (overrides), patch_ms and window (leads, sampling_rate,
  window_s, pre_r_s, normalize): the fields a pretraining config would have.
  """
  w = arch.window
  cfg = ml_collections.ConfigDict({
      "model_size": arch.model_size, "model": dict(arch.model), "patch_ms": arch.patch_ms,
      "objective": "none",
      "data": {"leads": list(w.leads), "sampling_rate": float(w.sampling_rate),
               "window_s": float(w.window_s), "pre_r_s": float(w.pre_r_s),
               "normalize": w.normalize, "path": data_path}})
  meta = _meta_from_train_config(cfg, 0, "random", "random")
  meta["source"] = "random"
  return meta


def _file_fingerprint(path: str) -> dict[str, Any]:
  """Changes when the file is rewritten: size + mtime, or an object's size + generation."""
  info = storage.info(path)
  if not storage.is_remote(path):
    return {"size": int(info["size"]), "mtime_ns": int(info["mtime_ns"])}
  return {"size": int(info["size"]),
          "version": str(info.get("generation") or info.get("etag") or info.get("mtime"))}


def random_init(mcfg: ml_collections.ConfigDict, seed: int) -> st.SignalTransformer:
  """``SignalTransformer(mcfg, rngs=nnx.Rngs(seed))`` (a training run's step-0 weights, up
  to float rounding), initialised by one jitted program instead of eagerly."""
  frozen = ml_collections.FrozenConfigDict(mcfg)
  replicated = tuple((a, None) for a in st.LOGICAL_AXES)  # even under a global mesh.
  with nnx.use_eager_sharding(False), nnx.logical_axis_rules(replicated):
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: _make(frozen, seed)))
    state = _init_state(frozen, int(seed))
  return nnx.merge(graphdef, state)


def _make(mcfg: ml_collections.FrozenConfigDict, seed: int) -> st.SignalTransformer:
  return st.SignalTransformer(ml_collections.ConfigDict(mcfg), rngs=nnx.Rngs(seed))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_state(mcfg: ml_collections.FrozenConfigDict, seed: int):
  """Compiled once per (architecture, seed) per process."""
  return nnx.split(_make(mcfg, seed))[1]


def load(source: str, random_like: str = "", arch: ml_collections.ConfigDict | None = None,
         seed: int = 0, step: int | None = None, data_path: str = "") -> Encoder:
  """Loads (or randomly initialises) an encoder; see the module docstring."""
  kind = source_kind(source)
  if kind == "export":
    model, meta = export.load_model(source)
    meta = dict(meta, source=storage.abspath(source))
    identity = {"kind": kind, "path": storage.abspath(source), "step": meta.get("step"),
                "params": _file_fingerprint(storage.join(source, export.PARAMS_FILE))}
  elif kind == "run":
    model, cfg, restored = export.restore_model(source, step)
    meta = _meta_from_train_config(cfg, restored, source, "trained")
    identity = {"kind": kind, "path": storage.abspath(source), "step": int(restored)}
  else:
    if random_like:
      meta = dict(read_meta(random_like), init="random", step=0,
                  source=f"random like {storage.abspath(random_like)}")
    elif arch is not None:
      meta = arch_meta(arch, data_path)
    else:
      raise ValueError("a random encoder needs random_like=RUN_OR_EXPORT_DIR or the "
                       "architecture fields of the probe config")
    meta["init"], meta["seed"] = "random", int(seed)
    model = random_init(ml_collections.ConfigDict(meta["model"]), int(seed))
    identity = {"kind": kind, "seed": int(seed), "model": meta["model"]}
  meta.setdefault("pre_r_s", DEFAULT_PRE_R_S)
  return Encoder(model=model, meta=meta, kind=kind, identity=identity)


class BatchEmbedder:
  """Jitted ``model.embed`` on fixed-size batches sharded over the local devices.

  Parameters are replicated (encoders up to ViT-L fit one device); the batch is split over
  a ('data',) mesh of this process's devices, so every process of a multi-host job can
  embed on its own without collectives. Short batches are zero-padded to ``batch_size``
  (one compilation); the padding rows are dropped from the result.
  """

  def __init__(self, model: st.SignalTransformer, batch_size: int,
               devices: list[jax.Device] | None = None):
    devices = list(devices or jax.local_devices())
    self.mesh = sharding.make_mesh(
        ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}), devices)
    dp = sharding.data_parallel_size(self.mesh)
    self.batch_size = max(dp, -(-int(batch_size) // dp) * dp)
    self.num_leads = int(model.cfg.num_leads)
    self._graphdef, state = nnx.split(model)
    self._state = jax.device_put(state, sharding.replicated(self.mesh))
    self._x_sharding = sharding.batch_sharding(self.mesh, 3)
    self._m_sharding = sharding.batch_sharding(self.mesh, 2)

  def __call__(self, x: np.ndarray, mask: np.ndarray) -> jax.Array:
    """x [B, L, T] float32 (normalised windows), mask [B, L] bool -> [B, 2D] (async)."""
    b = x.shape[0]
    if b > self.batch_size:
      raise ValueError(f"batch of {b} exceeds batch_size {self.batch_size}")
    if b < self.batch_size:
      pad = self.batch_size - b
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      mask = np.concatenate([mask, np.ones((pad,) + mask.shape[1:], bool)])
    out = _embed(self._graphdef, self._state,
                 jax.device_put(np.asarray(x, np.float32), self._x_sharding),
                 jax.device_put(np.asarray(mask, bool), self._m_sharding))
    return out[:b] if b < self.batch_size else out


@functools.partial(jax.jit, static_argnums=0)
def _embed(graphdef, state, x: jax.Array, mask: jax.Array) -> jax.Array:
  """Shardings follow the inputs (replicated params, batch over 'data'); compiled once
  per architecture and batch shape, so trained and random encoders share it."""
  return nnx.merge(graphdef, state).embed(x, mask)


def gather(chunks: list[jax.Array]) -> np.ndarray:
  """Concatenates embedding chunks on the host as float32 [N, D]."""
  if not chunks:
    return np.zeros((0, 0), np.float32)
  return np.concatenate([np.asarray(jax.device_get(c), np.float32) for c in chunks])


def log_encoder(enc: Encoder) -> None:
  w = enc.window
  logging.info("encoder: %s, %s, %d leads @ %g Hz, window %d samples, normalize=%s, dim %d",
               enc.describe(), enc.meta.get("model_size"), len(w.leads), w.sampling_rate,
               w.window_samples, w.normalize, enc.meta.get("embedding_dim", -1))
