"""spec.json: the small JSON contract that describes a directory of ECG shards.

Written once by ``data_pipelines.convert``; read by the input pipeline, the probe job and
export. Keys:
  converter_version, format, source, created
  dtype_note, units ('mV'), signal_dtypes (dtypes present), lead_order (union, canonical),
  sampling_rates {rate: count}, splits {split: count},
  split_origin ('source' | 'assigned' | 'mixed'), split_counts_by_origin {source, assigned},
  split_assignment {method, seed, fractions} (when any split was assigned by patient hash),
  label_names [...], label_encoding ('multi_hot' | 'class_index'), label_counts {split: [...]},
  lead_stats {lead: {mean, std, count}} (mV, over accepted records),
  shards [{file, split, records}], rejects {count, by_reason, file}, reader_summary {...}

``data_dir`` may be a URL (``gs://bucket/shards``; :mod:`ecgjax.storage`). spec.json is the
last file a conversion writes, so its presence means the directory is complete.
"""
from __future__ import annotations

import json
from typing import Any

from ecgjax import storage

CONVERTER_VERSION = "1.0.0"
SPEC_FILE = "spec.json"
REQUIRED_KEYS = ("converter_version", "lead_order", "splits", "label_names",
                 "label_encoding", "shards")


class SpecError(ValueError):
  """spec.json is missing, malformed, or disagrees with the shard files."""


def exists(data_dir: str) -> bool:
  """Whether ``data_dir`` (local or URL) holds a finished conversion (its spec.json)."""
  return storage.isfile(storage.join(data_dir, SPEC_FILE))


def load(data_dir: str) -> dict[str, Any]:
  path = storage.join(data_dir, SPEC_FILE)
  try:
    text = storage.read_text(path)
  except (FileNotFoundError, NotADirectoryError):
    raise SpecError(f"{path} not found: {data_dir} is not a converted shard directory "
                    "(run `python -m data_pipelines.convert ...` first)") from None
  try:
    spec = json.loads(text)
  except json.JSONDecodeError as e:
    raise SpecError(f"{path} is not valid JSON: {e}") from e
  missing = [k for k in REQUIRED_KEYS if k not in spec]
  if missing:
    raise SpecError(f"{path} lacks required keys {missing}")
  return spec


def shards_for_split(spec: dict[str, Any], data_dir: str, split: str,
                     exists=storage.exists) -> list[tuple[str, int]]:
  """(path, record_count) of every shard of ``split``; raises if a listed file is absent.

  ``exists``: a test for a path (e.g. membership in one listing of the directory).
  """
  out = []
  for entry in spec["shards"]:
    if entry["split"] != split:
      continue
    path = storage.join(data_dir, entry["file"])
    if not exists(path):
      raise SpecError(f"shard {path} is listed in {SPEC_FILE} but missing from {data_dir}")
    out.append((path, int(entry["records"])))
  if not out:
    raise SpecError(f"{data_dir}/{SPEC_FILE} lists no shards for split {split!r} "
                    f"(splits present: {sorted(spec['splits'])})")
  return out


def write(data_dir: str, spec: dict[str, Any]) -> str:
  path = storage.join(data_dir, SPEC_FILE)
  storage.write_text(path, json.dumps(spec, indent=1, sort_keys=True))
  return path
