"""Subprocess entry for the fault tests: the micro config, with faults injected by flag.

  python tests/faults/job.py --workdir=W --data=D --steps=N [--fault=kill_in_step:5] ...

Faults (all self-inflicted, at exact points an outside kill can only hit by luck):
  kill_in_step:N        SIGKILL right after step N's computation is dispatched.
  kill_in_save:N:MS     SIGKILL MS milliseconds after the async save of step N started.
  nan_at:A,B,...        the batches of these steps are NaN (loss and gradients go non-finite).
  sigterm_in:PHASE      SIGTERM from another thread while PHASE runs: restore, compile,
                        step (the first one) or probe (the end-of-run probe, --probe_at_end);
                        writes WORKDIR/sigterm.json with the time it was sent.
--set data.skip_corrupt=True etc. overrides config fields (Python literals).
Before killing itself the job writes WORKDIR/fault.json (what it hit, whether the save's
temporary directory was still there). Export runs only when training reached --steps;
with --probe_at_end the job instead runs main.pretrain (train, then the demo probe).
"""
import argparse
import ast
import json
import logging
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ecgjax import preemption  # noqa: E402

preemption.install()  # as main.py does, before JAX is imported.

import jax.numpy as jnp  # noqa: E402

from ecgjax import checkpoint as ckpt_lib  # noqa: E402
from ecgjax import train  # noqa: E402
from ecgjax.inference import export  # noqa: E402
from tests.conftest import micro_config  # noqa: E402


def fault_config(data: str, steps: int):
  """micro_config, checkpointing every 2 steps asynchronously, logging every step."""
  cfg = micro_config(data)
  cfg.total_steps = steps
  cfg.checkpoint_every = 2
  cfg.log_every = 1
  cfg.keep_checkpoints = 100
  cfg.async_checkpointing = True
  return cfg


def _die(workdir: str, record: dict) -> None:
  with open(os.path.join(workdir, "fault.json"), "w") as f:
    json.dump(record, f)
  os.kill(os.getpid(), signal.SIGKILL)


def _sigterm_soon(workdir: str, phase: str, delay_s: float = 0.05) -> None:
  """SIGTERM from a thread, landing while the main thread is inside ``phase``."""
  def send():
    with open(os.path.join(workdir, "sigterm.json"), "w") as f:
      json.dump({"phase": phase, "time": time.time()}, f)
    os.kill(os.getpid(), signal.SIGTERM)
  threading.Timer(delay_s, send).start()


def _sigterm_in(phase: str, workdir: str) -> None:
  """Wraps the function that runs ``phase`` so that a SIGTERM arrives during it."""
  if phase == "restore":
    target, name = ckpt_lib, "restore"
  elif phase == "compile":
    target, name = train, "compile_step"
  elif phase == "probe":
    from ecgjax.evaluation import probe  # pylint: disable=g-import-not-at-top
    target, name = probe, "evaluate_encoder"
  elif phase == "step":
    compile_step = train.compile_step

    def patched_compile(*a, **k):
      compiled, batch_abs = compile_step(*a, **k)
      sent = []

      def step_fn(state, batch, step):
        if not sent:
          sent.append(True)
          _sigterm_soon(workdir, phase, 0.0)
        return compiled(state, batch, step)
      return step_fn, batch_abs
    train.compile_step = patched_compile
    return
  else:
    raise ValueError(f"unknown sigterm_in phase {phase!r}")
  original = getattr(target, name)

  def patched(*a, **k):
    _sigterm_soon(workdir, phase)
    out = original(*a, **k)
    time.sleep(0.2)  # the signal lands inside the phase even when it is quicker than that.
    return out
  setattr(target, name, patched)


def install(fault: str, workdir: str) -> None:
  kind, *args = fault.split(":")
  if kind == "sigterm_in":
    _sigterm_in(args[0], workdir)
  elif kind in ("kill_in_step", "nan_at"):
    at = {int(a) for a in args[0].split(",")}
    compile_step = train.compile_step

    def patched_compile(*a, **k):
      compiled, batch_abs = compile_step(*a, **k)

      def step_fn(state, batch, step):
        s = int(step)
        if kind == "nan_at" and s in at:
          batch = dict(batch, scale=batch["scale"] * jnp.nan)
        out = compiled(state, batch, step)
        if kind == "kill_in_step" and s in at:
          _die(workdir, {"kind": kind, "step": s})
        return out
      return step_fn, batch_abs
    train.compile_step = patched_compile
  elif kind == "kill_in_save":
    at, delay_ms = int(args[0]), float(args[1])
    save = ckpt_lib.save

    def patched_save(manager, step, *a, **k):
      out = save(manager, step, *a, **k)
      if step == at:
        tmp = os.path.join(str(manager.directory), f"{step}.orbax-checkpoint-tmp")

        def kill():
          _die(workdir, {"kind": kind, "step": step, "delay_ms": delay_ms,
                         "tmp_present": os.path.exists(tmp)})
        threading.Timer(delay_ms / 1000, kill).start()
      return out
    ckpt_lib.save = patched_save
  else:
    raise ValueError(f"unknown --fault {fault!r}")


def main() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True)
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--data", required=True)
  p.add_argument("--steps", type=int, default=12)
  p.add_argument("--fault", default=None)
  p.add_argument("--set", action="append", default=[], help="field=python literal")
  p.add_argument("--probe_at_end", action="store_true")
  a = p.parse_args()
  cfg = fault_config(a.data, a.steps)
  for item in a.set:
    key, value = item.split("=", 1)
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
      node = node[name]
    node[leaf] = ast.literal_eval(value)
  if a.fault:
    install(a.fault, a.workdir)
  if a.probe_at_end:
    import main as main_lib  # pylint: disable=g-import-not-at-top
    cfg.probe_at_end = True
    try:
      result = main_lib.pretrain(cfg, a.workdir)
    except preemption.Preempted as e:
      logging.info("%s: stopped cleanly", e)
    return
  result = train.train_and_evaluate(cfg, a.workdir)
  if result["step"] >= a.steps:
    model, tcfg, step = export.restore_model(a.workdir)
    export.write(os.path.join(a.workdir, "export"), model,
                 export.export_config(tcfg, step, a.workdir, "trained"))
  logging.info("job done at step %d", result["step"])


if __name__ == "__main__":
  main()
