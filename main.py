r"""ecgjax entry point: pretraining, linear probes and export, chosen by the config.

  python main.py --config=configs/hl.py:demo --workdir=runs/demo
  python main.py --config=configs/hl.py --workdir=runs/hl --config.data.path=SHARDS
  python main.py --config=configs/export.py --config.checkpoint=runs/hl --config.output=OUT
"""
from __future__ import annotations

import logging
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ecgjax import preemption

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 (multi-host outside TPU/SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Total JAX processes.")
_LIBRARY_LOGS = flags.DEFINE_bool("library_logs", False,
                                   "Keep INFO logs of Orbax/grain/JAX internals.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def _initialize_distributed() -> None:
  """jax.distributed.initialize from flags, the environment (TPU pod, SLURM) or not at all."""
  import jax  # pylint: disable=g-import-not-at-top
  # CPU collectives across processes (launch.sh --local); must be set before initialize.
  jax.config.update("jax_cpu_collectives_implementation",
                    os.environ.get("JAX_CPU_COLLECTIVES_IMPLEMENTATION", "gloo"))
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif os.environ.get("ECGJAX_COORDINATOR"):
    jax.distributed.initialize(os.environ["ECGJAX_COORDINATOR"],
                               int(os.environ["ECGJAX_NUM_PROCESSES"]),
                               int(os.environ["ECGJAX_PROCESS_ID"]))
  elif (os.environ.get("ECGJAX_DISTRIBUTED") == "auto" or os.environ.get("TPU_WORKER_HOSTNAMES")
        or os.environ.get("SLURM_NTASKS", "1") != "1"):
    # No arguments: JAX reads them from the TPU metadata server / SLURM variables.
    jax.distributed.initialize()


class _QuietLibraries(logging.Filter):
  """Drops INFO chatter from Orbax/grain/JAX internals so progress lines stay readable."""

  _NOISY = ("/orbax/", "/grain/", "/jax/_src/", "/etils/")

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(s in record.pathname for s in self._NOISY)


def main(argv) -> None:
  del argv
  preemption.install()  # first: a preemption notice can arrive while JAX starts.
  logging.getLogger().setLevel(logging.INFO)
  if not _LIBRARY_LOGS.value:
    for handler in logging.getLogger().handlers:
      handler.addFilter(_QuietLibraries())
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/hl.py:demo")
  _initialize_distributed()
  try:
    _run_job(config)
  except preemption.Preempted as e:
    logging.info("%s: stopped cleanly (training state is checkpointed)", e)
    _exit_now_if_multiprocess(status=0)
  except (Exception, KeyboardInterrupt):
    _exit_now_if_multiprocess()
    raise


def _exit_now_if_multiprocess(status: int = 1) -> None:
  """After a failure (or preemption) in one of several processes, exit at once.

  A normal exit runs jax.distributed.shutdown, which waits (minutes) for the other
  processes; they are blocked in a collective with this one, so the job would hang
  instead of failing. The launcher (launch.sh, srun --kill-on-bad-exit) stops the rest.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    if status:
      logging.exception("process %d of %d failed", jax.process_index(), jax.process_count())
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # pylint: disable=protected-access


def _run_job(config) -> None:
  job = config.get("job", "pretrain")
  if job == "pretrain":
    if not _WORKDIR.value:
      raise app.UsageError("--workdir is required for pretraining")
    pretrain(config, _WORKDIR.value)
  elif job == "probe":
    from ecgjax.evaluation import probe  # pylint: disable=g-import-not-at-top
    probe.run(config, _WORKDIR.value)
  elif job == "finetune":
    from ecgjax.evaluation import finetune  # pylint: disable=g-import-not-at-top
    finetune.run(config, _WORKDIR.value)
  elif job == "export":
    from ecgjax.inference import export  # pylint: disable=g-import-not-at-top
    export.run(config)
  else:
    raise app.UsageError(f"config.job={job!r}; expected pretrain, probe, finetune or export")


def pretrain(config, workdir: str) -> dict:
  """Trains; then, unless preempted, the end-of-run probe (which a SIGTERM cuts short)."""
  from ecgjax import train  # pylint: disable=g-import-not-at-top
  result = train.train_and_evaluate(config, workdir)
  if result.get("preempted"):
    logging.info("preempted at step %d: saved; skipping the end-of-run jobs", result["step"])
    return result
  if config.get("probe_at_end"):
    from ecgjax.evaluation import probe  # pylint: disable=g-import-not-at-top
    with preemption.abort_on_sigterm():
      probe.demo_summary(config, workdir)
  logging.info("done: %s", result)
  return result


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
