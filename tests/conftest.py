"""Shared fixtures: a small synthetic shard directory and a micro training config."""
import argparse
import os
import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


def requires_shared(sub: str) -> pathlib.Path:
  path = SHARED_DATA / sub
  if not path.exists():
    pytest.skip(f"{path} not present (real ECG data lives in ../shared/data)")
  return path


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory) -> str:
  from data_pipelines import convert
  out = str(tmp_path_factory.mktemp("synthetic_shards"))
  args = convert.build_parser().parse_args([
      "--format=synthetic", f"--output={out}", "--num_records=240", "--num_shards=3",
      "--workers=1", "--sampling_rate=250", "--quiet"])
  convert.convert(args)
  return out


def micro_config(data_path: str, objective: str = "hl"):
  """A model and input small enough to compile and step quickly on a 2-core CPU."""
  import importlib
  cfg = importlib.import_module(f"configs.{objective}").get_config("demo")
  cfg.data.path = data_path
  cfg.total_steps = 6
  cfg.global_batch = 8
  cfg.log_every = 2
  cfg.checkpoint_every = 3
  cfg.plot_every = 1000
  cfg.probe_at_end = False
  cfg.async_checkpointing = False
  cfg.data.window_s = 2.0
  cfg.data.device_prefetch = 1
  cfg.data.read_threads = 1
  cfg.data.prefetch = 8
  cfg.model.update(width=32, depth=2, num_heads=2, mlp_dim=64, local_depth=1,
                   decoder_width=32, decoder_depth=1, decoder_heads=2, decoder_mlp_dim=64,
                   proj_hidden=32, proj_dim=16)
  cfg.optim.warmup_steps = 2
  return cfg
