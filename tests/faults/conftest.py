"""Fault-suite fixtures: shared shards, a shared compile cache and one reference run.

Subprocess jobs run on one CPU device with JAX's persistent compilation cache, so only
the first job compiles (~10 s); later ones start stepping after ~5 s. Under
``pytest -n N`` the shards, the cache and the reference run are built once and shared by
all workers (a file lock in the session's common temp dir).

ECGJAX_SOAK=1: a 40-step run killed at ~15-25 random points (random kinds), and more
conversion kills. ECGJAX_FAULT_SEED=N replays a random schedule (the seed is in every
failure message).
"""
import contextlib
import fcntl
import os
import pathlib
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
JOB = ROOT / "tests" / "faults" / "job.py"
SOAK = os.environ.get("ECGJAX_SOAK", "") not in ("", "0")
STEPS = 40 if SOAK else 14  # total steps of the kill/resume jobs; checkpoints every 2.


def _shared_root(tmp_path_factory) -> pathlib.Path:
  base = tmp_path_factory.getbasetemp()
  return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  with open(str(path) + ".lock", "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def build_once(root: pathlib.Path, name: str, build) -> pathlib.Path:
  """root/name built by ``build(path)`` exactly once across xdist workers."""
  path = root / name
  with _locked(path):
    if not (path / ".built").exists():
      path.mkdir(parents=True, exist_ok=True)
      build(path)
      (path / ".built").touch()
  return path


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory) -> pathlib.Path:
  return _shared_root(tmp_path_factory)


@pytest.fixture(scope="session")
def fault_shards(shared_root) -> str:
  def build(path):
    from data_pipelines import convert
    convert.convert(convert.build_parser().parse_args([
        "--format=synthetic", f"--output={path}", "--num_records=96", "--num_shards=2",
        "--workers=1", "--sampling_rate=250", "--duration_s=6", "--quiet"]))
  return str(build_once(shared_root, "fault_shards", build))


@pytest.fixture(scope="session")
def job_env(shared_root) -> dict[str, str]:
  cache = shared_root / "jax_cache"
  cache.mkdir(exist_ok=True)
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
              PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


class Job:
  """One training subprocess of the micro config; its log goes to WORKDIR/attempt-K.log."""

  def __init__(self, env, workdir, data, steps=STEPS, fault=None, extra=()):
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    n = len(list(workdir.glob("attempt-*.log")))
    self.log_path = workdir / f"attempt-{n}.log"
    cmd = [sys.executable, str(JOB), f"--workdir={workdir}", f"--data={data}", f"--steps={steps}",
           *([f"--fault={fault}"] if fault else []), *extra]
    self._log = open(self.log_path, "w")
    self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                 cwd=str(ROOT))

  def wait(self, timeout=900) -> int:  # compiles take minutes on a loaded 2-core CPU.
    try:
      return self.proc.wait(timeout)
    finally:
      self._log.close()

  def log(self) -> str:
    return self.log_path.read_text()


def run_job(env, workdir, data, steps=STEPS, fault=None, extra=(), expect_rc=0) -> str:
  job = Job(env, workdir, data, steps, fault, extra)
  rc = job.wait()
  log = job.log()
  if expect_rc is not None:
    assert rc == expect_rc, f"job exited {rc}, expected {expect_rc}:\n{log[-4000:]}"
  return log


@pytest.fixture(scope="session")
def reference_run(shared_root, fault_shards, job_env) -> pathlib.Path:
  """An uninterrupted run of STEPS steps (with export): what every resumed run must match."""
  return build_once(shared_root, "reference_run",
                    lambda path: run_job(job_env, path, fault_shards))


def wait_for(predicate, timeout=120, poll=0.05):
  deadline = time.time() + timeout
  while time.time() < deadline:
    value = predicate()
    if value:
      return value
    time.sleep(poll)
  raise TimeoutError(f"condition not met in {timeout}s")
