"""A tiny trained run + export shared by the probe and embedding tests.

Training even the micro config costs ~20 s of compile on a 2-core CPU, so the run is made
once per test session and shared between pytest-xdist workers (file lock in the common
base temp dir). Import the ``trained_run`` fixture, or wrap :func:`shared_trained_run`
in a module's own fixture. Tests that write into the run directory must copy it first.
"""
import contextlib
import fcntl
import os

import pytest

from tests.conftest import micro_config


@contextlib.contextmanager
def _locked(path: str):
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def make_trained_run(run_dir: str, data_path: str) -> str:
  from ecgjax import train  # pylint: disable=g-import-not-at-top
  from ecgjax.inference import export  # pylint: disable=g-import-not-at-top
  cfg = micro_config(data_path)
  cfg.total_steps = 3
  cfg.log_every = 3
  cfg.checkpoint_every = 3
  train.train_and_evaluate(cfg, run_dir)
  model, tcfg, step = export.restore_model(run_dir)
  export.write(os.path.join(run_dir, "export"), model,
               export.export_config(tcfg, step, run_dir, "trained"))
  return run_dir


def shared_trained_run(tmp_path_factory, data_path: str) -> str:
  """A 3-step HL micro run (config.json + checkpoints/) with RUN/export, made once."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # shared by all workers of this session.
  run_dir = str(root / "probe_trained_run")
  with _locked(str(root / "probe_trained_run.lock")):
    if not os.path.exists(os.path.join(run_dir, "export", "params.safetensors")):
      make_trained_run(run_dir, data_path)
  return run_dir


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, synthetic_shards) -> str:
  """Importable fixture form of :func:`shared_trained_run` (used by test_finetune.py)."""
  return shared_trained_run(tmp_path_factory, synthetic_shards)
