"""grain input pipeline: shards -> shuffled, per-process, fixed-shape batches of two views.

  TrainBatches[k]                     # batch k: RecordOrder (seeded epochs, this process's
                                      # share) -> ShardedSource -> SegmentCutter per record
    -> to_iter_dataset(read threads) -> mp_prefetch(workers, optional)
  then, jitted in the train step: windows.views (resample, normalise), augment, mask.

The host only parses and slices (int16 in, int16 out); the numeric work runs on the
device, where it is nearly free, instead of on the host cores that feed it.

The iterator's ``get_state()/set_state()`` (an index into this deterministic sequence) is
what Orbax checkpoints, so a restarted job continues with exactly the next batch.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
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

  @property
  def context(self) -> int:
    """Raw samples cut before each window, for the resampling kernel (same for all rates)."""
    rates = self.source_rates or (self.sampling_rate,)
    return preprocess.resample_context(max(rates) / self.sampling_rate * max(self.stretch[1], 1.0))

  def segment_length(self, source_rate: float) -> int:
    """Raw samples cut per view from a record at ``source_rate`` (``context`` included)."""
    return preprocess.segment_length(self.window_samples, source_rate / self.sampling_rate,
                                     max(self.stretch[1], 1.0), self.context)

  def buffer_length(self) -> int:
    """Fixed per-view segment length (raw samples) for every rate in the dataset."""
    return max(self.segment_length(r) for r in (self.source_rates or (self.sampling_rate,)))

  def batch_struct(self, batch: int, views: int = 2) -> dict[str, tuple[tuple[int, ...], Any]]:
    """{key: (shape, dtype)} of a segment batch (what the jitted step is compiled for)."""
    num_leads, s = len(self.leads), self.buffer_length()
    out = {"lead_mask": ((batch, num_leads), np.bool_),
           "scale": ((batch, num_leads), np.float32)}
    for v in range(1, views + 1):
      out.update({f"seg{v}": ((batch, num_leads, s), np.dtype(self.segment_dtype)),
                  f"ratio{v}": ((batch,), np.float32), f"valid{v}": ((batch,), np.int32)})
    return out


def random_batch(window: WindowConfig, batch: int, seed: int = 0, gain: float = 1000.0
                 ) -> dict[str, np.ndarray]:
  """A segment batch of Gaussian noise (about 1 mV), all leads on: for step benchmarks/tests."""
  rng = np.random.default_rng(seed)
  rate = max(window.source_rates or (window.sampling_rate,))
  out = {}
  for key, (shape, dtype) in window.batch_struct(batch).items():
    if key.startswith("seg"):
      out[key] = (rng.standard_normal(shape) * gain).astype(dtype)
    elif key.startswith("ratio"):
      out[key] = np.full(shape, rate / window.sampling_rate, dtype)
    elif key.startswith("valid"):
      out[key] = np.full(shape, window.buffer_length(), dtype)
    elif key == "scale":
      out[key] = np.full(shape, 1.0 / gain, dtype)
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


class SegmentCutter:
  """One serialized record -> row ``j`` of a segment batch (fields: :mod:`windows`).

  Per record the host only indexes: it finds the signal inside the mapped shard (no copy,
  :func:`example.decode_view`), maps its leads to the configured order, picks each view's
  R-peak-aligned start and time stretch, and copies those raw samples straight into the
  batch arrays. Each training view is its own beat and tempo, so the contrastive pair
  differs in both; device-side augmentations add the rest. Without draws (eval) there is
  one deterministic window: no stretch, starting at the first complete beat.
  """

  def __init__(self, window: WindowConfig, num_classes: int, label_encoding: str, views: int):
    self.window = window
    self.num_classes = num_classes
    self.label_encoding = label_encoding
    self.views = views
    self.dtype = np.dtype(window.segment_dtype)
    self._keys = [(f"seg{v}", f"ratio{v}", f"valid{v}") for v in range(1, views + 1)]
    self._seg_len: dict[float, int] = {}

  def new_batch(self, n: int) -> dict[str, np.ndarray]:
    out = {key: np.empty(shape, dtype)
           for key, (shape, dtype) in self.window.batch_struct(n, self.views).items()}
    out["label"] = np.zeros((n, self.num_classes), np.float32)
    return out

  def fill(self, out: dict[str, np.ndarray], j: int, data, draws: np.ndarray | None) -> None:
    """Writes record ``data`` into row ``j``; ``draws`` [views, 2] uniforms pick stretch, beat."""
    w = self.window
    rec = example.decode_view(data)
    signal = rec["signal"]
    if signal.dtype != self.dtype and self.dtype == np.int16:
      raise ValueError(f"record {rec['record_id']!r} stores {signal.dtype} samples but "
                       f"spec.json signal_dtypes says int16 only; the spec and shards disagree")
    rows, present = preprocess.lead_rows(rec["leads"], w.leads)
    rate = rec["sampling_rate"]
    scale = out["scale"][j]
    scale[:] = 0.0
    scale[present] = 1.0 / rec["gain"][rows[present]]
    out["lead_mask"][j] = present
    if self.label_encoding == "multi_hot":
      out["label"][j] = rec["label"]
    elif self.label_encoding == "class_index":
      out["label"][j, rec["label"]] = 1.0  # 'none' (mixtures): the label stays empty.
    copy_rows = preprocess.copy_rows(rec["leads"], w.leads)
    seg_len = self._seg_len.get(rate) or self._seg_len.setdefault(rate, w.segment_length(rate))
    pre_r, num_samples = int(round(w.pre_r_s * rate)), signal.shape[1]
    context = w.context
    lo, hi = w.stretch
    for v, (seg, ratio_key, valid_key) in enumerate(self._keys):
      ratio = rate / w.sampling_rate * (1.0 if draws is None else lo + (hi - lo) * draws[v, 0])
      src_len = int(np.ceil(w.window_samples * ratio))
      if draws is None:
        start = preprocess.first_beat_start(rec["r_peaks"], num_samples, src_len, pre_r)
      else:
        start = preprocess.choose_start(draws[v, 1], rec["r_peaks"], num_samples, src_len, pre_r)
      out[ratio_key][j] = ratio
      out[valid_key][j] = preprocess.extract_segment(signal, copy_rows, start - context,
                                                     seg_len, out[seg][j])

  def __call__(self, records: Sequence[Any]) -> dict[str, np.ndarray]:
    """grain batch_fn for eval: records skipped as corrupt (None) are dropped (short batch)."""
    records = [r for r in records if r is not None]
    if not records:
      raise ValueError("every record of a batch was skipped as corrupt")
    out = self.new_batch(len(records))
    for j, data in enumerate(records):
      self.fill(out, j, data, None)
    return out


class RecordOrder(grain.MapDataset):
  """Element i = the index of the i-th record this JAX process reads.

  With a seed: epoch e is a seeded permutation of all n records (numpy, one per epoch and
  cached: grain's per-element ``index_shuffle`` cost 16 us a record here, a third of the
  host's whole per-record budget); the global stream is the epochs one after another and
  process p of P takes its elements p, p + P, ... so each epoch is split disjointly and
  completely. Without a seed: one pass in storage order, split the same way.
  """

  def __init__(self, num_records: int, seed: int | None, process_index: int = 0,
               process_count: int = 1):
    super().__init__()
    self.n, self.seed = int(num_records), seed
    self.process_index, self.process_count = int(process_index), int(process_count)
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    if self.seed is not None:
      return sys.maxsize
    return len(range(self.process_index, self.n, self.process_count))

  def __str__(self) -> str:
    return (f"RecordOrder(n={self.n}, seed={self.seed}, "
            f"process={self.process_index}/{self.process_count})")

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng((self.seed, epoch)).permutation(self.n)
      self._perms = {epoch: perm, **{e: p for e, p in self._perms.items() if e == epoch - 1}}
    return perm

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    g = self.process_index + int(index) * self.process_count
    if self.seed is None:
      if g >= self.n:
        raise IndexError(f"element {index} past this process's {len(self)} records")
      return g
    return int(self._perm(g // self.n)[g % self.n])


class TrainBatches(grain.MapDataset):
  """Element k = this process's k-th two-view segment batch: a pure function of (seed, k).

  One element per batch, not per record: grain's per-element chain (source -> shuffle ->
  random_map -> batch) cost ~50 us a record, more than the record's own work. A batch's
  random draws come from one generator seeded with (seed, process, k), so batch k is the
  same after a restore, with any number of workers. A record skipped as corrupt is replaced
  by the record at the same position of the next epoch, so batches keep their size.
  """

  def __init__(self, source: ShardedSource, cutter: SegmentCutter, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    super().__init__()
    self.source, self.cutter, self.batch_size, self.seed = source, cutter, batch_size, seed
    self.process_index = process_index
    self.order = RecordOrder(len(source), seed, process_index, process_count)
    self._per_epoch = -(-len(source) // process_count)

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"TrainBatches({self.source!r}, batch={self.batch_size}, seed={self.seed})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    k, b = int(index), self.batch_size
    draws = batch_draws(self.seed, self.process_index, k, b, self.cutter.views)
    out = self.cutter.new_batch(b)
    records = read_batch_replacing_corrupt(self.source, self.order, k * b, b, self._per_epoch)
    for j, record in enumerate(records):
      self.cutter.fill(out, j, record, draws[j])
    return out


MAX_REPLACEMENTS = 100


def batch_draws(seed: int, process_index: int, k: int, batch: int, views: int) -> np.ndarray:
  """[batch, views, 2] uniforms (stretch, beat) of batch k: one generator per batch."""
  return np.random.default_rng((seed, process_index, k)).random((batch, views, 2))


def read_replacing_corrupt(source: ShardedSource, order: RecordOrder, position: int,
                           per_epoch: int, first_attempt: int = 0):
  """The record at ``position`` of a process's stream, or, when it is corrupt (``None``,
  skip_corrupt), the one at the same position of the next epoch, so batches keep their size."""
  for attempt in range(first_attempt, MAX_REPLACEMENTS):
    data = source[order[position + attempt * per_epoch]]
    if data is not None:
      return data
  raise RuntimeError(f"{MAX_REPLACEMENTS} records in a row were corrupt in {source!r}; "
                     "the shards need re-converting")


def read_batch_replacing_corrupt(source: ShardedSource, order: RecordOrder, first: int,
                                 count: int, per_epoch: int) -> list:
  """:func:`read_replacing_corrupt` of positions ``first .. first + count - 1``; their first
  reads go to the source together (``read_many``: concurrent ranged GETs on a bucket)."""
  records = source.read_many([order[first + j] for j in range(count)])
  return [r if r is not None else
          read_replacing_corrupt(source, order, first + j, per_epoch, first_attempt=1)
          for j, r in enumerate(records)]


class _ReadBatch(grain.transforms.Map):
  """Record indices -> cut batch, read with one ``read_many`` (concurrent GETs on a bucket)."""

  def __init__(self, source: ShardedSource, cutter: SegmentCutter):
    self.source, self.cutter = source, cutter

  def map(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    return self.cutter(self.source.read_many(indices))


class ResampleViews(grain.transforms.Map):
  """Host-side finish for eval batches: segments -> {'view1', 'lead_mask', 'label'}."""

  def __init__(self, window: WindowConfig):
    self.window = window

  def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"lead_mask": batch["lead_mask"], "label": batch["label"],
            **windows.on_host(batch, self.window)}


def open_split(data_cfg, split: str) -> ShardedSource:
  """``split`` of config.data.path (of a mixture's first source: eval reads that one)."""
  from ecgjax.data import mixture  # pylint: disable=g-import-not-at-top (mixture imports us)
  return ShardedSource(mixture.primary_path(data_cfg), split,
                       skip_corrupt=bool(data_cfg.get("skip_corrupt", False)))


def process_records(source, seed: int | None, process_index: int = 0,
                    process_count: int = 1) -> grain.MapDataset:
  """The serialized records this JAX process reads, in order (see :class:`RecordOrder`)."""
  return RecordOrder(len(source), seed, process_index, process_count).map(source.__getitem__)


def make_train_dataset(data_cfg, local_batch: int, seed: int, process_index: int = 0,
                       process_count: int = 1, split: str | None = None) -> grain.IterDataset:
  """Infinite, seeded, per-process dataset of two-view segment batches.

  Batches hold raw segments (see :mod:`ecgjax.data.windows` for the fields); the train
  step turns them into windows with ``windows.views`` on the device. Only ``split``
  (default ``data_cfg.train_split``) is read, of every source of a mixture
  (:mod:`ecgjax.data.mixture`), so records of the other splits never reach pretraining.
  """
  from ecgjax.data import mixture  # pylint: disable=g-import-not-at-top (mixture imports us)
  split = split or data_cfg.train_split
  if mixture.is_mixture(data_cfg):
    window = WindowConfig.from_config(data_cfg, mixture.train_spec(data_cfg))
    ds = mixture.make_batches(data_cfg, split, window, local_batch, seed, process_index,
                              process_count)
    source = ds
  else:
    source = open_split(data_cfg, split)
    if len(source) < process_count:
      raise ValueError(f"{source!r} has fewer records than JAX processes ({process_count})")
    window = WindowConfig.from_config(data_cfg, source.spec)
    cutter = SegmentCutter(window, len(source.spec["label_names"]),
                           source.spec["label_encoding"], views=2)
    ds = TrainBatches(source, cutter, local_batch, seed, process_index, process_count)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(data_cfg.read_threads),
                                               prefetch_buffer_size=int(data_cfg.prefetch)))
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
  cutter = SegmentCutter(window, len(source.spec["label_names"]), source.spec["label_encoding"],
                         views=1)
  order = RecordOrder(len(source), None, process_index, process_count)
  # Records skipped as corrupt (None) are dropped inside their batch, which then is shorter.
  return order.batch(batch_size, drop_remainder=False).map(
      _ReadBatch(source, cutter)).map(ResampleViews(window)), source
