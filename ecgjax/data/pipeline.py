"""grain input pipeline: shards -> shuffled, per-process, fixed-shape batches of two views.

  MapDataset.source(ShardedSource).seed(s).shuffle().repeat()[pid::nproc]
    .random_map(CropViews)            # decode, pick leads, R-peak starts and stretches
    .batch(local_batch, SegmentBatch) # copy the cut raw samples into the batch
    -> to_iter_dataset -> mp_prefetch(workers)
  then, jitted in the train step: windows.views (resample, normalise), augment, mask.

The host only parses and slices (int16 in, int16 out); the numeric work runs on the
device, where it is nearly free, instead of on the host cores that feed it.

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
from ecgjax.data import windows
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
  segment_dtype: str = "float32"         # 'int16' when every record is stored as int16

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
               normalize=data_cfg.normalize, lead_stats=stats, source_rates=tuple(rates),
               segment_dtype=segment_dtype(spec))

  def segment_length(self, source_rate: float) -> int:
    """Raw samples cut per view from a record at ``source_rate``."""
    return preprocess.segment_length(self.window_samples, source_rate / self.sampling_rate,
                                     max(self.stretch[1], 1.0))

  def buffer_length(self) -> int:
    """Fixed per-view segment length (raw samples) for every rate in the dataset."""
    return max(self.segment_length(r) for r in (self.source_rates or (self.sampling_rate,)))

  def batch_struct(self, batch: int, views: int = 2) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{key: (shape, dtype)} of a segment batch (what the jitted step is compiled for)."""
    num_leads, s = len(self.leads), self.buffer_length()
    out = {"lead_mask": ((batch, num_leads), np.bool_),
           "scale": ((batch, num_leads), np.float32), "k": ((batch,), np.int32)}
    for v in range(1, views + 1):
      out.update({f"seg{v}": ((batch, num_leads, s), np.dtype(self.segment_dtype)),
                  f"ratio{v}": ((batch,), np.float32), f"valid{v}": ((batch,), np.int32)})
    return out


def random_batch(window: WindowConfig, batch: int, seed: int = 0, gain: float = 1000.0
                 ) -> dict[str, np.ndarray]:
  """A segment batch of Gaussian noise (about 1 mV), all leads on: for step benchmarks/tests."""
  rng = np.random.default_rng(seed)
  rate = max(window.source_rates or (window.sampling_rate,))
  k = preprocess.decimation(rate, window.sampling_rate)
  out = {}
  for key, (shape, dtype) in window.batch_struct(batch).items():
    if key.startswith("seg"):
      out[key] = (rng.standard_normal(shape) * gain).astype(dtype)
    elif key.startswith("ratio"):
      out[key] = np.full(shape, rate / window.sampling_rate, dtype)
    elif key.startswith("valid"):
      out[key] = np.full(shape, window.buffer_length(), dtype)
    elif key == "k":
      out[key] = np.full(shape, k, dtype)
    elif key == "scale":
      out[key] = np.full(shape, 1.0 / (k * gain), dtype)
    else:
      out[key] = np.ones(shape, dtype)
  return out


def segment_dtype(spec: dict[str, Any] | None) -> str:
  """int16 segments (half the bytes of float32) when the spec says every record is int16."""
  return "int16" if spec is not None and spec.get("signal_dtypes") == ["int16"] else "float32"


def lead_stats_array(lead_stats: dict[str, Any], leads: Sequence[str]) -> np.ndarray:
  """spec.json-style {lead: {mean, std}} -> [2, L] float32 (absent leads: mean 0, std 1)."""
  return np.asarray([[lead_stats.get(l, {}).get("mean", 0.0) for l in leads],
                     [lead_stats.get(l, {}).get("std", 1.0) for l in leads]], np.float32)


class CropViews(grain.transforms.RandomMap):
  """Serialized Example -> where to cut one (eval) or two (train) views; no slicing yet.

  Each view is its own R-peak-aligned window with its own time stretch, so the
  contrastive pair differs in beat and tempo; device-side augmentations add the rest.
  Eval mode gives one deterministic window (starting at the first complete beat).
  The element keeps the decoded record's signal (one array per record);
  :class:`SegmentBatch` copies just the cut samples into the batch, and
  :mod:`ecgjax.data.windows` resamples whole batches.
  """

  def __init__(self, window: WindowConfig, num_classes: int, label_encoding: str,
               train: bool = True):
    self.window = window
    self.num_classes = num_classes
    self.label_encoding = label_encoding
    self.train = train
    self.dtype = np.dtype(window.segment_dtype)

  def _cut(self, rec: dict[str, Any], rng: np.random.Generator | None, out, v: int):
    w = self.window
    rate = rec["sampling_rate"]
    stretch = 1.0 if rng is None else rng.uniform(*w.stretch)
    ratio = rate / w.sampling_rate * stretch
    src_len = int(np.ceil(w.window_samples * ratio))
    pre_r = int(round(w.pre_r_s * rate))
    num_samples = rec["signal"].shape[1]
    if rng is None:
      r = rec["r_peaks"] - pre_r
      ok = r[(r >= 0) & (r + src_len <= num_samples)]
      start = int(ok[0]) if ok.size else 0
    else:
      start = preprocess.choose_start(rng, rec["r_peaks"], num_samples, src_len, pre_r)
    out[f"start{v}"], out[f"len{v}"], out[f"ratio{v}"] = start, w.segment_length(rate), ratio

  def labels(self, label: np.ndarray) -> np.ndarray:
    if self.label_encoding == "multi_hot":
      return label.astype(np.float32)
    hot = np.zeros(self.num_classes, np.float32)
    hot[label] = 1.0
    return hot

  def random_map(self, data, rng: np.random.Generator | None) -> dict[str, Any] | None:
    if data is None:  # a corrupt record skipped by the source.
      return None
    rec = example.decode(data)
    if rec["signal"].dtype != self.dtype and self.dtype == np.int16:
      raise ValueError(f"record {rec['record_id']!r} stores {rec['signal'].dtype} samples but "
                       f"spec.json signal_dtypes says int16 only; the spec and shards disagree")
    rows, present = preprocess.lead_rows(rec["leads"], self.window.leads)
    k = preprocess.decimation(rec["sampling_rate"], self.window.sampling_rate)
    scale = np.zeros(rows.size, np.float32)
    scale[present] = 1.0 / (k * rec["gain"][rows[present]])
    in_order = rows.size == len(rec["leads"]) and rows.tolist() == list(range(rows.size))
    out = {"signal": rec["signal"], "rows": None if in_order else rows, "lead_mask": present,
           "label": self.labels(rec["label"]), "scale": scale, "k": k}
    for v in ((1, 2) if self.train else (1,)):
      self._cut(rec, rng, out, v)
    return out


