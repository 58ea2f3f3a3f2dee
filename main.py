r"""ecgjax entry point: pretraining, linear probes and export, chosen by the config.

  python main.py --config=configs/hl.py:demo --workdir=runs/demo
  python main.py --config=configs/hl.py --workdir=runs/hl --config.data.path=SHARDS
  python main.py --config=configs/export.py --config.checkpoint=runs/hl --config.output=OUT
  python main.py --config=configs/tasks.py --config.pretrained=EXPORT,random --workdir=DIR
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
_VERBOSE = flags.DEFINE_bool("verbose", False,
                             "Full tracebacks for usage/config errors (default: one line).")


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

  _NOISY = ("/orbax/", "/grain/", "/jax/_src/", "/etils/", "/fsspec/", "/gcsfs/")

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not any(s in record.pathname for s in self._NOISY)


def _user_errors() -> tuple[type[BaseException], ...]:
  """Errors a user fixes by changing a flag, config field or input: one line, exit 2."""
  from ecgjax import checkpoint, cli, config as config_lib  # pylint: disable=g-import-not-at-top
  from ecgjax.data import spec  # pylint: disable=g-import-not-at-top
  return (app.UsageError, cli.UsageError, cli.EmptyOutputError, config_lib.ConfigError,
          spec.SpecError, checkpoint.WorkdirError, FileNotFoundError)


def _is_user_error(e: BaseException) -> bool:
  """A ValueError whose message starts with the field it names is a config error too."""
  return isinstance(e, _user_errors()) or (
      isinstance(e, ValueError) and str(e).startswith(("config.", "--")))


def _parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, but a bad flag or --config.X override is one line, not a traceback.

  ml_collections raises AttributeError/KeyError from inside flag parsing for an unknown
  override key; the config file is loaded again here to name the key and its siblings.
  """
  from ecgjax import cli  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    if any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv):
      raise
    cli.fail(os.path.basename(argv[0]), _override_error(argv) or cli.one_line(e))


def _override_error(argv: list[str]) -> str | None:
  """'config.optim.learning_rate: unknown key (did you mean config.optim.lr? ...)' or None."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from ecgjax import cli  # pylint: disable=g-import-not-at-top
  spec_arg = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if not spec_arg:
    return None
  path, _, arg = spec_arg.partition(":")
  try:
    spec = importlib.util.spec_from_file_location("_ecgjax_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except  (the flag's own error is reported instead)
    return None
  for a in argv:
    if a.startswith("--config."):
      message = cli.missing_config_key(config, a[len("--config."):].split("=", 1)[0])
      if message:
        return message
  return None


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
    preemption.exit_now(0)
  except Exception as e:  # pylint: disable=broad-except
    if _VERBOSE.value or not _is_user_error(e):
      _exit_now_if_multiprocess()
      raise
    from ecgjax import cli  # pylint: disable=g-import-not-at-top
    status = cli.EMPTY_EXIT if isinstance(e, cli.EmptyOutputError) else cli.USAGE_EXIT
    print(f"main.py: error: {cli.one_line(e)}", file=sys.stderr, flush=True)
    _exit_now_if_multiprocess(status, log=False)
    sys.exit(status)
  except KeyboardInterrupt:
    _exit_now_if_multiprocess()
    raise


def _exit_now_if_multiprocess(status: int = 1, log: bool = True) -> None:
  """After a failure (or preemption) in one of several processes, exit at once with ``status``.

  A normal exit runs jax.distributed.shutdown, which waits (minutes) for the other
  processes; they are blocked in a collective with this one, so the job would hang
  instead of failing. The launcher (launch.sh, srun --kill-on-bad-exit) stops the rest.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    if log:
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
  elif job == "tasks":
    from ecgjax.evaluation import tasks  # pylint: disable=g-import-not-at-top
    tasks.run(config, _WORKDIR.value)
  elif job == "export":
    from ecgjax.inference import export  # pylint: disable=g-import-not-at-top
    export.run(config)
  else:
    raise app.UsageError(f"config.job={job!r}; expected pretrain, probe, finetune, tasks or export")


def pretrain(config, workdir: str) -> dict:
  """Trains; then the end-of-run probe (which a SIGTERM cuts short). Preempted: exits 0 at once."""
  from ecgjax import train  # pylint: disable=g-import-not-at-top
  result = train.train_and_evaluate(config, workdir)
  if result.get("preempted"):
    logging.info("preempted at step %d: saved; skipping the end-of-run jobs", result["step"])
    preemption.exit_now(0)
  if config.get("probe_at_end"):
    from ecgjax.evaluation import probe  # pylint: disable=g-import-not-at-top
    with preemption.abort_on_sigterm():
      probe.demo_summary(config, workdir)
  logging.info("done: %s", result)
  return result


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=_parse_flags)
