"""What every command line shares: one-line usage errors, "did you mean", empty-output exits.

A user who mistypes a flag should read one line that names the field and what is
allowed, not 50 lines of traceback; ``--verbose`` brings the traceback back. A job that
produced nothing exits non-zero so a script (or CI) stops there, not in the next step.
"""
from __future__ import annotations

import difflib
import logging
import sys
from typing import Any, Callable, Iterable, NoReturn

# Exit statuses: 2 = bad usage/config/input (argparse's convention), 1 = ran, produced nothing.
USAGE_EXIT = 2
EMPTY_EXIT = 1


class UsageError(ValueError):
  """A flag, config field or input the user can fix; reported as one line."""


class EmptyOutputError(RuntimeError):
  """The job ran but produced nothing usable (0 records, 0 embeddings, 0 matches)."""


# Exception types a CLI reports as one line. ValueError covers ConfigError, SpecError and
# the readers' argument checks; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError,
                                                NotADirectoryError, EmptyOutputError)


def _closest(name: str, known: list[str]) -> str | None:
  """The key sharing the most of the name's words ('batch_size' -> 'global_batch'), then
  spelling (difflib), then an abbreviation ('learning_rate' -> 'lr')."""
  words = {w for w in name.lower().split("_") if len(w) >= 3}
  score = {k: sum(len(w) for w in words & set(k.lower().split("_"))) for k in known}
  best = max(score.values(), default=0)
  tied = [k for k in known if best and score[k] == best]
  if len(tied) == 1:
    return tied[0]
  close = difflib.get_close_matches(name, tied or known, n=1, cutoff=0.6)
  if close:
    return close[0]
  for k in known:
    if len(k) > 1 and (k == _initials(name) or name == _initials(k)):
      return k
  return None


def _initials(key: str) -> str:
  return "".join(w[0] for w in key.split("_") if w)


def did_you_mean(name: str, known: Iterable[str], prefix: str = "") -> str:
  """'did you mean PREFIXclose? ' or '' (for use inside a message)."""
  close = _closest(name, list(known))
  return f"did you mean {prefix}{close}? " if close else ""


def unknown_key_message(dotted: str, known: Iterable[str]) -> str:
  """'config.optim.learning_rate: unknown key (did you mean config.optim.lr? allowed ...)'."""
  known = sorted(known)
  parent, _, leaf = dotted.rpartition(".")
  prefix = f"config.{parent}." if parent else "config."
  where = f"config.{parent}" if parent else "config"
  return (f"config.{dotted}: unknown key ({did_you_mean(leaf, known, prefix)}"
          f"keys allowed under {where}: {', '.join(known)})")


def missing_config_key(config: Any, dotted: str) -> str | None:
  """The unknown-key message for the first part of ``dotted`` that ``config`` lacks."""
  node, seen = config, []
  for key in dotted.split("."):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if key not in keys:
      if not keys:  # a leaf: 'config.lr.x' goes below a value.
        return f"config.{'.'.join(seen)} is a value ({type(node).__name__}), not a group"
      return unknown_key_message(".".join(seen + [key]), keys)
    node, seen = node[key], seen + [key]
  return None


def one_line(e: BaseException) -> str:
  """The exception's message on one line (KeyError's quotes removed)."""
  text = " ".join(str(e).split()) or type(e).__name__
  if isinstance(e, KeyError) and text.startswith(("'", '"')):
    text = text.strip("'\"")
  return text


def fail(prog: str, message: str, status: int = USAGE_EXIT) -> NoReturn:
  print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(status)


def run(prog: str, body: Callable[[], Any], verbose: bool) -> Any:
  """Runs a CLI body; a user error becomes one stderr line and a non-zero exit.

  ``verbose`` re-raises instead, so the traceback is there when someone needs it.
  """
  try:
    return body()
  except USER_ERRORS as e:
    if verbose:
      raise
    fail(prog, one_line(e), EMPTY_EXIT if isinstance(e, EmptyOutputError) else USAGE_EXIT)


def setup_logging() -> None:
  """INFO lines on stderr, whatever an import configured first.

  Orbax logs through absl while it is imported, which calls ``logging.basicConfig()`` and
  leaves the root logger at WARNING, so a later ``basicConfig(level=INFO)`` is a no-op
  and INFO lines vanish. The level is set on the root logger itself; existing handlers
  (absl's, pytest's) are kept.
  """
  root = logging.getLogger()
  if not root.handlers:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
  root.setLevel(logging.INFO)