class SegmentBatch:
  """grain batch_fn: cut records -> a segment batch (fields: :mod:`ecgjax.data.windows`).

  Copies each view's samples straight from the decoded record into the batch arrays (no
  per-view array, no np.stack). Writing straight into grain's shared memory instead was
  measured slower (5.6k vs 7.1k samples/s with 2 workers: fresh shm pages fault on every
  small strided write), so grain copies finished batches there itself. Records skipped as
  corrupt (None) are dropped, so an eval batch may be short.
  """

  def __init__(self, window: WindowConfig, views: int):
    self.window = window
    self.views = views

  def __call__(self, elements: Sequence[dict[str, Any] | None]) -> dict[str, np.ndarray]:
    records = [e for e in elements if e is not None]
    if not records:
      raise ValueError(f"all {len(elements)} records of a batch were skipped as corrupt")
    n = len(records)
    out = {key: np.empty(shape, dtype)
           for key, (shape, dtype) in self.window.batch_struct(n, self.views).items()}
    out["label"] = np.stack([r["label"] for r in records])
    for i, r in enumerate(records):
      out["lead_mask"][i], out["scale"][i], out["k"][i] = r["lead_mask"], r["scale"], r["k"]
      for v in range(1, self.views + 1):
        out[f"ratio{v}"][i] = r[f"ratio{v}"]
        out[f"valid{v}"][i] = preprocess.extract_segment(
            r["signal"], r["rows"], r[f"start{v}"], r[f"len{v}"], out[f"seg{v}"][i])
    return out


class ResampleViews(grain.transforms.Map):
  """Host-side finish for eval batches: segments -> {'view1', 'lead_mask', 'label'}."""

  def __init__(self, window: WindowConfig):
    self.window = window

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"lead_mask": batch["lead_mask"], "label": batch["label"],
            **windows.on_host(batch, self.window)}


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
  """Infinite, seeded, per-process dataset of two-view segment batches.

  Batches hold raw segments (see :mod:`ecgjax.data.windows` for the fields); the train
  step turns them into windows with ``windows.views`` on the device.
  """
  source = open_split(data_cfg, split or data_cfg.train_split)
  if len(source) < process_count:
    raise ValueError(f"{source!r} has fewer records than JAX processes ({process_count})")
  window = WindowConfig.from_config(data_cfg, source.spec)
  num_classes = len(source.spec["label_names"])
  ds = process_records(source, seed, process_index, process_count)
  ds = ds.random_map(CropViews(window, num_classes, source.spec["label_encoding"], train=True))
  read = grain.ReadOptions(num_threads=int(data_cfg.read_threads),
                           prefetch_buffer_size=int(data_cfg.prefetch))
  batch_fn = SegmentBatch(window, views=2)
  if data_cfg.get("skip_corrupt", False):
    # grain cannot batch a filtered MapDataset: records skipped as corrupt are dropped on
    # the iterator, so batches keep their size.
    it_ds = ds.to_iter_dataset(read).filter(lambda x: x is not None)
    it_ds = it_ds.batch(local_batch, drop_remainder=True, batch_fn=batch_fn)
  else:
    # Batches (not records) are the unit the read threads and workers prefetch: grain's
    # per-element iterator overhead was ~half the host time when records were.
    it_ds = ds.batch(local_batch, drop_remainder=True, batch_fn=batch_fn).to_iter_dataset(read)
  if int(data_cfg.num_workers) > 0:
    # grain's worker processes read absl flags; library callers (tests, notebooks) may
    # not have parsed any.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data_cfg.num_workers)))
  logging.info("train data: %r, window %d samples @ %g Hz, %d leads, local batch %d, "
               "%s segments of %d samples", source, window.window_samples,
               window.sampling_rate, len(window.leads), local_batch, window.segment_dtype,
               window.buffer_length())
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
  return ds.batch(batch_size, drop_remainder=False, batch_fn=SegmentBatch(window, 1)).map(
      ResampleViews(window)), source
