"""Raw-archive readers: WFDB trees, PTB-XL and NumPy/HDF5 arrays -> validated EcgRecords.

Every reader has the same small interface so the converter can treat formats alike:

  * ``label_names`` / ``label_type`` ('multi_hot' or 'class_index'): known right after
    construction, so the dataset spec can be written before any signal is read.
  * ``list_items()``: sorted work items (strings). Sorted and derived only from the file
    system and label tables, so the item -> shard assignment is reproducible.
  * ``read(item)``: an ``EcgRecord`` that passed ``validate.validate``, or a ``Reject``
    with the reason. It never raises: one broken file must not stop a 1M-record run.
  * ``summary()``: counts found while indexing (e.g. labelled records without a signal).
    Only construction-time counts: reads happen in worker processes, whose state is lost.

Readers hold plain attributes only (tables are built in ``__init__``; open file handles
are dropped on pickling), so they can be shipped to ``spawn`` worker processes.

Signals stay in the archive's digital units when it has them (lossless: int16 when the
baseline-subtracted values fit, else int32, with ``gain`` in adu/mV); float archives
become float32 mV with gain 1. No resampling, filtering or lead reordering happens here.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from data_pipelines import validate as validate_lib
from ecgjax.data.records import STANDARD_LEADS, EcgRecord, Reject, canonical_lead

PTBXL_SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")

# Multiplies a WFDB adc_gain (adu per unit) into adu per mV.
_UNITS_TO_MV = {"mv": 1.0, "": 1.0, "uv": 1000.0, "µv": 1000.0, "μv": 1000.0, "v": 0.001}
_MAX_REASON = 300
_DX_RE = re.compile(r"^#\s*Dx\s*:\s*(.*)$", re.IGNORECASE)
_COMMENT_KV_RE = re.compile(r"^\s*([A-Za-z][\w ]{0,30}?)\s*:\s*(.*?)\s*$")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test",
                  "": "", "nan": ""}
_CSV_HEADER_IDS = {"record", "record_id", "recording", "record_name", "id", "name",
                   "filename", "file", "ecg_id"}


# --------------------------------------------------------------------------------------
# Shared helpers.


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
               max_flat_leads: int = 0):
    self.sampling_rate = None if sampling_rate is None else float(sampling_rate)
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


def _read_wfdb(path: str, record_id: str, lead_map: Mapping[str, str]) -> EcgRecord | Reject:
  """Reads one WFDB record (path without extension) keeping its digital values."""
  import wfdb  # pylint: disable=g-import-not-at-top
  from wfdb.io import _signal as wfdb_signal  # pylint: disable=g-import-not-at-top

  rec = wfdb.rdrecord(path, physical=False)
  source = path + ".hea"

  def reject(reason: str) -> Reject:
    return Reject(record_id, source, _short(reason))

  if not isinstance(rec, wfdb.Record) or getattr(rec, "seg_name", None):
    return reject("unsupported: multi-segment record")
  if rec.d_signal is None or rec.n_sig == 0:
    return reject("no signals in header")
  if any(int(s) != 1 for s in (rec.samps_per_frame or [1])):
    return reject(f"unsupported: multi-frequency record (samples per frame "
                  f"{rec.samps_per_frame})")
  names = rec.sig_name or [""] * rec.n_sig
  leads = _lead_names(names, lead_map)
  digital = np.asarray(rec.d_signal).T.astype(np.int64)  # [leads, samples]
  # WFDB marks missing samples with a per-format sentinel; in digital form they would
  # silently become huge negative values.
  bad = []
  for i, fmt in enumerate(rec.fmt or []):
    sentinel = wfdb_signal.INVALID_SAMPLE_VALUE.get(str(fmt))
    if sentinel is not None and np.any(digital[i] == sentinel):
      bad.append(leads[i])
  if bad:
    return reject(f"nan_or_inf in lead{'s' if len(bad) > 1 else ''} {','.join(bad)} "
                  "(WFDB invalid-sample value)")
  gains = []
  for name, g, unit in zip(names, rec.adc_gain, rec.units or [""] * rec.n_sig):
    factor = _UNITS_TO_MV.get(str(unit or "").strip().lower())
    if factor is None:
      return reject(f"non-voltage units: {unit!r} in channel {name!r}")
    if not g or g <= 0:
      return reject(f"uncalibrated: adc_gain {g} in channel {name!r}")
    gains.append(float(g) * factor)
  baseline = np.asarray(rec.baseline, np.int64)
  digital -= baseline[:, None]
  lo, hi = (int(digital.min()), int(digital.max())) if digital.size else (0, 0)
  dtype = _digital_dtype(lo, hi)
  if dtype is None:
    return reject(f"digital range [{lo}, {hi}] does not fit int32")
  metadata = {"source": source, "baseline": ",".join(str(int(b)) for b in baseline),
              "source_leads": ",".join(str(n) for n in names),
              "fmt": ",".join(str(f) for f in (rec.fmt or []))}
  for c in rec.comments or []:
    m = _COMMENT_KV_RE.match(c)
    key = m.group(1).strip().lower() if m else ""
    if key and key != "dx" and key not in metadata:
      metadata[key] = _short(m.group(2))
  return EcgRecord(record_id=record_id, signal=digital.astype(dtype),
                   sampling_rate=float(rec.fs), leads=leads,
                   gain=np.asarray(gains, np.float32), metadata=metadata)


def _scan_header(path: str) -> tuple[float | None, list[str] | None, bool]:
  """Cheap text parse of a .hea: (sampling rate, Dx codes or None, parsed ok)."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      lines = f.read().splitlines()
  except OSError:
    return None, None, False
  fs, dx, ok = None, None, False
  for line in lines:
    s = line.strip()
    if not s:
      continue
    if s.startswith("#"):
      m = _DX_RE.match(s)
      if m:
        dx = (dx or []) + [c.strip() for c in m.group(1).split(",") if c.strip()]
      continue
    if not ok:
      fields = s.split()
      try:
        int(fields[1])
        fs = float(re.split(r"[/(]", fields[2])[0]) if len(fields) > 2 else 250.0
        ok = True
      except (IndexError, ValueError):
        return None, dx, False
  return fs, dx, ok


