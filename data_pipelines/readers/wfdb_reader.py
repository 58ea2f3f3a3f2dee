"""WFDB directory trees (MIT-BIH, CinC-2017/2020/2021, ...) and the single-record WFDB
read shared with the PTB-XL reader."""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import numpy as np

from data_pipelines.readers.common import (_UNITS_TO_MV, _ValidatingReader, _digital_dtype,
                                           _lead_names, _parse_lead_map, _short,
                                           check_labels_match, encode_labels, read_label_csv)
from ecgjax.data.records import EcgRecord, Reject

_DX_RE = re.compile(r"^#\s*Dx\s*:\s*(.*)$", re.IGNORECASE)
_COMMENT_KV_RE = re.compile(r"^\s*([A-Za-z][\w ]{0,30}?)\s*:\s*(.*?)\s*$")


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


class WfdbReader(_ValidatingReader):
  """Every WFDB record (``.hea`` + ``.dat``/``.mat``) under a directory tree.

  Items are record paths relative to ``input_dir`` without extension ('100',
  'georgia/E07500'). record_id is the record name ('100'), or the relative path when two
  records in the tree share a name. Labels come from ``labels_csv`` if given, else from
  ``# Dx:`` header comments (SNOMED-CT codes, multi-hot over the sorted set of codes in
  the archive); with neither, records are unlabelled. WFDB headers carry no patient
  identity, so each record is its own patient (``patient_id`` = record_id): right for
  CinC, but MIT-BIH's records 201 and 202 come from one subject (see README).
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
    if self.lead_map and self.lead_override is not None:
      raise ValueError("--leads and --lead_map both rename channels; give one of them")
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
    if not self._items:
      raise ValueError(f"--input={input_dir}: no WFDB records (.hea files) under it")
    if self.sampling_rate is not None:
      other = {r: c for r, c in rates.items() if abs(float(r) - self.sampling_rate) > 1e-6}
      if other:
        found = ", ".join(f"{r} Hz ({c} records)" for r, c in sorted(other.items()))
        raise ValueError(
            f"--sampling_rate={self.sampling_rate:g}: the WFDB headers declare {found}; "
            "--sampling_rate is the rate of the input data, which WFDB headers already "
            "give: omit it (records are resampled to the model's rate later)")
    self._summary: dict[str, Any] = {
        "headers": len(self._items), "unparsable_headers": unparsable,
        "sampling_rates": dict(sorted(rates.items())),
        "duplicate_record_names": sum(c for c in counts.values() if c > 1)}

    if labels_csv:
      table = read_label_csv(labels_csv, set(self._ids.values()) | set(self._items),
                             label_column)
      check_labels_match(labels_csv, list(table), [self._ids[i] for i in self._items],
                         self._items)
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
      out.patient_id = out.record_id
    return out

  def summary(self) -> dict[str, Any]:
    return dict(self._summary, records=len(self._items))
