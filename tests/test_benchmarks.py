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
  report = _run(_TINY + [f"--profile={tmp_path / 'trace'}"], tmp_path)
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
  prof = j["profile"]
  assert prof["steps"] == 3 and prof["top_ops"], prof  # CPU: the XLA worker threads.
  assert all(r["ms_per_step"] > 0 for r in prof["top_ops"])
  assert 0 < sum(r["share"] for r in prof["top_ops"]) <= 1 + 1e-9


def test_profile_table_sums_device_ops_per_step():
  from benchmarks import profile_table  # pylint: disable=g-import-not-at-top
  meta = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
          {"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "/device:GPU:0"}}]
  ev = [{"ph": "X", "pid": 2, "tid": 7, "name": "k1", "dur": 300.0, "args": {"hlo_op": "fusion.1"}},
        {"ph": "X", "pid": 2, "tid": 7, "name": "k2", "dur": 100.0, "args": {"hlo_op": "fusion.1"}},
        {"ph": "X", "pid": 2, "tid": 8, "name": "gemm", "dur": 600.0},
        {"ph": "X", "pid": 1, "tid": 1, "name": "PjitFunction", "dur": 9e6}]  # host: ignored.
  rows, where = profile_table.top_ops(meta + ev, steps=2)
  assert where == "/device:GPU:0"
  assert [(r["op"], r["ms_per_step"], r["count_per_step"]) for r in rows] == [
      ("gemm", 0.3, 0.5), ("fusion.1", 0.2, 1.0)]
  assert rows[0]["share"] == pytest.approx(0.6)


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
