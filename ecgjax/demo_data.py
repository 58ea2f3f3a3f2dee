"""The embedded default dataset: synthetic 12-lead shards, built once when no data is given."""
from __future__ import annotations

import logging

import jax

from ecgjax import storage
from ecgjax.data import spec as spec_lib


def ensure_synthetic_shards(syn_cfg, out_dir: str) -> str:
  """Converts the generated set into ``out_dir`` unless a complete conversion is there.

  Process 0 converts; every process then meets at one barrier, whatever it saw on disk (a
  process that skipped it because the set looked complete would leave the others waiting).
  A host that still sees no set after the barrier does not share ``out_dir`` with process
  0 and converts its own copy: the generator is seeded, so the data are identical.
  """
  if jax.process_index() == 0 and not spec_lib.exists(out_dir):
    _convert_synthetic(syn_cfg, out_dir)
  if jax.process_count() > 1:
    _barrier("ecgjax_synthetic_shards_ready")
    if not spec_lib.exists(out_dir):
      logging.warning("process %d does not see %s written by process 0; generating a local "
                      "copy", jax.process_index(), out_dir)
      _convert_synthetic(syn_cfg, out_dir)
  return out_dir


def _barrier(name: str, timeout_s: int = 3600) -> None:
  """Every process waits here for the others, for up to ``timeout_s``.

  Uses the coordination service's barrier, not a device collective: on CPU the first
  gloo collective gives up when the processes arrive more than 30 s apart, and
  generating the data can take longer than that.
  """
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  if distributed.global_state.client is not None:
    distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
  else:  # multi-process without jax.distributed (e.g. a TPU pod started without it).
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _convert_synthetic(syn_cfg, out_dir: str) -> None:
  from data_pipelines import convert  # pylint: disable=g-import-not-at-top
  logging.info("no data.path given: generating %d synthetic ECGs into %s",
               syn_cfg.num_records, out_dir)
  args = convert.build_parser().parse_args([
      "--format=synthetic", f"--output={out_dir}",
      f"--num_records={syn_cfg.num_records}", f"--seed={syn_cfg.seed}",
      f"--sampling_rate={syn_cfg.sampling_rate}", f"--duration_s={syn_cfg.duration_s}",
      f"--num_shards={syn_cfg.num_shards}", "--workers=1"])
  convert.convert(args)


def resolve_data_path(config, workdir: str) -> None:
  """Fills config.data.path with the synthetic default when the user gave no data."""
  if config.data.path or config.data.get("mixture"):
    return
  out = config.data.synthetic.dir or storage.join(storage.dirname(storage.abspath(workdir)),
                                                  "synthetic_shards")
  with config.unlocked():
    config.data.path = ensure_synthetic_shards(config.data.synthetic, out)
