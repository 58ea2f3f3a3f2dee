"""Shared reader helpers: reason strings, lead maps, splits, label encoding / label CSV
parsing, and the validating base class every reader derives from."""
from __future__ import annotations

import csv
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from data_pipelines import validate as validate_lib
from ecgjax.data.records import STANDARD_LEADS, EcgRecord, Reject, canonical_lead

# Multiplies a WFDB adc_gain (adu per unit) into adu per mV.
_UNITS_TO_MV = {"mv": 1.0, "": 1.0, "uv": 1000.0, "µv": 1000.0, "μv": 1000.0, "v": 0.001}
_MAX_REASON = 300
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test",
                  "": "", "nan": ""}
_CSV_HEADER_IDS = {"record", "record_id", "recording", "record_name", "id", "name",
                   "filename", "file", "ecg_id"}


def _short(text: str) -> str:
  text = " ".join(str(text).split())
  return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3] + "..."


def _exception_reason(e: BaseException) -> str:
  return _short(f"unreadable: {type(e).__name__}: {e}")


def _digital_dtype(lo: int, hi: int) -> np.dtype | None:
  """Smallest of int16/int32 that holds [lo, hi]; None if neither does."""
  for dt in (np.int16, np.int32):
    info = np.iinfo(dt)
    if info.min <= lo and hi <= info.max:
      return np.dtype(dt)
  return None


