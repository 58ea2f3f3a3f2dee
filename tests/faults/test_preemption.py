"""Kill -9 / SIGTERM at many points of training and conversion; nothing is lost.

One test run kills the same training job 6+ times (inside a step, inside an async
checkpoint write, at a random moment from outside, SIGTERM, and once with its newest
checkpoint corrupted on top), checks every restart resumes from the newest *complete*
checkpoint, and compares the final export with an uninterrupted run bit for bit.
"""
import json
import os
import pathlib
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ecgjax import checkpoint as ckpt_lib
from ecgjax.inference import export
from tests.faults.conftest import ROOT, SOAK, STEPS, Job, wait_for

SEED = int(os.environ.get("ECGJAX_FAULT_SEED", time.time_ns() % 10**6))


def _steps_on_disk(ckpt_dir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) if ckpt_dir.exists() else []


def _newest_complete(ckpt_dir: pathlib.Path) -> int | None:
  """What a restart must resume from: the newest step that is final and passes its seal."""
  for s in reversed(_steps_on_disk(ckpt_dir)):
    try:
      ckpt_lib.verify(str(ckpt_dir / str(s)))
      return s
    except ckpt_lib.CheckpointError:
      continue
  return None


def _corrupt(step_path: pathlib.Path) -> str:
  """Truncates the largest array file of a step (what a full disk or a bad copy leaves)."""
  files = [p for p in (step_path / "state").rglob("*") if p.is_file()]
  victim = max(files, key=lambda p: p.stat().st_size)
  os.truncate(victim, victim.stat().st_size // 2)
  return str(victim)


def _resumed_from(log: str) -> int | None:
  m = re.search(r"resumed from step (\d+)", log)
  return int(m.group(1)) if m else None


def _wait_progress(job: Job, after: int | None, timeout=180) -> int:
  """Blocks until the job has logged a step beyond ``after``; returns that step."""
  def progressed():
    steps = [int(s) for s in re.findall(rf"step (\d+)/{STEPS}\b", job.log())]
    new = [s for s in steps if s > (after or 0)]
    if job.proc.poll() is not None:
      raise AssertionError(f"job ended (rc {job.proc.returncode}) before making progress:\n"
                           f"{job.log()[-3000:]}")
    return max(new) if new else None
  return wait_for(progressed, timeout)


def _schedule(rng: random.Random) -> list[tuple[str, int, int]]:
  """(kind, step to hit, kill delay ms) per interrupted attempt.

  The step is a lower bound: the attempt resumes somewhere, and the kill lands at least
  one step (a save: one checkpoint) past that point, so every attempt makes progress.
  """
  if not SOAK:
    return [("kill_in_step", 3, 0), ("kill_in_save", 6, 0), ("external_kill", 0, 0),
            ("sigterm", 0, 0), ("kill_in_save", STEPS - 2, rng.randint(0, 300)),
            ("corrupt_newest", STEPS - 1, 0)]
  kinds = ["kill_in_step", "kill_in_save", "external_kill", "sigterm", "corrupt_newest"]
  return [(rng.choice(kinds), 0, rng.randint(0, 400)) for _ in range(rng.randint(15, 25))]


def _fault(kind: str, at: int, delay_ms: int, resume: int | None,
           rng: random.Random) -> str | None | bool:
  """The job's --fault for this attempt (None: killed from outside; False: too late)."""
  base = (resume or 0) + (rng.randint(1, 3) if SOAK else 1)
  at = max(at, base)
  if kind in ("kill_in_step", "corrupt_newest"):
    return f"kill_in_step:{at}" if at < STEPS else False
  if kind == "kill_in_save":
    at += at % 2  # saves happen on even steps.
    return f"kill_in_save:{at}:{delay_ms}" if at <= STEPS else False
  return None if (resume or 0) < STEPS - 1 else False


def test_kill9_anywhere_then_resume_is_bitwise_identical(reference_run, fault_shards, job_env,
                                                         tmp_path):
  rng = random.Random(SEED)
  workdir, ckpt_dir = tmp_path / "run", tmp_path / "run" / "checkpoints"
  history, mid_write, corrupted = [], 0, None
  for kind, at, delay_ms in _schedule(rng) + [("final", STEPS, 0)]:
    expected = _newest_complete(ckpt_dir)
    fault = None if kind == "final" else _fault(kind, at, delay_ms, expected, rng)
    if fault is False:
      continue  # (soak) the run is too close to its end for this kind of kill.
    job = Job(job_env, workdir, fault_shards, fault=fault)
    if kind in ("external_kill", "sigterm"):
      _wait_progress(job, expected)
      time.sleep(rng.uniform(0, 0.4))
      start = time.time()
      job.proc.send_signal(signal.SIGKILL if kind == "external_kill" else signal.SIGTERM)
      rc = job.wait(timeout=60)
      if kind == "sigterm" and f"step {STEPS}/{STEPS}" in job.log():
        pass  # (soak) the signal came after the last step, while exporting.
      elif kind == "sigterm":
        assert rc == 0 and time.time() - start < 30, (rc, job.log()[-3000:])
        saved = int(re.search(r"SIGTERM: saved step (\d+)", job.log()).group(1))
        assert ckpt_lib.verify(str(ckpt_dir / str(saved))), "SIGTERM checkpoint is not sealed"
      else:
        assert rc == -signal.SIGKILL, (kind, rc, job.log()[-3000:])
    elif kind == "final":
      assert job.wait() == 0, job.log()[-4000:]
    else:
      rc = job.wait()
      assert rc == -signal.SIGKILL, (kind, rc, job.log()[-3000:])
      record = json.loads((workdir / "fault.json").read_text())
      mid_write += bool(record.get("tmp_present"))
      (workdir / "fault.json").unlink()
    log = job.log()
    assert _resumed_from(log) == expected, (SEED, kind, expected, history, log[-3000:])
    if corrupted:  # the restart named the broken step and file, then fell back past it.
      step_path, victim = corrupted
      assert f"checkpoint {step_path} is unreadable" in log, log[-3000:]
      assert os.path.relpath(victim, step_path) in log, log[-3000:]
      corrupted = None
    history.append((kind, fault, expected))
    newest = _newest_complete(ckpt_dir)
    if kind == "corrupt_newest" and newest is not None and len(_steps_on_disk(ckpt_dir)) > 1:
      corrupted = (ckpt_dir / str(newest), _corrupt(ckpt_dir / str(newest)))
      with pytest.raises(ckpt_lib.CheckpointError, match="truncated"):
        ckpt_lib.verify(str(corrupted[0]))
  if not SOAK:
    assert len(history) >= 7 and mid_write >= 1, (history, mid_write)
  ref = export.load_params(str(reference_run / "export"))
  got = export.load_params(str(workdir / "export"))
  assert ref.keys() == got.keys() and len(ref) > 10
  for k in ref:
    np.testing.assert_array_equal(ref[k], got[k], err_msg=f"{k} (seed {SEED}, {history})")
  assert json.loads((workdir / "export" / "config.json").read_text())["step"] == STEPS


CONVERT = [sys.executable, "-m", "data_pipelines.convert", "--format=synthetic",
           "--num_records=480", "--num_shards=8", "--workers=1", "--sampling_rate=250",
           "--duration_s=6", "--quiet"]


def _tree_bytes(d: pathlib.Path) -> dict[str, bytes]:
  out = {}
  for p in sorted(d.rglob("*")):
    if p.is_file() and p.name != "spec.json":
      out[str(p.relative_to(d))] = p.read_bytes()
  spec = json.loads((d / "spec.json").read_text())
  for volatile in ("created", "conversion"):
    spec.pop(volatile)
  out["spec.json (less created/conversion)"] = json.dumps(spec, sort_keys=True).encode()
  return out


def test_conversion_killed_midway_then_rerun_gives_identical_shards(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  rng = random.Random(SEED)
  ref, killed = tmp_path / "ref", tmp_path / "killed"
  subprocess.run(CONVERT + [f"--output={ref}"], env=env, cwd=str(ROOT), check=True,
                 capture_output=True)
  for done_before_kill in (range(1, 8) if SOAK else (1, 4)):
    proc = subprocess.Popen(CONVERT + [f"--output={killed}"], env=env, cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    groups = killed / ".groups"
    wait_for(lambda: groups.exists() and
             len(list(groups.glob("0*.json"))) >= done_before_kill, timeout=120, poll=0.005)
    time.sleep(rng.uniform(0, 0.05))
    proc.kill()
    assert proc.wait() == -signal.SIGKILL, "conversion finished before it could be killed"
  assert not (killed / "spec.json").exists()
  subprocess.run(CONVERT + [f"--output={killed}"], env=env, cwd=str(ROOT), check=True,
                 capture_output=True)
  a, b = _tree_bytes(ref), _tree_bytes(killed)
  assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
  for k in a:
    assert a[k] == b[k], k


def _sigterm_exit(job: Job, workdir: pathlib.Path, phase: str) -> str:
  """Waits for the job; asserts it got SIGTERM in ``phase`` and exited 0 within 30 s."""
  rc = job.wait(timeout=900)  # (compiles are slow on a shared CPU; the 30 s start at SIGTERM)
  ended = time.time()
  log = job.log()
  sent = json.loads((workdir / "sigterm.json").read_text())
  (workdir / "sigterm.json").unlink()
  assert rc == 0 and sent["phase"] == phase, (phase, rc, log[-3000:])
  assert ended - sent["time"] < 30, (phase, ended - sent["time"])
  assert "demo probe summary" not in log and not (workdir / "probe" / "results.json").exists()
  return log


@pytest.mark.slow
def test_sigterm_in_every_phase_saves_and_stops(fault_shards, job_env, tmp_path):
  """SIGTERM in the first step, during restore, during compile and in the end-of-run probe.

  Each job exits 0 within 30 s, never starts (or finishes) the probe, and leaves every
  step it reached in a sealed checkpoint that the next job resumes from.
  """
  workdir, ckpt_dir = tmp_path / "run", tmp_path / "run" / "checkpoints"

  def job(phase):
    return Job(job_env, workdir, fault_shards, steps=2, fault=f"sigterm_in:{phase}",
               extra=["--probe_at_end"])

  log = _sigterm_exit(job("step"), workdir, "step")
  assert "SIGTERM: saved step 1, exiting" in log and "skipping the end-of-run jobs" in log
  assert _steps_on_disk(ckpt_dir) == [1] and ckpt_lib.verify(str(ckpt_dir / "1"))
  for phase in ("restore", "compile"):  # abandoned at once, however long they would take.
    log = _sigterm_exit(job(phase), workdir, phase)
    assert f"SIGTERM during {phase}: stopping; nothing new to save" in log, log[-3000:]
    assert "compiled train step" not in log and "step 2/2" not in log, log[-3000:]
    assert _steps_on_disk(ckpt_dir) == [1] and ckpt_lib.verify(str(ckpt_dir / "1"))
  # Training finishes (step 2 saved); the SIGTERM lands in the probe, which stops at once.
  log = _sigterm_exit(job("probe"), workdir, "probe")
  assert _resumed_from(log) == 1 and "SIGTERM: stopped cleanly" in log, log[-3000:]
  assert _steps_on_disk(ckpt_dir) == [1, 2] and ckpt_lib.verify(str(ckpt_dir / "2"))
