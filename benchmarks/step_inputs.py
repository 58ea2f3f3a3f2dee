"""Configs and random inputs for the step benchmarks (JAX and the PyTorch reference).

One place for what ``train_step.py`` and ``torch_reference.py`` both need, so neither
imports the other.
"""
from __future__ import annotations

import dataclasses
import importlib

import jax
import numpy as np

from ecgjax import config_validation
from ecgjax import train
from ecgjax.data import pipeline
from ecgjax.data import windows


def on_accelerator() -> bool:
  return jax.default_backend() in ("gpu", "tpu")


def make_config(model: str, seconds: float, rate: float, batch: int, objective: str = "hl",
                dtype: str = "auto", remat: str = "none", attention: str | None = None):
  """The objective's training config at this size, window, rate and global batch."""
  config = importlib.import_module(f"configs.{objective}").get_config(model)
  config.data.sampling_rate = float(rate)
  config.data.window_s = float(seconds)
  config.global_batch = int(batch)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  if dtype == "auto":
    dtype = "bfloat16" if on_accelerator() else "float32"
  config.model.dtype = dtype
  config.model.remat = remat
  config.model.attention_impl = attention
  config_validation.validate(config)
  return config


def bench_window(config) -> pipeline.WindowConfig:
  """The config's windows, cut from int16 records at the model's rate (converted shards)."""
  return dataclasses.replace(train.window_config(config),
                             source_rates=(float(config.data.sampling_rate),),
                             segment_dtype="int16")


def random_batch(config, seed: int = 0) -> dict[str, np.ndarray]:
  """Host segment batch (what the grain pipeline yields), all leads on."""
  return pipeline.random_batch(bench_window(config), config.global_batch, seed)


def random_views(config, seed: int = 0) -> dict[str, np.ndarray]:
  """{'view1', 'view2': [B, L, T] f32, 'lead_mask'}: the same batch as windows, for PyTorch."""
  segments = random_batch(config, seed)
  return {"lead_mask": segments["lead_mask"],
          **windows.on_host(segments, bench_window(config))}
