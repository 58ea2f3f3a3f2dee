"""The embedded default dataset: synthetic 12-lead shards, built once when no data is given."""
from __future__ import annotations

import argparse
import logging
import os

import jax

from ecgjax.data import spec as spec_lib


def ensure_synthetic_shards(syn_cfg, out_dir: str) -> str:
  """Converts the generated set into ``out_dir`` unless a complete conversion is there."""
  if os.path.exists(os.path.join(out_dir, spec_lib.SPEC_FILE)):
    return out_dir
  from data_pipelines import convert  # pylint: disable=g-import-not-at-top
  if jax.process_index() == 0:
    logging.info("no data.path given: generating %d synthetic ECGs into %s",
                 syn_cfg.num_records, out_dir)
    args = convert.build_parser().parse_args([
        "--format=synthetic", f"--output={out_dir}",
        f"--num_records={syn_cfg.num_records}", f"--seed={syn_cfg.seed}",
        f"--sampling_rate={syn_cfg.sampling_rate}", f"--duration_s={syn_cfg.duration_s}",
        f"--num_shards={syn_cfg.num_shards}", "--workers=1"])
    convert.convert(args)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("synthetic_shards_ready")
  return out_dir


def resolve_data_path(config, workdir: str) -> None:
  """Fills config.data.path with the synthetic default when the user gave none."""
  if config.data.path:
    return
  out = config.data.synthetic.dir or os.path.join(os.path.dirname(os.path.abspath(workdir)),
                                                  "synthetic_shards")
  with config.unlocked():
    config.data.path = ensure_synthetic_shards(config.data.synthetic, out)