# --------------------------------------------------------------------------------------
# WFDB directory trees (MIT-BIH, CinC-2017/2020/2021, ...).


class WfdbReader(_ValidatingReader):
  """Every WFDB record (``.hea`` + ``.dat``/``.mat``) under a directory tree.

  Items are record paths relative to ``input_dir`` without extension ('100',
  'georgia/E07500'). record_id is the record name ('100'), or the relative path when two
  records in the tree share a name. Labels come from ``labels_csv`` if given, else from
  ``# Dx:`` header comments (SNOMED-CT codes, multi-hot over the sorted set of codes in
  the archive); with neither, records are unlabelled.
  """

  def __init__(self, input_dir: str, labels_csv: str | None = None,
               sampling_rate: float | None = None, *,
               lead_map: Mapping[str, str] | str | None = None,
               label_column: str | None = None, **validate_kw):
    super().__init__(sampling_rate, **validate_kw)
    self.input_dir = os.path.abspath(input_dir)
    if not os.path.isdir(self.input_dir):
      raise FileNotFoundError(f"WFDB input directory {input_dir!r} does not exist")
    self.lead_map = _parse_lead_map(lead_map)
    self.labels_csv = labels_csv
    items = []
    for root, dirs, files in os.walk(self.input_dir):
      dirs.sort()
      rel = os.path.relpath(root, self.input_dir)
      for f in files:
        if f.endswith(".hea"):
          items.append(f[:-4] if rel == "." else f"{rel}/{f[:-4]}".replace(os.sep, "/"))
    self._items = sorted(items)
    names = [i.rsplit("/", 1)[-1] for i in self._items]
    counts: dict[str, int] = {}
    for n in names:
      counts[n] = counts.get(n, 0) + 1
    self._ids = {i: (n if counts[n] == 1 else i) for i, n in zip(self._items, names)}

    rates: dict[str, int] = {}
    dx: dict[str, list[str] | None] = {}
    unparsable = 0
    for item in self._items:
      fs, codes, ok = _scan_header(os.path.join(self.input_dir, item + ".hea"))
      unparsable += not ok
      if fs is not None:
        rates[f"{fs:g}"] = rates.get(f"{fs:g}", 0) + 1
      dx[item] = codes
    self._summary: dict[str, Any] = {
        "headers": len(self._items), "unparsable_headers": unparsable,
        "sampling_rates": dict(sorted(rates.items())),
        "duplicate_record_names": sum(c for c in counts.values() if c > 1)}

    if labels_csv:
      table = read_label_csv(labels_csv, set(self._ids.values()) | set(self._items),
                             label_column)
      raw = [table.get(self._ids[i], table.get(i)) for i in self._items]
      # Vocabulary and label type come from the whole table, not only the rows whose
      # signal is present, so a spec written from a partial download matches the full one.
      one_each = all(len(v) == 1 for v in table.values())
      raw = [None if r is None else (r[0] if one_each else r) for r in raw]
      self.label_names, self.label_type, encoded = encode_labels(
          raw, sorted({x for v in table.values() for x in v}), multi_hot=not one_each)
      have = set(self._ids.values()) | set(self._items)
      self._summary.update(
          label_source=os.path.abspath(labels_csv), labelled_rows=len(table),
          missing_signal=sum(1 for k in table if k not in have),
          unlabelled_records=sum(1 for e in encoded if e is None))
    else:
      codes = [dx[i] for i in self._items]
      self.label_names, self.label_type, encoded = encode_labels(
          [c if c else None for c in codes], multi_hot=True)
      self._summary.update(label_source="header # Dx" if self.label_names else "none",
                           records_without_dx=sum(1 for c in codes if not c))
    self._labels = dict(zip(self._items, encoded))
    self._summary["label_vocabulary_size"] = len(self.label_names)

  def _record_id(self, item: str) -> str:
    return self._ids.get(item, item.rsplit("/", 1)[-1])

  def _source(self, item: str) -> str:
    return os.path.join(self.input_dir, item + ".hea")

  def _read(self, item: str) -> EcgRecord | Reject:
    if item not in self._labels:
      return self._reject(item, f"unknown item: {item!r}")
    labels = self._labels[item]
    if labels is None and self.labels_csv:
      return self._reject(item, "unlabelled: record not in labels CSV")
    out = _read_wfdb(os.path.join(self.input_dir, item), self._record_id(item), self.lead_map)
    if isinstance(out, EcgRecord):
      out.labels = tuple(labels or ())
    return out

  def summary(self) -> dict[str, Any]:
    return dict(self._summary, records=len(self._items))


