"""SIGTERM (preemption notice) handling for the whole life of a job.

Schedulers (TPU/GKE preemption, SLURM) send SIGTERM, then SIGKILL some 30 s later. The
notice can come at any moment: while JAX imports, while a checkpoint is restored, while the
step compiles, mid-training or in the end-of-run probe. So the handler is installed once, as
early as possible (``main.py`` before anything else; ``train_and_evaluate`` again for library
callers), and only ever sets a flag. The phases then poll it where stopping is safe:

* startup (restore, compile): :func:`interruptible` runs the phase on a worker thread and
  raises :class:`Preempted` as soon as the notice comes (a compile can outlast the 30 s
  grace period; XLA cannot be cancelled, so it is abandoned). Nothing new exists yet, so
  the newest checkpoint already holds everything. Each process acts on its own notice
  here (there is nothing to save, so nothing to agree on); one that got none waits in its
  next collective until the scheduler stops it;
* the train loop: :meth:`Watcher.should_stop`; the loop saves the current step and stops;
* after training (probe/export of the demo): :func:`abort_on_sigterm` turns the notice
  into :class:`Preempted` at once; training is already saved and those jobs are re-run.

A preempted job exits with status 0 and never goes on to the end-of-run probe.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

import numpy as np

_REQUESTED = threading.Event()
_ABORT = threading.Event()  # raise at once instead of only setting the flag.


class Preempted(Exception):
  """A SIGTERM arrived; the job stops cleanly (its last checkpoint holds everything)."""


def _handler(signum, frame):  # pylint: disable=unused-argument
  _REQUESTED.set()
  if _ABORT.is_set():
    raise Preempted("SIGTERM")


def install() -> None:
  """Installs the SIGTERM handler (idempotent; only possible from the main thread)."""
  if threading.current_thread() is threading.main_thread():
    if signal.getsignal(signal.SIGTERM) is not _handler:
      signal.signal(signal.SIGTERM, _handler)


def requested() -> bool:
  return _REQUESTED.is_set()


def _any_process(flag: bool) -> bool:
  """Whether the flag is set in any process (a collective: call at the same point everywhere)."""
  import jax  # pylint: disable=g-import-not-at-top  (install() must not wait for JAX)
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  flags = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.asarray(flags).any())


def interruptible(fn, phase: str, poll_s: float = 0.05):
  """``fn()``, or Preempted as soon as a SIGTERM arrives (before or while it runs)."""
  if requested():
    raise Preempted(f"SIGTERM before {phase}")
  out: dict = {}

  def run():
    try:
      out["value"] = fn()
    except BaseException as e:  # pylint: disable=broad-except  (re-raised below)
      out["error"] = e
  worker = threading.Thread(target=run, daemon=True, name=f"ecgjax_{phase}")
  worker.start()
  while worker.is_alive():
    if requested():
      raise Preempted(f"SIGTERM during {phase}")
    worker.join(poll_s)
  if "error" in out:
    raise out["error"]
  return out["value"]


def exit_now(status: int = 0) -> None:
  """Ends a preempted process at once, after flushing its logs.

  A restore or compile abandoned by :func:`interruptible` may still be running native
  code on its worker thread; a normal interpreter shutdown then aborts the process
  ("FATAL: exception not rethrown", status -6) instead of exiting ``status``.
  """
  for handler in logging.getLogger().handlers:
    handler.flush()
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access


class Watcher:
  """The train loop's view of the flag (context manager: installs the handler)."""

  def __enter__(self) -> "Watcher":
    install()
    return self

  def __exit__(self, *_):
    return False

  @staticmethod
  def should_stop(step: int, every: int) -> bool:
    """Whether every process stops after ``step``.

    Saving is a collective, so all processes must agree even when only some got SIGTERM:
    with several processes the flags are all-gathered every ``every`` steps (the same
    steps on all of them); a single process checks every step.
    """
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() > 1 and step % every:
      return False
    return _any_process(requested())


@contextlib.contextmanager
def abort_on_sigterm():
  """Within the block a SIGTERM (or one that came before it) raises Preempted at once."""
  install()
  _ABORT.set()
  try:
    if requested():
      raise Preempted("SIGTERM before the end-of-run jobs")
    yield
  finally:
    _ABORT.clear()
