"""Multi-host: per-process data slicing, and a real 2-process CPU job through launch.sh."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ecgjax.data import example
from ecgjax.data import pipeline
from ecgjax.data.source import ShardedSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record_id(data: bytes) -> str:
  return example.decode(data)["record_id"]


class _Prefix:
  """The first n records of a source (to get split sizes the process count does not divide)."""

  def __init__(self, source, n):
    self.source, self.n = source, n

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    if not 0 <= i < self.n:
      raise IndexError(i)
    return self.source[i]


@pytest.mark.parametrize("process_count", [2, 3])
@pytest.mark.parametrize("drop", [0, 1])
def test_process_slices_are_disjoint_and_complete(synthetic_shards, process_count, drop):
  full = ShardedSource(synthetic_shards, "train")
  source = _Prefix(full, len(full) - drop)
  n = len(source)
  everything = {_record_id(source[i]) for i in range(n)}
  assert len(everything) == n
  slices = [pipeline.process_records(source, 7, p, process_count) for p in range(process_count)]
  # Epoch e is elements [e * n, (e + 1) * n) of the global shuffled order; process p reads
  # its elements p, p + k, ... (k processes), so its share of an epoch starts at a local
  # index that depends on e and p whenever k does not divide n.
  for epoch in (0, 1):
    seen = []
    for p, ds in enumerate(slices):
      local = [i for i in range((epoch + 1) * n // process_count + 1)
               if epoch * n <= p + i * process_count < (epoch + 1) * n]
      seen.append([_record_id(ds[i]) for i in local])
    flat = [r for ids in seen for r in ids]
    assert len(flat) == len(set(flat)), f"epoch {epoch}: a record is read by two processes"
    assert set(flat) == everything, f"epoch {epoch}: records missed by every process"
  # Eval: one pass in storage order, split the same way.
  evals = [[_record_id(x) for x in pipeline.process_records(source, None, p, process_count)]
           for p in range(process_count)]
  flat = [r for ids in evals for r in ids]
  assert len(flat) == n and set(flat) == everything


def _launch(workdir, shards, *extra, probe_at_end=False):
  """bash launch.sh --local 2 -- main.py args for a tiny HL job; returns the CompletedProcess."""
  overrides = {
      "total_steps": 4, "global_batch": 8, "log_every": 2, "checkpoint_every": 2,
      "plot_every": 1000, "probe_at_end": probe_at_end, "async_checkpointing": False,
      "data.synthetic.dir": shards, "data.synthetic.num_records": 48,
      "data.synthetic.num_shards": 2, "data.synthetic.sampling_rate": 250.0,
      "data.window_s": 2.0, "data.device_prefetch": 1, "data.read_threads": 1,
      "data.prefetch": 8, "model.width": 32, "model.depth": 2, "model.num_heads": 2,
      "model.mlp_dim": 64, "model.local_depth": 1, "model.decoder_width": 32,
      "model.decoder_depth": 1, "model.decoder_heads": 2, "model.decoder_mlp_dim": 64,
      "model.proj_hidden": 32, "model.proj_dim": 16, "optim.warmup_steps": 2,
  }
  args = ["--config=configs/hl.py:demo", f"--workdir={workdir}"]
  args += [f"--config.{k}={v}" for k, v in overrides.items()]
  # No persistent compilation cache: on CPU only process 0 would hit it, and processes that
  # reach their first collective more than 30 s apart make gloo give up.
  env = dict(os.environ, PYTHON=sys.executable)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  out = subprocess.run(["bash", os.path.join(ROOT, "launch.sh"), "--local", "2",
                        "--devices_per_process", "2", *extra, "--", *args],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
  assert out.returncode == 0, (out.stderr[-3000:], out.stdout[-6000:])
  return out


@pytest.mark.slow
def test_two_processes_train_save_and_resume(tmp_path):
  workdir, shards = str(tmp_path / "run"), str(tmp_path / "shards")
  # No data.path: process 0 generates the synthetic set, process 1 waits for it.
  out = _launch(workdir, shards)
  logs = {p: open(os.path.join(workdir, "logs", f"process_{p}.log")).read() for p in (0, 1)}
  assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1} over 4 devices (cpu), 2 processes" in logs[0]
  assert "[1] " in out.stdout and "[0] " in out.stdout
  assert os.path.exists(os.path.join(shards, "spec.json"))
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(int(s) for s in os.listdir(ckpts) if s.isdigit()) == [2, 4]
  for step in (2, 4):
    names = os.listdir(os.path.join(ckpts, str(step), "data_iter"))
    assert sorted(n for n in names if n.endswith(".json")) == [
        "process_0-of-2.json", "process_1-of-2.json"], step
  # Metrics from process 0 only: one row per logged step, one TensorBoard event file.
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [2, 4]
  assert all(np.isfinite(r["loss"]) for r in rows)
  assert len(os.listdir(os.path.join(workdir, "tb"))) == 1

  # Corrupt the last checkpoint (a truncated array file fails its seal): process 0 alone
  # chooses step 2 and broadcasts it, both processes restore it (model and both iterator
  # states), step 4 is quarantined everywhere, and the run reaches the same step-4 metrics.
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(ckpts, "4", "state"))
           for f in fs]
  victim = max(files, key=os.path.getsize)
  os.truncate(victim, os.path.getsize(victim) // 2)
  # With the end-of-run probe on: export, embedding and probe run in both processes.
  _launch(workdir, shards, probe_at_end=True)
  results = json.load(open(os.path.join(workdir, "probe", "results.json")))
  assert {"pretrained", "random"} <= set(results)
  logs = {p: open(os.path.join(workdir, "logs", f"process_{p}.log")).read() for p in (0, 1)}
  for p in (0, 1):
    assert "restoring step 2, chosen by process 0 of 2" in logs[p], logs[p][-3000:]
  assert "resumed from step 2" in logs[0], logs[0][-3000:]
  assert f"checkpoint {os.path.join(ckpts, '4')} is unreadable" in logs[0]
  assert os.listdir(ckpts + "_unreadable")
  rows2 = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))][len(rows):]
  assert [r["step"] for r in rows2] == [4]
  for k in ("loss", "mae", "nt_xent", "grad_norm"):
    np.testing.assert_allclose(rows2[0][k], rows[1][k], rtol=1e-5, err_msg=k)