# --------------------------------------------------------------------------------------
# PTB-XL.


class PtbxlReader(_ValidatingReader):
  """PTB-XL records with the 5 diagnostic superclasses as multi-hot labels.

  ``labels_csv`` is either the official ``ptbxl_database.csv`` (``scp_codes`` mapped to
  superclasses through ``scp_statements.csv``, found next to the CSV or in
  ``input_dir`` unless given; ``strat_fold`` 1-8/9/10 -> train/val/test) or a table with
  ``ecg_id``, a ``split`` or ``strat_fold`` column and 0/1 columns NORM, MI, STTC, CD,
  HYP. Items and record_ids are zero-padded ecg_ids ('00001'), for table rows whose
  signal header exists; the others are counted as ``missing_signal``.
  """

  label_names = PTBXL_SUPERCLASSES
  label_type = "multi_hot"

  def __init__(self, input_dir: str, labels_csv: str, sampling_rate: float | None = None, *,
               scp_statements: str | None = None, **validate_kw):
    import pandas as pd  # pylint: disable=g-import-not-at-top

    self.input_dir = os.path.abspath(input_dir)
    if not labels_csv:
      raise ValueError("PTB-XL needs --labels (ptbxl_database.csv or a superclass table)")
    has = {r: os.path.isdir(os.path.join(self.input_dir, f"records{r}")) for r in (100, 500)}
    if sampling_rate is None:
      rate = 100 if has[100] or not has[500] else 500
    elif float(sampling_rate) in (100.0, 500.0):
      rate = int(sampling_rate)
    else:
      raise ValueError(f"PTB-XL exists at 100 or 500 Hz, not {sampling_rate:g}")
    super().__init__(rate, **validate_kw)
    self.suffix = "lr" if rate == 100 else "hr"

    df = pd.read_csv(labels_csv)
    if "ecg_id" not in df.columns:
      df = pd.read_csv(labels_csv, index_col=0).reset_index().rename(
          columns={"index": "ecg_id"})
    if "ecg_id" not in df.columns:
      raise ValueError(f"{labels_csv}: no ecg_id column")
    official = "scp_codes" in df.columns
    if official:
      flags = self._superclasses_from_scp(df, labels_csv, scp_statements)
    else:
      missing = [c for c in PTBXL_SUPERCLASSES if c not in df.columns]
      if missing:
        raise ValueError(f"{labels_csv}: neither scp_codes nor superclass columns "
                         f"(missing {missing})")
      flags = df[list(PTBXL_SUPERCLASSES)].fillna(0).to_numpy(np.int64)
    if "split" in df.columns and not official:
      splits = [_normalise_split(s) for s in df["split"]]
    elif "strat_fold" in df.columns:
      splits = [_fold_to_split(f) for f in df["strat_fold"]]
    else:
      splits = [""] * len(df)

    file_col = f"filename_{self.suffix}"
    root = os.path.join(self.input_dir, f"records{rate}")
    existing = set()
    for dirpath, _, files in os.walk(root):
      rel = os.path.relpath(dirpath, self.input_dir).replace(os.sep, "/")
      existing.update(f"{rel}/{f[:-4]}" for f in files if f.endswith(".hea"))

    self._rows: dict[str, tuple[str, tuple[int, ...], str, dict[str, str]]] = {}
    listed_files = set()
    split_counts: dict[str, int] = {}
    label_counts = np.zeros(len(PTBXL_SUPERCLASSES), np.int64)
    no_label = 0
    for k, row in enumerate(df.itertuples(index=False)):
      ecg_id = int(getattr(row, "ecg_id"))
      rel = getattr(row, file_col, None) if file_col in df.columns else None
      if not isinstance(rel, str) or not rel:
        rel = f"records{rate}/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_{self.suffix}"
      rel = rel.replace("\\", "/")
      listed_files.add(rel)
      if rel not in existing:
        continue
      item = os.path.basename(rel).rsplit("_", 1)[0]
      labels = tuple(int(i) for i in np.flatnonzero(flags[k]))
      meta = {"source": os.path.join(self.input_dir, rel + ".hea")}
      for col in ("strat_fold", "patient_id"):
        v = getattr(row, col, None)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
          meta[col] = str(int(v)) if float(v).is_integer() else str(v)
      self._rows[item] = (rel, labels, splits[k], meta)
      split_counts[splits[k]] = split_counts.get(splits[k], 0) + 1
      label_counts += flags[k] > 0
      no_label += not labels
    self._items = sorted(self._rows)
    self._summary = {
        "label_source": os.path.abspath(labels_csv),
        "label_format": "ptbxl_database (scp_codes)" if official else "superclass table",
        "sampling_rate": rate, "listed": len(df), "records": len(self._items),
        "missing_signal": len(df) - len(self._items),
        "unlisted_signal": len(existing - listed_files),
        "splits": dict(sorted(split_counts.items())),
        "label_counts": dict(zip(PTBXL_SUPERCLASSES, label_counts.tolist())),
        "no_superclass": no_label}

  def _superclasses_from_scp(self, df, labels_csv: str, scp_statements: str | None):
    import pandas as pd  # pylint: disable=g-import-not-at-top
    if scp_statements is None:
      for d in (os.path.dirname(os.path.abspath(labels_csv)), self.input_dir):
        if os.path.exists(os.path.join(d, "scp_statements.csv")):
          scp_statements = os.path.join(d, "scp_statements.csv")
          break
      else:
        raise FileNotFoundError("scp_statements.csv not found next to the labels CSV or "
                                "in the input dir (needed to map scp_codes)")
    scp = pd.read_csv(scp_statements, index_col=0)
    to_class = {str(code): str(cls) for code, cls in scp["diagnostic_class"].items()
                if isinstance(cls, str) and cls}
    col = {c: i for i, c in enumerate(PTBXL_SUPERCLASSES)}
    flags = np.zeros((len(df), len(PTBXL_SUPERCLASSES)), np.int64)
    for k, codes in enumerate(df["scp_codes"]):
      if isinstance(codes, str) and codes.strip():
        for code in ast.literal_eval(codes):
          cls = to_class.get(str(code))
          if cls in col:
            flags[k, col[cls]] = 1
    return flags

  def _source(self, item: str) -> str:
    row = self._rows.get(item)
    return row[3]["source"] if row else item

  def _read(self, item: str) -> EcgRecord | Reject:
    if item not in self._rows:
      return self._reject(item, f"unknown item: {item!r}")
    rel, labels, split, meta = self._rows[item]
    out = _read_wfdb(os.path.join(self.input_dir, rel), item, {})
    if isinstance(out, EcgRecord):
      out.labels, out.split = labels, split
      out.metadata.update(meta)
    return out

  def summary(self) -> dict[str, Any]:
    return dict(self._summary)


