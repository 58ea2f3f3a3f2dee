"""Smoke tests for benchmarks/: they run end to end and write the documented JSON keys.

No timing assertions: CI machines are shared and slow; the numbers live in
benchmarks/results/.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = ["--model=tiny", "--seconds=1", "--rate=100", "--steps=2", "--batch=4"]


def _env():
  """The benchmark's own process: one CPU device, not conftest's simulated 8."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return env


def _run(args, tmp_path, timeout=240):
  out = tmp_path / "result.json"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"),
                         *args, f"--out={out}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text())


def test_train_step_benchmark_json(tmp_path):
  report = _run(_TINY, tmp_path)
  assert {"benchmark", "date", "device", "versions", "args", "results"} <= set(report)
  assert {"platform", "kind", "count"} <= set(report["device"])
  assert {"jax", "flax"} <= set(report["versions"])
  (row,) = report["results"]
  assert row["model"] == "tiny" and row["batch"] == 4 and row["patches_per_lead"] == 10
  j = row["jax"]
  for key in ("step_time_s", "samples_per_s", "tokens_per_s", "compile_s", "achieved_tflops",
              "model_flops_per_step", "mfu", "memory"):
    assert key in j, key
  assert len(j["step_times_s"]) == 2 and j["samples_per_s"] > 0
  assert j["memory"]["peak_bytes"] is None or j["memory"]["peak_bytes"] > 0


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_torch_reference_runs():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "torch_reference.py"),
                         *_TINY, "--modes=eager"], cwd=ROOT, capture_output=True, text=True,
                        timeout=240, env=_env())
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout)
  eager = out["reference"]["eager"]
  assert len(eager["step_times_s"]) == 2 and eager["samples_per_s"] > 0
  assert out["reference"]["best_samples_per_s"] == eager["samples_per_s"]
