"""Annotated long recordings -> labelled beat or rhythm-window examples (MIT-BIH style).

  python -m data_pipelines.convert --format=wfdb --input=../shared/data/mitbih \
      --segment=beats --window_s=5 --annotations=atr --split_scheme=mitbih_inter_patient \
      --output=/data/mitbih_beats

Beats (``--segment=beats``): one example per annotated beat, ``window_s`` seconds of
signal starting ``beat_offset_s`` before the beat's fiducial point (default 5 s from 1 s
before), labelled with its AAMI class (``class_index`` over N, S, V, F, Q). The example's
``r_peaks`` holds only that beat, so the pipeline's eval window starts ``pre_r_s`` before it.
Beats whose window would cross a record edge, and beat symbols outside the AAMI table
(B, r, n, ?: none occur in the 44 shared records), are skipped and counted in the spec's
``reader_summary``.

Windows (``--segment=windows``): consecutive non-overlapping ``window_s``-second windows
from the record start (a trailing partial window is dropped, so no window straddles a
record end or two records), labelled multi-hot with every rhythm (``(AFIB``, ``(N``, ...)
that covers at least one sample of the window. ``r_peaks`` are the annotated beats inside.

Ids: the example's ``record_id`` is ``<record>_b<NNNNNN>`` (beat ordinal among the record's
beat annotations) or ``<record>_w<NNNN>`` (window ordinal); :func:`source_record` recovers
the record, which is what splits must keep disjoint. In MIT-BIH one record is one patient
except 201 and 202 (same subject).
"""
from __future__ import annotations

import collections
import os
import re
from typing import Any, Sequence

import numpy as np

from ecgjax.data.records import EcgRecord, Reject

SEGMENT_MODES = ("beats", "windows")
SPLIT_SCHEMES = ("none", "mitbih_inter_patient")

AAMI_CLASSES: tuple[str, ...] = ("N", "S", "V", "F", "Q")
# AAMI EC57 beat classes from MIT-BIH symbols, as used by de Chazal et al. (2004), Table I.
AAMI_MAP: dict[str, str] = {
    "N": "N", "L": "N", "R": "N", "e": "N", "j": "N",   # normal, BBB, escape beats
    "A": "S", "a": "S", "J": "S", "S": "S",             # supraventricular ectopic
    "V": "V", "E": "V",                                 # ventricular ectopic
    "F": "F",                                           # fusion of V and N
    "/": "Q", "f": "Q", "Q": "Q",                       # paced, paced fusion, unclassifiable
}
# Every MIT-BIH beat annotation symbol (the rest are non-beat annotations: + ~ | ! x [ ] ").
BEAT_SYMBOLS = frozenset("NLRBAaJSVrFejnE/fQ?")
# MIT-BIH rhythm labels (aux_note of '+' annotations); others found are appended.
KNOWN_RHYTHMS: tuple[str, ...] = (
    "(AB", "(AFIB", "(AFL", "(B", "(BII", "(IVR", "(N", "(NOD", "(P", "(PREX", "(SBR",
    "(SVTA", "(T", "(VFL", "(VT")

# de Chazal, O'Dwyer, Reilly (2004), IEEE TBME 51(7): inter-patient split. The four paced
# records 102, 104, 107, 217 are in neither set.
DS1: tuple[str, ...] = ("101", "106", "108", "109", "112", "114", "115", "116", "118", "119",
                        "122", "124", "201", "203", "205", "207", "208", "209", "215", "220",
                        "223", "230")
DS2: tuple[str, ...] = ("100", "103", "105", "111", "113", "117", "121", "123", "200", "202",
                        "210", "212", "213", "214", "219", "221", "222", "228", "231", "232",
                        "233", "234")
PACED: tuple[str, ...] = ("102", "104", "107", "217")

_ID_RE = re.compile(r"^(.*)_(?:b\d{6}|w\d{4})$")


def source_record(example_id: str) -> str:
  """'100_b000123' / '100_w0007' -> '100' (ids without a segment suffix are returned as is)."""
  m = _ID_RE.match(example_id)
  return m.group(1) if m else example_id


def inter_patient_split(record: str, val_records: int = 4, seed: int = 0) -> str | None:
  """'train' / 'val' (DS1), 'test' (DS2) or None (not in the scheme, e.g. paced records).

  ``val_records`` DS1 records, drawn by a seeded permutation, become 'val', so the probe's
  model selection never sees a DS2 (test) patient and val stays record-disjoint from train.
  """
  if record in DS2:
    return "test"
  if record not in DS1:
    return None
  val = set(np.asarray(DS1)[np.random.default_rng(seed).permutation(len(DS1))[:val_records]])
  return "val" if record in val else "train"


