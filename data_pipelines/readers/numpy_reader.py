"""NumPy / HDF5 arrays (.npy / .npz / .h5, or a directory of per-record .npy)."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from data_pipelines.readers.common import (_SPLIT_ALIASES, _UNITS_TO_MV, _ValidatingReader,
                                           _digital_dtype, _normalise_split, _parse_leads,
                                           check_labels_match, check_lead_names,
                                           encode_labels, read_label_csv)
from ecgjax import cli
from ecgjax.data.records import EcgRecord, Reject


def _h5_datasets(f) -> dict[str, Any]:
  import h5py  # pylint: disable=g-import-not-at-top
  found = {}
  f.visititems(lambda name, obj: found.__setitem__(name, obj)
               if isinstance(obj, h5py.Dataset) else None)
  return found


SIDECAR_KEYS = ("sampling_rate", "leads", "labels", "label_names", "record_ids", "splits",
                "patient_ids", "units", "gain", "signal_key", "layout")


class NumpyReader(_ValidatingReader):
  """Arrays [N, leads, samples] in .npy / .npz / .h5, or a directory of per-record .npy.

  Everything not given as an argument comes from a sidecar JSON (``<input>.json``,
  ``<input without extension>.json`` or ``meta.json`` in a directory) with keys
  sampling_rate, leads, labels, label_names, record_ids, splits, units ('mV', 'uV'),
  gain, signal_key, layout, patient_ids. labels / record_ids / splits / patient_ids may be
  lists (one entry per record, or a dict by record_id) or the name of an array in the
  .npz / .h5; ``labels``
  may also be a CSV path (``record_id,label...``). [N, samples, leads] arrays are
  transposed when the lead count identifies the layout (or ``layout='NTC'``).

  Float data becomes float32 mV (gain 1); integer data stays digital (int16/int32) when a
  ``gain`` (adu per unit, scalar or per lead) is given, else it is taken as physical.
  Items are zero-padded indices ('0000', '0001', ...) or, for a directory, file stems.
  """

  def __init__(self, input_path: str, sampling_rate: float | None = None,
               leads: Sequence[str] | str | None = None, labels: Any = None, *,
               label_names: Sequence[str] | None = None, record_ids: Any = None,
               splits: Any = None, patient_ids: Any = None, units: str | None = None, gain: Any = None,
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
      raise ValueError("--sampling_rate: numpy input needs the rate of its data (the flag, "
                       "or 'sampling_rate' in a sidecar JSON)")
    super().__init__(rate, **validate_kw)
    self.leads = _parse_leads(pick(leads, "leads"))
    if not self.leads:
      raise ValueError("--leads: numpy input needs the lead names of its rows (the flag, or "
                       "'leads' in a sidecar JSON)")
    self.leads = check_lead_names(self.leads, self.validate_kw["allowed_leads"], "--leads")
    self.units = str(pick(units, "units") or "mV")
    if self.units.lower() not in _UNITS_TO_MV:
      raise ValueError(f"--units={self.units}: expected mV, uV or V")
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
      if not n:
        raise ValueError(f"--input={input_path}: no .npy files under it")
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
        raise ValueError(f"--layout: {input_path} has shape {shape}, which does not match "
                         f"{len(self.leads)} leads either way; give --layout=NCT or NTC "
                         "(or 'layout' in the sidecar)")
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
      check_labels_match(raw_labels, list(table), ids)
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
    patients = pick(patient_ids, "patient_ids")
    if isinstance(patients, str) and not self._is_array_key(patients):
      raise ValueError(f"{self.input_path}: patient_ids {patients!r} is not an array in the "
                       "input (give a list, a dict by record_id or an array name)")
    patients = self._per_record(patients, n, ids)
    self._patients = dict(zip(self._items, [
        "" if p is None or (isinstance(p, float) and np.isnan(p)) else
        str(p.decode() if isinstance(p, bytes) else p) for p in patients]
                              if patients is not None else [""] * n))
    self._summary = {"records": n, "format": self.kind, "layout": self.layout,
                     "patient_ids": "sidecar" if patients is not None else "none",
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
          side = json.load(f)
        if not isinstance(side, dict):
          raise ValueError(f"{c}: a sidecar must be a JSON object with keys {SIDECAR_KEYS}")
        for key in side:
          if key not in SIDECAR_KEYS:
            raise ValueError(f"{c}: unknown sidecar key {key!r} "
                             f"({cli.did_you_mean(key, SIDECAR_KEYS)}allowed: "
                             f"{', '.join(SIDECAR_KEYS)})")
        return side
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

  def _is_array_key(self, name: str) -> bool:
    if self.is_dir or self.kind == "npy":
      return False
    c = self._container()
    return name in (c if self.kind == "npz" else _h5_datasets(c))

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
                     patient_id=self._patients[item],
                     metadata={"source": self._source(item)})

  def summary(self) -> dict[str, Any]:
    return dict(self._summary)