# --------------------------------------------------------------------------------------
# NumPy / HDF5 arrays.


def _h5_datasets(f) -> dict[str, Any]:
  import h5py  # pylint: disable=g-import-not-at-top
  found = {}
  f.visititems(lambda name, obj: found.__setitem__(name, obj)
               if isinstance(obj, h5py.Dataset) else None)
  return found


class NumpyReader(_ValidatingReader):
  """Arrays [N, leads, samples] in .npy / .npz / .h5, or a directory of per-record .npy.

  Everything not given as an argument comes from a sidecar JSON (``<input>.json``,
  ``<input without extension>.json`` or ``meta.json`` in a directory) with keys
  sampling_rate, leads, labels, label_names, record_ids, splits, units ('mV', 'uV'),
  gain, signal_key, layout. labels / record_ids / splits may be lists (one entry per
  record, or a dict by record_id) or the name of an array in the .npz / .h5; ``labels``
  may also be a CSV path (``record_id,label...``). [N, samples, leads] arrays are
  transposed when the lead count identifies the layout (or ``layout='NTC'``).

  Float data becomes float32 mV (gain 1); integer data stays digital (int16/int32) when a
  ``gain`` (adu per unit, scalar or per lead) is given, else it is taken as physical.
  Items are zero-padded indices ('0000', '0001', ...) or, for a directory, file stems.
  """

  def __init__(self, input_path: str, sampling_rate: float | None = None,
               leads: Sequence[str] | str | None = None, labels: Any = None, *,
               label_names: Sequence[str] | None = None, record_ids: Any = None,
               splits: Any = None, units: str | None = None, gain: Any = None,
               signal_key: str | None = None, layout: str | None = None,
               meta: str | None = None, **validate_kw):
    self.input_path = os.path.abspath(input_path)
    if not os.path.exists(self.input_path):
      raise FileNotFoundError(f"numpy input {input_path!r} does not exist")
    side = self._sidecar(meta)

    def pick(arg, key):
      return arg if arg is not None else side.get(key)

    rate = pick(sampling_rate, "sampling_rate")
    if rate is None:
      raise ValueError("numpy input needs a sampling rate (argument or sidecar JSON)")
    super().__init__(rate, **validate_kw)
    self.leads = _parse_leads(pick(leads, "leads"))
    if not self.leads:
      raise ValueError("numpy input needs lead names (argument or sidecar JSON)")
    self.units = str(pick(units, "units") or "mV")
    if self.units.lower() not in _UNITS_TO_MV:
      raise ValueError(f"units must be mV, uV or V, got {self.units!r}")
    self.gain = pick(gain, "gain")
    self.signal_key = pick(signal_key, "signal_key")
    self.layout = pick(layout, "layout")
    self._cache: Any = None

    self.is_dir = os.path.isdir(self.input_path)
    ext = os.path.splitext(self.input_path)[1].lower()
    self.kind = "dir" if self.is_dir else {".npy": "npy", ".npz": "npz", ".h5": "h5",
                                           ".hdf5": "h5", ".hdf": "h5"}.get(ext)
    if self.kind is None:
      raise ValueError(f"unsupported numpy input {input_path!r} (.npy/.npz/.h5/.hdf5/dir)")
    if self.is_dir:
      stems = []
      for root, dirs, files in os.walk(self.input_path):
        dirs.sort()
        rel = os.path.relpath(root, self.input_path)
        stems += [f[:-4] if rel == "." else f"{rel}/{f[:-4]}".replace(os.sep, "/")
                  for f in files if f.endswith(".npy")]
      self._items = sorted(stems)
      n = len(self._items)
      ids = [s.rsplit("/", 1)[-1] for s in self._items]
      if len(set(ids)) != n:
        ids = list(self._items)
    else:
      shape = self._signal_shape()
      n = shape[0]
      if len(shape) != 3:
        raise ValueError(f"{input_path}: signal array must be [N, leads, samples], got {shape}")
      if self.layout is None:
        self.layout = "NCT" if shape[1] == len(self.leads) else (
            "NTC" if shape[2] == len(self.leads) else None)
      if self.layout not in ("NCT", "NTC"):
        raise ValueError(f"{input_path}: shape {shape} does not match {len(self.leads)} "
                         "leads; give layout='NCT' or 'NTC'")
      width = max(4, len(str(max(n - 1, 0))))
      self._items = [f"{i:0{width}d}" for i in range(n)]
      rid = self._per_record(pick(record_ids, "record_ids"), n, None)
      ids = [str(r.decode() if isinstance(r, bytes) else r) for r in rid] if rid is not None \
          else list(self._items)
      if len(set(ids)) != n:
        raise ValueError(f"{input_path}: record_ids are not unique")
    self._ids = dict(zip(self._items, ids))

    raw_labels = pick(labels, "labels")
    if isinstance(raw_labels, str) and os.path.isfile(raw_labels):
      table = read_label_csv(raw_labels, set(ids))
      rows = [table.get(i) for i in ids]
      one_each = all(len(r) == 1 for r in rows if r is not None)
      raw_labels = [None if r is None else (r[0] if one_each else r) for r in rows]
    else:
      raw_labels = self._per_record(raw_labels, n, ids)
    if raw_labels is None:
      self.label_names, self.label_type, encoded = (
          tuple(pick(label_names, "label_names") or ()), "multi_hot", [None] * n)
    else:
      self.label_names, self.label_type, encoded = encode_labels(
          raw_labels, pick(label_names, "label_names"))
    self._labels = dict(zip(self._items, encoded))
    self._has_labels = raw_labels is not None
    split_values = self._per_record(pick(splits, "splits"), n, ids)
    self._splits = dict(zip(self._items, [_normalise_split(s) for s in split_values]
                            if split_values is not None else [""] * n))
    self._summary = {"records": n, "format": self.kind, "layout": self.layout,
                     "unlabelled_records": sum(1 for e in encoded if e is None)
                                           if raw_labels is not None else n}

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = None  # Open HDF5 handles / loaded arrays are rebuilt per process.
    return state

  def _sidecar(self, meta: str | None) -> dict[str, Any]:
    if meta:
      candidates = [meta]
    elif os.path.isdir(self.input_path):
      candidates = [os.path.join(self.input_path, "meta.json")]
    else:
      candidates = [self.input_path + ".json", os.path.splitext(self.input_path)[0] + ".json"]
    for c in candidates:
      if os.path.isfile(c):
        with open(c) as f:
          return json.load(f)
    return {}

  def _container(self):
    """The opened .npy (memory-mapped) / .npz / .h5, cached per process."""
    if self._cache is None:
      if self.kind == "npy":
        self._cache = np.load(self.input_path, mmap_mode="r")
      elif self.kind == "npz":
        self._cache = dict(np.load(self.input_path, allow_pickle=False))
      elif self.kind == "h5":
        import h5py  # pylint: disable=g-import-not-at-top
        self._cache = h5py.File(self.input_path, "r")
    return self._cache

  def _signal_array(self):
    c = self._container()
    if self.kind == "npy":
      return c
    if self.signal_key is None:
      arrays = _h5_datasets(c) if self.kind == "h5" else c
      three_d = sorted(k for k, v in arrays.items() if len(v.shape) == 3)
      if len(three_d) != 1:
        raise ValueError(f"{self.input_path}: give signal_key; 3-D arrays: {three_d}")
      self.signal_key = three_d[0]
    return c[self.signal_key]

  def _signal_shape(self) -> tuple[int, ...]:
    return tuple(self._signal_array().shape)

  def _per_record(self, value: Any, n: int, ids: Sequence[str] | None) -> Any:
    """Resolves a list / dict-by-id / array-key / scalar to one entry per record."""
    if value is None:
      return None
    if isinstance(value, str):
      c = None if self.is_dir or self.kind == "npy" else self._container()
      keys = () if c is None else (c if self.kind == "npz" else _h5_datasets(c))
      if value in keys:
        arr = np.asarray(c[value][()] if self.kind == "h5" else c[value])
        if arr.dtype.kind in "SO":
          arr = np.asarray([x.decode() if isinstance(x, bytes) else x for x in arr.tolist()])
        value = arr
      elif value.strip() and value.strip().lower() in _SPLIT_ALIASES:
        return [value] * n  # One split for every record.
      else:
        raise ValueError(f"{self.input_path}: {value!r} is neither an array in the input "
                         "nor a split name")
    if isinstance(value, dict):
      if ids is None:
        raise ValueError("a dict by record_id needs record ids")
      return [value.get(i) for i in ids]
    if len(value) != n:
      raise ValueError(f"{self.input_path}: {len(value)} entries for {n} records")
    return value if isinstance(value, np.ndarray) else list(value)

  def _record_id(self, item: str) -> str:
    return self._ids.get(item, item)

  def _source(self, item: str) -> str:
    if self.is_dir:
      return os.path.join(self.input_path, item + ".npy")
    return f"{self.input_path}[{int(item) if item.isdigit() else item}]"

  def _read(self, item: str) -> EcgRecord | Reject:
    if item not in self._ids:
      return self._reject(item, f"unknown item: {item!r}")
    if self._has_labels and self._labels[item] is None:
      # Absent (None / missing key) differs from an explicit empty set of classes ([]).
      return self._reject(item, "unlabelled: no labels given for record")
    if self.is_dir:
      x = np.load(self._source(item), allow_pickle=False)
      if x.ndim != 2:
        return self._reject(item, f"shape mismatch: per-record array {x.shape} is not 2-D")
      if x.shape[0] != len(self.leads) and x.shape[1] == len(self.leads):
        x = x.T
    else:
      x = np.asarray(self._signal_array()[int(item)])
      if self.layout == "NTC":
        x = x.T
    n_leads = len(self.leads)
    if x.shape[0] != n_leads:
      return self._reject(item, f"shape mismatch: signal {x.shape} vs {n_leads} lead names")
    factor = _UNITS_TO_MV[self.units.lower()]
    if np.issubdtype(x.dtype, np.integer) and self.gain is not None:
      gain = np.broadcast_to(np.asarray(self.gain, np.float64), (n_leads,)) * factor
      x = x.astype(np.int64)
      lo, hi = (int(x.min()), int(x.max())) if x.size else (0, 0)
      dtype = _digital_dtype(lo, hi)
      if dtype is None:
        return self._reject(item, f"digital range [{lo}, {hi}] does not fit int32")
      signal, gain = x.astype(dtype), gain.astype(np.float32)
    elif np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating):
      signal = (x.astype(np.float64) / factor).astype(np.float32)
      gain = np.ones(n_leads, np.float32)
    else:
      return self._reject(item, f"bad dtype: {x.dtype}")
    return EcgRecord(record_id=self._ids[item], signal=np.ascontiguousarray(signal),
                     sampling_rate=float(self.sampling_rate), leads=self.leads, gain=gain,
                     labels=tuple(self._labels[item] or ()), split=self._splits[item],
                     metadata={"source": self._source(item)})

  def summary(self) -> dict[str, Any]:
    return dict(self._summary)