def _parse_lead_map(lead_map: Mapping[str, str] | str | None) -> dict[str, str]:
  """{'ECG': 'I'} or 'ECG=I,CH2=II' -> {'ECG': 'I'} keyed by upper-case source name."""
  if not lead_map:
    return {}
  if isinstance(lead_map, str):
    pairs = [p.split("=", 1) for p in lead_map.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
      raise ValueError(f"lead_map must look like 'SRC=DST,...', got {lead_map!r}")
    lead_map = {k: v for k, v in pairs}
  return {k.strip().upper(): canonical_lead(v) for k, v in lead_map.items()}


def _lead_names(names: Sequence[str | None], lead_map: Mapping[str, str]) -> tuple[str, ...]:
  out = []
  for n in names:
    n = "" if n is None else str(n)
    out.append(lead_map.get(n.strip().upper(), canonical_lead(n)))
  return tuple(out)


def _parse_leads(leads: Sequence[str] | str | None) -> tuple[str, ...] | None:
  if leads is None:
    return None
  if isinstance(leads, str):
    leads = [l for l in leads.split(",") if l.strip()]
  return tuple(canonical_lead(str(l)) for l in leads)


def check_lead_names(leads: Sequence[str], allowed: Sequence[str] | None = STANDARD_LEADS,
                     flag: str = "leads") -> tuple[str, ...]:
  """Canonical names, or a ValueError naming the bad one, before any record is read."""
  names = tuple(canonical_lead(str(l)) for l in leads)
  if not names:
    raise ValueError(f"{flag}: no lead names given")
  if allowed is not None:
    bad = [l for l, c in zip(leads, names) if c not in allowed]
    if bad:
      from ecgjax import cli  # pylint: disable=g-import-not-at-top
      raise ValueError(f"{flag}: unknown lead name {str(bad[0]).strip()!r} "
                       f"({cli.did_you_mean(str(bad[0]).strip(), allowed)}allowed: "
                       f"{','.join(allowed)}; aliases such as AVR or MLII are accepted)")
  dups = sorted({c for c in names if names.count(c) > 1})
  if dups:
    raise ValueError(f"{flag}: duplicate lead {dups[0]!r} in {','.join(names)}")
  return names


def check_labels_match(labels_path: str, label_ids: Sequence[str],
                       record_ids: Sequence[str], aliases: Sequence[str] = ()) -> None:
  """Raises when a labels file matches no record, naming an example id from each side.

  A labels file that matches nothing would otherwise turn every record into an
  'unlabelled' reject and the conversion would 'succeed' with 0 records.
  """
  label_ids, record_ids = list(label_ids), list(record_ids)
  if not label_ids:
    raise ValueError(f"--labels={labels_path}: no label rows found")
  if record_ids and not set(label_ids) & (set(record_ids) | set(aliases)):
    raise ValueError(
        f"--labels={labels_path}: none of its {len(label_ids)} ids matches one of the "
        f"{len(record_ids)} records (e.g. labels id {label_ids[0]!r} vs record id "
        f"{record_ids[0]!r}); the first column must hold the record ids")


def _normalise_split(value: Any) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return ""
  if isinstance(value, bytes):
    value = value.decode()
  key = str(value).strip().lower()
  if key not in _SPLIT_ALIASES:
    raise ValueError(f"unknown split {value!r}; expected train/val/test")
  return _SPLIT_ALIASES[key]


def _fold_to_split(fold: Any) -> str:
  """PTB-XL recommendation: folds 1-8 train, 9 val, 10 test."""
  try:
    fold = int(float(fold))
  except (TypeError, ValueError):
    return ""
  if 1 <= fold <= 8:
    return "train"
  return {9: "val", 10: "test"}.get(fold, "")


def encode_labels(raw: Any, label_names: Sequence[str] | None = None,
                  multi_hot: bool | None = None
                  ) -> tuple[tuple[str, ...], str, list[tuple[int, ...] | None]]:
  """Turns per-record labels into (vocabulary, label_type, index tuples).

  ``raw`` is a 2-D array of 0/1 flags (multi-hot rows) or a list with one entry per
  record: None (unlabelled), an int / str (one class) or a list of ints / strs (a set of
  classes, possibly empty). All-scalar lists give 'class_index' unless ``multi_hot``
  forces otherwise. Without ``label_names`` the vocabulary is the sorted distinct
  strings, or '0'..'K-1' for integer classes. Lists in JSON are indices/names, never
  multi-hot rows, because [0, 1] is ambiguous; multi-hot rows must come as a 2-D array.
  """
  if isinstance(raw, np.ndarray) and raw.ndim == 2:
    names = tuple(label_names) if label_names is not None else tuple(
        str(i) for i in range(raw.shape[1]))
    if raw.shape[1] != len(names):
      raise ValueError(f"multi-hot labels have {raw.shape[1]} columns, "
                       f"label_names {len(names)}")
    return names, "multi_hot", [tuple(int(i) for i in np.flatnonzero(r)) for r in raw]

  def as_list(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
      return None
    if isinstance(v, (list, tuple, np.ndarray)):
      return [x.decode() if isinstance(x, bytes) else x for x in np.asarray(v).tolist()]
    if isinstance(v, bytes):
      v = v.decode()
    return v

  entries = [as_list(v) for v in list(raw)]
  scalar = all(not isinstance(e, list) for e in entries if e is not None)
  if multi_hot is None:
    multi_hot = not scalar
  values = [x for e in entries if e is not None for x in (e if isinstance(e, list) else [e])]
  strings = any(isinstance(x, str) for x in values)
  if strings and not all(isinstance(x, str) for x in values):
    raise ValueError("labels mix strings and integers")
  if label_names is not None:
    names = tuple(str(n) for n in label_names)
  elif strings:
    names = tuple(sorted(set(values)))
  else:
    names = tuple(str(i) for i in range(int(max(values)) + 1)) if values else ()
  index = {n: i for i, n in enumerate(names)}
  encoded: list[tuple[int, ...] | None] = []
  for e in entries:
    if e is None:
      encoded.append(None)
      continue
    idx = []
    for x in (e if isinstance(e, list) else [e]):
      if strings:
        if x not in index:
          raise ValueError(f"label {x!r} not in label_names {names}")
        idx.append(index[x])
      else:
        if int(x) != x or not 0 <= int(x) < len(names):
          raise ValueError(f"label index {x!r} out of range for {len(names)} classes")
        idx.append(int(x))
    encoded.append(tuple(sorted(set(idx))))
  return names, ("multi_hot" if multi_hot else "class_index"), encoded


def read_label_csv(path: str, known_ids: set[str] | None = None,
                   label_column: str | None = None) -> dict[str, list[str]]:
  """Reads a ``record_id,label[,label...]`` table (PhysioNet REFERENCE.csv style).

  The header is optional: the first row is taken as one if its id cell is a usual
  column name ('record', 'record_id', ...) or, when ``known_ids`` is given, if it is not
  a known record and its label cells occur nowhere else. With ``label_column`` the file
  must have a header; ids come from 'record_id'/'record'/the first column and the named
  column holds comma-separated labels (like CinC-2021's records.csv 'dx_snomed').
  """
  with open(path, newline="", encoding="utf-8-sig") as f:
    rows = [[c.strip() for c in r] for r in csv.reader(f) if any(c.strip() for c in r)]
  if not rows:
    return {}
  if label_column is not None:
    header = rows[0]
    if label_column not in header:
      raise ValueError(f"{path}: no column {label_column!r} in {header}")
    id_col = next((header.index(c) for c in ("record_id", "record") if c in header), 0)
    col = header.index(label_column)
    return {r[id_col]: [x.strip() for x in r[col].split(",") if x.strip()]
            for r in rows[1:] if len(r) > col}
  first = rows[0]
  is_header = first[0].lower() in _CSV_HEADER_IDS
  if not is_header and known_ids is not None and first[0] not in known_ids:
    others = {c for r in rows[1:] for c in r[1:]}
    is_header = len(rows) > 1 and not any(c in others for c in first[1:] if c)
  table: dict[str, list[str]] = {}
  for r in rows[1:] if is_header else rows:
    rid = os.path.splitext(r[0])[0] if r[0].endswith((".hea", ".mat", ".dat")) else r[0]
    table.setdefault(rid, []).extend(c for c in r[1:] if c)
  return table


class _ValidatingReader:
  """Runs ``validate`` on what a subclass's ``_read`` produced, and catches everything."""

  label_names: tuple[str, ...] = ()
  label_type: str = "multi_hot"

  def __init__(self, sampling_rate: float | None = None, *, min_duration_s: float = 2.0,
               required_leads: Sequence[str] | None = None,
               allowed_leads: Sequence[str] | None = STANDARD_LEADS,
               max_flat_leads: int = 0, leads: Sequence[str] | str | None = None):
    """``leads``: names for the channels by position, replacing the file's names.

    ``sampling_rate`` is the rate of the input data (Hz), never a filter: a reader whose
    files declare their rate raises at construction when they disagree with it.
    """
    if sampling_rate is not None and not float(sampling_rate) > 0:
      raise ValueError(f"--sampling_rate={sampling_rate:g}: must be > 0 Hz (the rate of "
                       "the input data)")
    self.sampling_rate = None if sampling_rate is None else float(sampling_rate)
    self.lead_override = None if leads is None else check_lead_names(
        _parse_leads(leads) or (), allowed_leads, "--leads")
    self.validate_kw = dict(min_duration_s=float(min_duration_s),
                            required_leads=None if required_leads is None else tuple(
                                required_leads),
                            allowed_leads=None if allowed_leads is None else tuple(
                                allowed_leads),
                            max_flat_leads=int(max_flat_leads))

  def list_items(self) -> list[str]:
    return list(self._items)

  def read(self, item: str) -> EcgRecord | Reject:
    """Reads and validates one item; any failure becomes a Reject."""
    try:
      out = self._read(item)
    except Exception as e:  # pylint: disable=broad-except
      return Reject(self._record_id(item), self._source(item), _exception_reason(e))
    if isinstance(out, Reject):
      return out
    if self.lead_override is not None:
      if len(self.lead_override) != len(out.leads):
        return Reject(out.record_id, out.metadata.get("source", self._source(item)),
                      f"shape mismatch: --leads names {len(self.lead_override)} channels, "
                      f"the record has {len(out.leads)} ({','.join(out.leads)})")
      out.leads = self.lead_override
    out = validate_lib.drop_flat_leads(out)
    try:
      reason = validate_lib.validate(out, expected_rate=self.sampling_rate, **self.validate_kw)
    except Exception as e:  # pylint: disable=broad-except
      reason = _short(f"validation failed: {type(e).__name__}: {e}")
    if reason:
      return Reject(out.record_id, out.metadata.get("source", self._source(item)), reason)
    return out

  def _reject(self, item: str, reason: str) -> Reject:
    return Reject(self._record_id(item), self._source(item), _short(reason))

  # Subclasses implement these.
  _items: list[str] = []

  def _read(self, item: str) -> EcgRecord | Reject:
    raise NotImplementedError

  def _record_id(self, item: str) -> str:
    return item

  def _source(self, item: str) -> str:
    return item
