"""Seeded, patient-wise train/val/test assignment for archives that define no split.

A record's split is a pure function of (seed, its patient key): the patient key is the
record's ``patient_id``, or its ``record_id`` when the source gives no patient. So every
record of one patient lands in the same split, whatever the worker count, shard count
or item order, and a re-conversion reproduces it.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def parse_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
  """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1); three non-negative numbers summing to 1."""
  try:
    values = tuple(float(v) for v in (text.split(",") if isinstance(text, str) else text))
  except ValueError as e:
    raise ValueError(f"--split_fractions={text!r}: expected TRAIN,VAL,TEST numbers") from e
  if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
    raise ValueError(f"--split_fractions={text!r}: need three non-negative fractions "
                     "(train,val,test) that sum to 1")
  return values  # type: ignore[return-value]


def patient_key(patient_id: str, record_id: str) -> str:
  return patient_id or record_id


def hashed_split(key: str, seed: int, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
  """'train' | 'val' | 'test' for a patient key: sha256(seed, key) as a uniform in [0, 1)."""
  digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  edge = 0.0
  for name, f in zip(SPLITS, fractions):
    edge += f
    if u < edge:
      return name
  return next(name for name, f in zip(reversed(SPLITS), reversed(tuple(fractions))) if f > 0)


def describe(seed: int, fractions: Sequence[float]) -> str:
  pct = "/".join(f"{100 * f:g}" for f in fractions)
  return (f"train/val/test {pct} by sha256(seed {int(seed)}, patient_id or record_id): "
          "patient-wise, independent of workers and shards")
