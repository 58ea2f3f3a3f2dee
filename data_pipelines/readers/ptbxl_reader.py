"""PTB-XL records with the 5 diagnostic superclasses as multi-hot labels."""
from __future__ import annotations

import ast
import math
import os
from typing import Any

import numpy as np

from data_pipelines.readers.common import _ValidatingReader, _fold_to_split, _normalise_split
from data_pipelines.readers.wfdb_reader import _read_wfdb
from ecgjax.data.records import EcgRecord, Reject

PTBXL_SUPERCLASSES: tuple[str, ...] = ("NORM", "MI", "STTC", "CD", "HYP")


class PtbxlReader(_ValidatingReader):
  """PTB-XL records with the 5 diagnostic superclasses as multi-hot labels.

  ``labels_csv`` is either the official ``ptbxl_database.csv`` (``scp_codes`` mapped to
  superclasses through ``scp_statements.csv``, found next to the CSV or in
  ``input_dir`` unless given; ``strat_fold`` 1-8/9/10 -> train/val/test) or a table with
  ``ecg_id``, a ``split`` or ``strat_fold`` column and 0/1 columns NORM, MI, STTC, CD,
  HYP. Items and record_ids are zero-padded ecg_ids ('00001'), for table rows whose
  signal header exists; the others are counted as ``missing_signal``. ``patient_id``
  (official table) is stored in the shards; tables without it leave it empty, and the
  strat_fold splits are patient-wise anyway.
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
    if not self._items:
      if not existing:
        raise ValueError(f"--input={input_dir}: no PTB-XL headers under records{rate}/ "
                         f"(--sampling_rate picks records100 or records500)")
      raise ValueError(
          f"--labels={labels_csv}: none of its {len(df)} rows names a record under "
          f"{input_dir} (e.g. labels file {sorted(listed_files)[0]!r} vs found "
          f"{sorted(existing)[0]!r})")
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
      out.patient_id = meta.get("patient_id", "")
      out.metadata.update(meta)
    return out

  def summary(self) -> dict[str, Any]:
    return dict(self._summary)