# ------------------------------------------------------------------------ annotations
def read_annotations(path: str, extension: str = "atr"):
  """(sample [K] int64, symbol [K] str, aux_note [K] str) of a WFDB annotation file."""
  import wfdb  # pylint: disable=g-import-not-at-top
  ann = wfdb.rdann(path, extension)
  aux = ann.aux_note if ann.aux_note is not None else [""] * len(ann.sample)
  return (np.asarray(ann.sample, np.int64), np.asarray(ann.symbol, dtype=object),
          np.asarray([(a or "").strip("\x00 ") for a in aux], dtype=object))


def rhythm_intervals(sample: np.ndarray, symbol: np.ndarray, aux: np.ndarray,
                     num_samples: int) -> list[tuple[int, int, str]]:
  """[(start, end), rhythm] runs from '+' annotations; each lasts until the next one."""
  idx = [i for i in range(len(symbol)) if symbol[i] == "+" and str(aux[i]).startswith("(")]
  out = []
  for k, i in enumerate(idx):
    end = int(sample[idx[k + 1]]) if k + 1 < len(idx) else num_samples
    start = max(int(sample[i]), 0)
    if end > start:
      out.append((start, end, str(aux[i])))
  return out


def beat_positions(sample: np.ndarray, symbol: np.ndarray, num_samples: int, pre: int,
                   length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ordinal, sample, keep) of every beat annotation; keep = its window fits the record."""
  is_beat = np.asarray([s in BEAT_SYMBOLS for s in symbol], bool)
  pos = sample[is_beat]
  start = pos - pre
  keep = (start >= 0) & (start + length <= num_samples)
  return np.arange(pos.size), pos, keep


def _copy(rec: EcgRecord, start: int, length: int, example_id: str, labels: Sequence[int],
          r_peaks: np.ndarray) -> EcgRecord:
  return EcgRecord(record_id=example_id, signal=np.ascontiguousarray(
      rec.signal[:, start:start + length]), sampling_rate=rec.sampling_rate, leads=rec.leads,
                   gain=rec.gain, labels=tuple(labels), split=rec.split,
                   patient_id=rec.patient_id or rec.record_id,
                   r_peaks=np.asarray(r_peaks, np.int64),
                   metadata=dict(rec.metadata, source_record=rec.record_id))


def beat_examples(rec: EcgRecord, sample: np.ndarray, symbol: np.ndarray, window_s: float,
                  offset_s: float, max_per_record: int = 0, seed: int = 0) -> list[EcgRecord]:
  """One example per AAMI-mappable beat whose window fits inside the record."""
  fs = rec.sampling_rate
  pre, length = int(round(offset_s * fs)), int(round(window_s * fs))
  is_beat = np.asarray([s in BEAT_SYMBOLS for s in symbol], bool)
  beat_sym = symbol[is_beat]
  ordinal, pos, keep = beat_positions(sample, symbol, rec.num_samples, pre, length)
  keep &= np.asarray([s in AAMI_MAP for s in beat_sym], bool)
  chosen = ordinal[keep]
  if max_per_record and chosen.size > max_per_record:
    rng = np.random.default_rng([seed, int.from_bytes(rec.record_id.encode()[:8], "little")])
    chosen = np.sort(rng.choice(chosen, max_per_record, replace=False))
  return [_copy(rec, int(pos[k]) - pre, length, f"{rec.record_id}_b{k:06d}",
                (AAMI_CLASSES.index(AAMI_MAP[beat_sym[k]]),), np.asarray([pre]))
          for k in chosen]


def window_examples(rec: EcgRecord, sample: np.ndarray, symbol: np.ndarray, aux: np.ndarray,
                    window_s: float, rhythms: Sequence[str], max_per_record: int = 0,
                    seed: int = 0) -> list[EcgRecord]:
  """Consecutive ``window_s`` windows, multi-hot over ``rhythms`` present in each."""
  length = int(round(window_s * rec.sampling_rate))
  count = rec.num_samples // length
  runs = rhythm_intervals(sample, symbol, aux, rec.num_samples)
  beats = np.sort(sample[np.asarray([s in BEAT_SYMBOLS for s in symbol], bool)])
  chosen = np.arange(count)
  if max_per_record and count > max_per_record:
    rng = np.random.default_rng([seed, int.from_bytes(rec.record_id.encode()[:8], "little")])
    chosen = np.sort(rng.choice(chosen, max_per_record, replace=False))
  out = []
  for w in chosen:
    lo, hi = int(w) * length, (int(w) + 1) * length
    present = sorted({rhythms.index(r) for s, e, r in runs if s < hi and e > lo})
    peaks = beats[(beats >= lo) & (beats < hi)] - lo
    out.append(_copy(rec, lo, length, f"{rec.record_id}_w{int(w):04d}", present, peaks))
  return out


class SegmentingReader:
  """Wraps a WFDB reader: ``read(item)`` gives the record's list of beat/window examples.

  Vocabulary, split assignment and the skip counts are computed from the annotation files
  and headers at construction, so ``summary()`` is exact even though reads happen in
  worker processes.
  """

  def __init__(self, base, mode: str, window_s: float | None, annotations: str = "atr",
               split_scheme: str = "none", beat_offset_s: float = 1.0,
               max_per_record: int = 0, val_records: int = 4, seed: int = 0):
    import wfdb  # pylint: disable=g-import-not-at-top
    if mode not in SEGMENT_MODES:
      raise ValueError(f"--segment={mode!r}; expected one of {SEGMENT_MODES}")
    if split_scheme not in SPLIT_SCHEMES:
      raise ValueError(f"--split_scheme={split_scheme!r}; expected one of {SPLIT_SCHEMES}")
    window_s = float(window_s or (5.0 if mode == "beats" else 10.0))
    if window_s <= 0 or (mode == "beats" and not 0 <= beat_offset_s < window_s):
      raise ValueError(f"--window_s={window_s} / --beat_offset_s={beat_offset_s}: need "
                       "window_s > 0 and 0 <= beat_offset_s < window_s")
    self.base, self.mode, self.window_s = base, mode, window_s
    self.annotations, self.split_scheme = annotations, split_scheme
    self.beat_offset_s, self.max_per_record = float(beat_offset_s), int(max_per_record)
    self.val_records, self.seed = int(val_records), int(seed)
    self._items, self._splits = [], {}
    symbols, skipped, rhythms = collections.Counter(), collections.Counter(), set()
    excluded, no_ann = [], []
    for item in base.list_items():
      rid = base._record_id(item)  # pylint: disable=protected-access
      path = os.path.join(base.input_dir, item)
      if not os.path.exists(f"{path}.{annotations}"):
        no_ann.append(rid)
        continue
      split = ""
      if split_scheme == "mitbih_inter_patient":
        split = inter_patient_split(rid, self.val_records, self.seed)
        if split is None:
          excluded.append(rid)
          continue
      self._items.append(item)
      self._splits[item] = split
      header = wfdb.rdheader(path)
      sample, symbol, aux = read_annotations(path, annotations)
      rhythms |= {r for *_, r in rhythm_intervals(sample, symbol, aux, header.sig_len)}
      if mode == "beats":
        fs = float(header.fs)
        _, _, keep = beat_positions(sample, symbol, header.sig_len,
                                    int(round(beat_offset_s * fs)), int(round(window_s * fs)))
        beat_sym = [s for s in symbol if s in BEAT_SYMBOLS]
        for s, k in zip(beat_sym, keep):
          symbols[s] += 1
          if s not in AAMI_MAP:
            skipped[f"symbol {s!r} not in the AAMI table"] += 1
          elif not k:
            skipped["window crosses the record edge"] += 1
    if mode == "beats":
      self.label_names, self.label_type = AAMI_CLASSES, "class_index"
    else:
      self.label_names = KNOWN_RHYTHMS + tuple(sorted(rhythms - set(KNOWN_RHYTHMS)))
      self.label_type = "multi_hot"
    self._summary = {"segment": mode, "window_s": window_s, "annotations": annotations,
                     "split_scheme": split_scheme, "records": len(self._items),
                     "records_without_annotations": no_ann,
                     "records_outside_split_scheme": excluded,
                     "record_splits": {base._record_id(i): s  # pylint: disable=protected-access
                                       for i, s in self._splits.items()},
                     "max_per_record": self.max_per_record}
    if mode == "beats":
      self._summary.update(beat_offset_s=self.beat_offset_s, beat_symbols=dict(symbols),
                           beats_skipped=dict(skipped),
                           aami_map={k: v for k, v in AAMI_MAP.items()})

  def list_items(self) -> list[str]:
    return list(self._items)

  def read(self, item: str) -> list[EcgRecord] | Reject:
    rec = self.base.read(item)
    if isinstance(rec, Reject):
      return rec
    rec.split = self._splits[item]
    rec.labels = ()
    sample, symbol, aux = read_annotations(os.path.join(self.base.input_dir, item),
                                           self.annotations)
    if self.mode == "beats":
      return beat_examples(rec, sample, symbol, self.window_s, self.beat_offset_s,
                           self.max_per_record, self.seed)
    return window_examples(rec, sample, symbol, aux, self.window_s, self.label_names,
                           self.max_per_record, self.seed)

  def summary(self) -> dict[str, Any]:
    return dict(self.base.summary(), segmentation=self._summary)