# --------------------------------------------------------------------------------------

_FORMATS = {"wfdb": WfdbReader, "mitbih": WfdbReader, "cinc": WfdbReader,
            "cinc2017": WfdbReader, "cinc2020": WfdbReader, "cinc2021": WfdbReader,
            "ptbxl": PtbxlReader, "numpy": NumpyReader, "npy": NumpyReader,
            "npz": NumpyReader, "hdf5": NumpyReader, "h5": NumpyReader}


def make_reader(format: str, input: str,  # pylint: disable=redefined-builtin
                labels: str | None = None, sampling_rate: float | None = None,
                **kw) -> _ValidatingReader:
  """Builds the reader for ``--format``; ``kw`` goes to its constructor.

  Useful ``kw``: min_duration_s / required_leads / allowed_leads / max_flat_leads (all
  readers, passed to validate), lead_map (wfdb, e.g. 'ECG=I' for CinC-2017), leads / gain
  / units / signal_key (numpy).
  """
  cls = _FORMATS.get(format.lower())
  if cls is None:
    raise ValueError(f"unknown format {format!r}; expected one of {sorted(_FORMATS)}")
  if cls is PtbxlReader:
    return PtbxlReader(input, labels, sampling_rate, **kw)
  return cls(input, labels, sampling_rate, **kw) if cls is WfdbReader else cls(
      input, sampling_rate, kw.pop("leads", None), labels, **kw)
