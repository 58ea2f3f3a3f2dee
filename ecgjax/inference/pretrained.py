"""Embedding API for downstream users: raw ECG arrays in, frozen-encoder features out.

  model = ecgjax.load_pretrained("runs/hl/export")
  emb = model.embed(signals, sampling_rate=500, leads=("I", "II", "V1"))   # [N, 2D] float32

``signals`` are mV, [N, leads, samples] or one record [leads, samples] (or a list of
records of different lengths), at any rate and any subset / order of the 12 standard
leads. Each record goes through the same host functions as the training pipeline
(``preprocess.lead_rows``, ``extract_segment``, ``windows.on_host``) with the export's rate,
lead order, window and normalisation, so the embedding equals what the trained encoder
computes on the pipeline's eval-mode batch for that record. Leads the model knows but
the input lacks are masked out (not zero-filled), exactly as in training.

Window policy (``mode``):
  'rpeak' (default) the pipeline's eval window: it starts ``pre_r_s`` before the first R
          peak that leaves a full window (peaks from ``r_peaks`` or detected with the
          converter's detector on the model's leads), else at sample 0;
  'first' the first window of the record;
  'mean'  the mean embedding over consecutive non-overlapping windows from sample 0
          (a trailing partial window is dropped).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ecgjax.data import preprocess
from ecgjax.data import rpeaks
from ecgjax.data import windows as windows_lib
from ecgjax.data.records import STANDARD_LEADS, canonical_lead
from ecgjax.inference import encoder as encoder_lib

MODES = ("rpeak", "first", "mean")


def check_leads(leads: Sequence[str], model_leads: Sequence[str]) -> tuple[str, ...]:
  """Canonical lead names; raises on unknown or duplicate names or no usable lead."""
  names = tuple(canonical_lead(str(l)) for l in leads)
  unknown = [l for l, c in zip(leads, names) if c not in STANDARD_LEADS]
  if unknown:
    raise ValueError(f"unknown lead name(s) {unknown}; expected names from {STANDARD_LEADS} "
                     "(case and aliases such as 'AVR' or 'MLII' are accepted)")
  dup = sorted({c for c in names if names.count(c) > 1})
  if dup:
    raise ValueError(f"duplicate lead(s) {dup} in leads={list(leads)}")
  if not set(names) & set(model_leads):
    raise ValueError(f"none of the leads {list(leads)} is used by the model "
                     f"(it expects {list(model_leads)})")
  return names


class Pretrained:
  """A frozen encoder plus the preprocessing its export config prescribes."""

  def __init__(self, enc: encoder_lib.Encoder, batch_size: int = 64):
    self.encoder = enc
    self.config = enc.meta
    self.window = enc.window
    self._batch_size = int(batch_size)
    self._embedder: encoder_lib.BatchEmbedder | None = None

  @property
  def leads(self) -> tuple[str, ...]:
    return self.window.leads

  @property
  def sampling_rate(self) -> float:
    return self.window.sampling_rate

  @property
  def window_s(self) -> float:
    return self.window.window_samples / self.window.sampling_rate

  @property
  def embedding_dim(self) -> int:
    return 2 * int(self.encoder.model.cfg.width)

  def _batch_embedder(self) -> encoder_lib.BatchEmbedder:
    if self._embedder is None:
      self._embedder = encoder_lib.BatchEmbedder(self.encoder.model, self._batch_size)
    return self._embedder

  # ------------------------------------------------------------------------- windows
  def source_length(self, sampling_rate: float) -> int:
    """Samples a record at ``sampling_rate`` needs for one window."""
    return int(math.ceil(self.window.window_samples * sampling_rate / self.sampling_rate))

  def check_record(self, signal: np.ndarray, sampling_rate: float, leads: Sequence[str],
                   index: int = 0) -> np.ndarray:
    """[leads, samples] float32 mV, or ValueError naming record ``index`` and the problem."""
    x = np.asarray(signal)
    if x.ndim != 2 or x.shape[0] != len(leads):
      raise ValueError(f"record {index}: expected [{len(leads)} leads, samples], got shape "
                       f"{x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
      raise ValueError(f"record {index}: signal dtype {x.dtype} is not real-valued")
    if not sampling_rate or sampling_rate <= 0:
      raise ValueError(f"record {index}: sampling_rate must be > 0, got {sampling_rate}")
    x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x)
    if bad.any():
      lead, sample = np.argwhere(bad)[0]
      raise ValueError(f"record {index}: {int(bad.sum())} NaN/inf value(s), first in lead "
                       f"{leads[lead]} at sample {sample}; clean or drop the record")
    need = self.source_length(sampling_rate)
    if x.shape[1] < need:
      raise ValueError(f"record {index}: {x.shape[1]} samples at {sampling_rate:g} Hz "
                       f"({x.shape[1] / sampling_rate:.2f} s) is shorter than the model's "
                       f"{self.window_s:g} s window ({need} samples at this rate)")
    return x

  def windows(self, signal: np.ndarray, sampling_rate: float, leads: Sequence[str],
              mode: str = "rpeak", r_peaks: np.ndarray | None = None, index: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """(normalised windows [K, L, W] float32, lead mask [L]) of one record."""
    if mode not in MODES:
      raise ValueError(f"mode={mode!r}; expected one of {MODES}")
    names = check_leads(leads, self.leads)
    x = self.check_record(signal, sampling_rate, names, index)
    w = self.window
    rows, present = preprocess.lead_rows(names, w.leads)
    need = self.source_length(sampling_rate)
    num_samples = x.shape[1]
    if mode == "mean":
      starts = list(range(0, num_samples - need + 1, need))
    elif mode == "first":
      starts = [0]
    else:
      if r_peaks is None:
        used = rows[present]
        r_peaks = rpeaks.detect_r_peaks(x[used], sampling_rate,
                                        [names[i] for i in used])
      starts = [preprocess.first_beat_start(np.asarray(r_peaks, np.int64), num_samples, need,
                                            int(round(w.pre_r_s * sampling_rate)))]
    ratio = sampling_rate / w.sampling_rate
    w = dataclasses.replace(w, source_rates=(float(sampling_rate),))  # sizes the context
    seg_len = w.segment_length(sampling_rate)
    n = 1 << (len(starts) - 1).bit_length()  # a power of two: few distinct compiled shapes
    segs = np.zeros((n, len(rows), seg_len), np.float32)
    valid = np.zeros(n, np.int32)
    for i, s in enumerate(starts):
      valid[i] = preprocess.extract_segment(x, rows, s - w.context, seg_len, segs[i])
    batch = {"seg1": segs, "valid1": valid, "ratio1": np.full(n, ratio, np.float32),
             "lead_mask": np.tile(present, (n, 1)),
             "scale": np.tile(present.astype(np.float32), (n, 1))}
    out = windows_lib.on_host(batch, w)["view1"][:len(starts)]
    return out, present

  # ------------------------------------------------------------------------ embedding
  def embed_records(self, records: Iterable[dict[str, Any]], mode: str = "rpeak",
                    on_error: str = "raise") -> Iterator[tuple[np.ndarray | None, str | None]]:
    """Streams (embedding [D] or None, error or None) per record, in order.

    Each record is a dict with 'signal' [leads, samples] mV, 'sampling_rate', 'leads' and
    optionally 'r_peaks'. With on_error='skip' a bad record yields (None, reason).
    """
    embedder = self._batch_embedder()
    pending: list[tuple[np.ndarray | None, np.ndarray | None, str | None]] = []

    def flush():
      wins = [p for p in pending if p[0] is not None]
      if wins:
        x = np.concatenate([p[0] for p in wins])
        m = np.concatenate([np.broadcast_to(p[1], (p[0].shape[0], p[1].size)) for p in wins])
        chunks = [embedder(x[i:i + embedder.batch_size], m[i:i + embedder.batch_size])
                  for i in range(0, x.shape[0], embedder.batch_size)]
        emb = encoder_lib.gather(chunks)
      at = 0
      for win, _, err in pending:
        if win is None:
          yield None, err
        else:
          yield emb[at:at + win.shape[0]].mean(0), None
          at += win.shape[0]
      pending.clear()

    num_windows = 0
    for i, rec in enumerate(records):
      try:
        win, mask = self.windows(rec["signal"], rec["sampling_rate"], rec["leads"], mode,
                                 rec.get("r_peaks"), index=rec.get("index", i))
        pending.append((win, mask, None))
        num_windows += win.shape[0]
      except ValueError as e:
        if on_error != "skip":
          raise
        pending.append((None, None, str(e)))
      if num_windows >= embedder.batch_size:
        yield from flush()
        num_windows = 0
    yield from flush()

  def embed(self, signals: Any, sampling_rate: float | Sequence[float],
            leads: Sequence[str] = STANDARD_LEADS, *, mode: str = "rpeak",
            r_peaks: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """[N, D] float32 embeddings of N records (window policy: see the module docstring).

    Args:
      signals: [N, leads, samples] or [leads, samples] array in mV, or a list of
        [leads, samples] arrays (lengths may differ).
      sampling_rate: Hz, one for all records or one per record.
      leads: the lead name of each row (any subset / order of the 12 standard leads).
      mode: window policy, 'rpeak' | 'first' | 'mean'.
      r_peaks: optional per-record R-peak sample indices (skips detection in 'rpeak').

    Returns:
      float32 [N, D] (N = 1 for a single [leads, samples] record).
    """
    if isinstance(signals, (list, tuple)):
      records = list(signals)
    else:
      arr = np.asarray(signals)
      if arr.ndim == 2:
        arr = arr[None]
      if arr.ndim != 3:
        raise ValueError(f"signals must be [N, leads, samples] or [leads, samples], got "
                         f"shape {arr.shape}")
      records = list(arr)
    rates = (list(sampling_rate) if isinstance(sampling_rate, (list, tuple, np.ndarray))
             else [sampling_rate] * len(records))
    if len(rates) != len(records):
      raise ValueError(f"{len(rates)} sampling rates for {len(records)} records")
    if r_peaks is not None and len(r_peaks) != len(records):
      raise ValueError(f"{len(r_peaks)} r_peaks arrays for {len(records)} records")
    check_leads(leads, self.leads)
    stream = ({"signal": s, "sampling_rate": float(r), "leads": leads,
               "r_peaks": None if r_peaks is None else r_peaks[i], "index": i}
              for i, (s, r) in enumerate(zip(records, rates)))
    out = [e for e, _ in self.embed_records(stream, mode)]
    if not out:
      return np.zeros((0, self.embedding_dim), np.float32)
    return np.stack(out).astype(np.float32)


def load_pretrained(path: str, batch_size: int = 64, random_seed: int | None = None
                    ) -> Pretrained:
  """An export directory (or a training workdir) -> :class:`Pretrained`.

  With ``random_seed`` the weights are a fresh initialisation of the same architecture
  (a baseline for comparisons).
  """
  if random_seed is not None:
    enc = encoder_lib.load("random", random_like=path, seed=int(random_seed))
  else:
    enc = encoder_lib.load(path)
  return Pretrained(enc, batch_size=batch_size)
