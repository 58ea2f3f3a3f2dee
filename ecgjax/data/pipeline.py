"""grain input pipeline: shards -> shuffled, per-process, fixed-shape batches of two views.

  MapDataset.source(ShardedSource).seed(s).shuffle().repeat()[pid::nproc]
    .random_map(CropViews)            # decode, leads, R-peak crops, resample, normalise
    .batch(local_batch) -> to_iter_dataset -> mp_prefetch(workers)

The iterator's ``get_state()/set_state()`` (an index into this deterministic sequence) is
what Orbax checkpoints, so a restarted job continues with exactly the next batch.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import grain
from absl import flags
import numpy as np

from ecgjax.data import example
from ecgjax.data import preprocess
from ecgjax.data.source import ShardedSource


@dataclasses.dataclass(frozen=True)
class WindowConfig:
  """What the model consumes: lead order, rate and window length (all from config.data)."""

  leads: tuple[str, ...]
  sampling_rate: float
  window_samples: int
  pre_r_s: float = 0.25
  stretch: tuple[float, float] = (1.0, 1.0)
  normalize: str = "record"
  lead_stats: np.ndarray | None = None  # [2, L] mean/std mV for normalize='dataset'
  source_rates: tuple[float, ...] = ()   # every rate in the shards (sizes the buffers)

  @classmethod
  def from_config(cls, data_cfg, spec: dict[str, Any] | None = None) -> "WindowConfig":
    leads = tuple(data_cfg.leads)
    stats = None
    if data_cfg.normalize == "dataset":
      if spec is None:
        raise ValueError("data.normalize='dataset' needs the shards' spec.json lead_stats")
      stats = lead_stats_array(spec["lead_stats"], leads)
    rates = [float(r) for r in (spec or {}).get("sampling_rates", {})] or [data_cfg.sampling_rate]
    return cls(leads=leads, sampling_rate=float(data_cfg.sampling_rate),
               window_samples=int(round(data_cfg.window_s * data_cfg.sampling_rate)),
               pre_r_s=float(data_cfg.pre_r_s), stretch=tuple(data_cfg.stretch),
               normalize=data_cfg.normalize, lead_stats=stats, source_rates=tuple(rates))

  def segment_length(self, source_rate: float) -> int:
    """Raw samples cut per view from a record at ``source_rate`` (before decimation)."""
    return preprocess.segment_length(self.window_samples, source_rate / self.sampling_rate,
                                     max(self.stretch[1], 1.0))

  def buffer_length(self) -> int:
    """Fixed per-view segment length after decimation, for every rate in the dataset."""
    return max(self.segment_length(r) // preprocess.decimation(r, self.sampling_rate)
               for r in (self.source_rates or (self.sampling_rate,)))


def lead_stats_array(lead_stats: dict[str, Any], leads: Sequence[str]) -> np.ndarray:
  """spec.json-style {lead: {mean, std}} -> [2, L] float32 (absent leads: mean 0, std 1)."""
  return np.asarray([[lead_stats.get(l, {}).get("mean", 0.0) for l in leads],
                     [lead_stats.get(l, {}).get("std", 1.0) for l in leads]], np.float32)


class CropViews(grain.transforms.RandomMap):
  """Serialized Example -> raw R-peak-aligned segments for one (eval) or two (train) views.

  Each view is its own R-peak-aligned window with its own time stretch, so the
  contrastive pair differs in beat and tempo; device-side augmentations add the rest.
  Eval mode gives one deterministic window (starting at the first complete beat).
  Only slicing happens here; :class:`ResampleViews` interpolates whole batches.
  """

  def __init__(self, window: WindowConfig, num_classes: int, label_encoding: str,
               train: bool = True):
    self.window = window
    self.num_classes = num_classes
    self.label_encoding = label_encoding
    self.train = train
    self.buffer_len = window.buffer_length()

  def _segment(self, rec: dict[str, Any], rows, rng: np.random.Generator | None, out, v: int):
    w = self.window
    stretch = 1.0 if rng is None else rng.uniform(*w.stretch)
    ratio = rec["sampling_rate"] / w.sampling_rate * stretch
    src_len = int(np.ceil(w.window_samples * ratio))
    pre_r = int(round(w.pre_r_s * rec["sampling_rate"]))
    num_samples = rec["signal"].shape[1]
    if rng is None:
      r = rec["r_peaks"] - pre_r
      ok = r[(r >= 0) & (r + src_len <= num_samples)]
      start = int(ok[0]) if ok.size else 0
    else:
      start = preprocess.choose_start(rng, rec["r_peaks"], num_samples, src_len, pre_r)
    k = preprocess.decimation(rec["sampling_rate"], w.sampling_rate)
    seg_len = w.segment_length(rec["sampling_rate"])
    if rec["sampling_rate"] not in w.source_rates or seg_len // k > self.buffer_len:
      seg_len = self.buffer_len * k  # a rate spec.json did not list: cut what fits
    seg, scale, valid = preprocess.extract_segment(rec["signal"], rows, rec["gain"], start,
                                                   seg_len, k)
    if seg.shape[1] < self.buffer_len:  # mixed rates: pad to the batch's fixed shape
      seg = np.pad(seg, ((0, 0), (0, self.buffer_len - seg.shape[1])))
    out[f"seg{v}"], out[f"ratio{v}"], out[f"valid{v}"] = seg, np.float64(ratio), np.int64(valid)
    out["scale"], out["k"] = scale, np.int64(k)

  def labels(self, label: np.ndarray) -> np.ndarray:
    if self.label_encoding == "multi_hot":
      return label.astype(np.float32)
    hot = np.zeros(self.num_classes, np.float32)
    hot[label] = 1.0
    return hot

  def random_map(self, data: bytes | None, rng: np.random.Generator | None) -> dict[str, np.ndarray] | None:
    if data is None:  # a corrupt record skipped by the source.
      return None
    rec = example.decode(data)
    rows, present = preprocess.lead_rows(rec["leads"], self.window.leads)
    out = {"lead_mask": present, "label": self.labels(rec["label"])}
    for v in ((1, 2) if self.train else (1,)):
      self._segment(rec, rows, rng, out, v)
    return out


class ResampleViews(grain.transforms.Map):
  """Batched segments -> {'view1'[, 'view2'], 'lead_mask', 'label'}: resample + normalise."""

  def __init__(self, window: WindowConfig):
    self.window = window

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    w = self.window
    out = {"lead_mask": batch["lead_mask"], "label": batch["label"]}
    for v in (1, 2):
      if f"seg{v}" in batch:
        x = preprocess.resample_batch(batch[f"seg{v}"], batch["scale"], batch[f"ratio{v}"],
                                      batch[f"valid{v}"], w.window_samples, batch["k"])
        out[f"view{v}"] = preprocess.normalize_batch(x, batch["lead_mask"], w.normalize,
                                                     w.lead_stats)
    return out


def open_split(data_cfg, split: str) -> ShardedSource:
  return ShardedSource(data_cfg.path, split, skip_corrupt=bool(data_cfg.get("skip_corrupt", False)))


def process_records(source, seed: int | None, process_index: int = 0,
                    process_count: int = 1) -> grain.MapDataset:
  """The serialized records this JAX process reads, in order.

  With a seed: the seeded global shuffle, repeated; process p takes elements p, p + n, ...
  of it, so each epoch of the global order is split disjointly and completely over the n
  processes. Without a seed: one pass in storage order (eval), split the same way.
  """
  ds = grain.MapDataset.source(source)
  if seed is not None:
    ds = ds.seed(seed).shuffle().repeat()
  return ds[process_index::process_count]


def make_train_dataset(data_cfg, local_batch: int, seed: int, process_index: int = 0,
                       process_count: int = 1, split: str | None = None) -> grain.IterDataset:
  """Infinite, seeded, per-process dataset of two-view batches."""
  source = open_split(data_cfg, split or data_cfg.train_split)
  if len(source) < process_count:
    raise ValueError(f"{source!r} has fewer records than JAX processes ({process_count})")
  window = WindowConfig.from_config(data_cfg, source.spec)
  num_classes = len(source.spec["label_names"])
  ds = process_records(source, seed, process_index, process_count)
  ds = ds.random_map(CropViews(window, num_classes, source.spec["label_encoding"], train=True))
  read = grain.ReadOptions(num_threads=int(data_cfg.read_threads),
                           prefetch_buffer_size=int(data_cfg.prefetch))
  if data_cfg.get("skip_corrupt", False):
    # grain cannot batch a filtered MapDataset: drop skipped records on the iterator, so
    # batches keep their fixed size.
    it_ds = ds.to_iter_dataset(read).filter(lambda x: x is not None)
    it_ds = it_ds.batch(local_batch, drop_remainder=True).map(ResampleViews(window))
  else:
    it_ds = ds.batch(local_batch, drop_remainder=True).map(ResampleViews(window))
    it_ds = it_ds.to_iter_dataset(read)
  if int(data_cfg.num_workers) > 0:
    # grain's worker processes read absl flags; library callers (tests, notebooks) may
    # not have parsed any.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data_cfg.num_workers)))
  logging.info("train data: %r, window %d samples @ %g Hz, %d leads, local batch %d",
               source, window.window_samples, window.sampling_rate, len(window.leads), local_batch)
  return it_ds


def make_eval_dataset(data_cfg, split: str, batch_size: int, process_index: int = 0,
                      process_count: int = 1) -> tuple[grain.MapDataset, ShardedSource]:
  """One deterministic pass over ``split``: fixed windows, last batch kept (may be short)."""
  source = open_split(data_cfg, split)
  window = WindowConfig.from_config(data_cfg, source.spec)
  num_classes = len(source.spec["label_names"])
  ds = process_records(source, None, process_index, process_count)
  crop = CropViews(window, num_classes, source.spec["label_encoding"], train=False)
  ds = ds.map(lambda data: crop.random_map(data, None))
  # Records skipped as corrupt (None) are dropped inside their batch, which then is shorter.
  return ds.batch(batch_size, drop_remainder=False, batch_fn=_stack_valid).map(
      ResampleViews(window)), source


def _stack_valid(elements):
  valid = [e for e in elements if e is not None]
  if not valid:
    raise ValueError(f"all {len(elements)} records of an eval batch were skipped as corrupt")
  return {k: np.stack([e[k] for e in valid]) for k in valid[0]}
