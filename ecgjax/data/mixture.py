"""Data mixtures: several shard directories, each with a sampling weight, in one run.

  config.data.path = "/data/ptbxl"                       # one source, as before
  config.data.path = "/data/ptbxl:0.7,/data/mitbih:0.3"  # PATH[:WEIGHT], comma-separated
  config.data.mixture = ("/data/ptbxl:0.7", "/data/mitbih:0.3")   # the same, as a list

A PATH may be a bucket URL (``gs://bucket/shards:0.7``). A weight defaults to 1; weights are
normalised to sum to 1. Sources may differ in rate, lead set and record length: every record
is cut to the model's window by the same :class:`~ecgjax.data.pipeline.SegmentCutter`.
Pretraining reads ``mixture`` when it is given, else ``path``; eval, plots and the demo
probe read ``path`` (its first entry), or the mixture's first source when ``path`` is empty
(:func:`primary_path`).

Batch k of a mixture stays a pure function of (seed, process, k), like the single-source
:class:`~ecgjax.data.pipeline.TrainBatches`: its per-source row counts are a multinomial
draw keyed on (seed, process, k), and source s's rows continue source s's own stream of
seeded epochs (a :class:`~ecgjax.data.pipeline.RecordOrder`, split across processes) at the
position the earlier batches' counts reach. Those counts are drawn in blocks of
``_BLOCK`` batches and summed once per block, so a resume at step k costs k / _BLOCK draws.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from typing import Any, Sequence

import grain
import numpy as np

from ecgjax.data import pipeline
from ecgjax.data import spec as spec_lib
from ecgjax.data.source import ShardedSource

_BLOCK = 1024


class MixtureError(ValueError):
  """A malformed data mixture; the message names the config field."""


@dataclasses.dataclass(frozen=True)
class Source:
  path: str
  weight: float


def _parse_entry(entry: Any, field: str) -> Source:
  if not isinstance(entry, str) or not entry.strip():
    raise MixtureError(f"config.{field}: {entry!r} is not a 'PATH[:WEIGHT]' string")
  text = entry.strip()
  path, weight = text, 1.0
  if ":" in text and not text.rsplit(":", 1)[1].startswith("//"):  # gs://b/x has no weight.
    head, tail = text.rsplit(":", 1)
    try:
      weight = float(tail)
    except ValueError as e:
      raise MixtureError(f"config.{field}: {entry!r}: the weight after ':' must be a number "
                         "(syntax PATH[:WEIGHT])") from e
    path = head.strip()
  if not path:
    raise MixtureError(f"config.{field}: {entry!r} has no path (syntax PATH[:WEIGHT])")
  if not np.isfinite(weight) or weight <= 0:
    raise MixtureError(f"config.{field}: {entry!r}: weight {weight:g} must be > 0")
  return Source(path, weight)


def parse_sources(data_cfg) -> list[Source]:
  """The sources of ``data_cfg`` (``mixture`` if given, else ``path``), weights summing to 1.

  Raises MixtureError naming the field for bad syntax or weights; paths are not checked
  here (see :func:`check_sources`).
  """
  mixture = data_cfg.get("mixture") or ()
  if isinstance(mixture, str):
    mixture = [m for m in mixture.split(",") if m.strip()]
  if mixture:
    entries, field = list(mixture), "data.mixture"
  else:
    path = data_cfg.get("path") or ""
    entries = path.split(",") if isinstance(path, str) else list(path)
    entries, field = [e for e in entries if not isinstance(e, str) or e.strip()], "data.path"
    if not entries:
      return []
  sources = [_parse_entry(e, f"{field}[{i}]" if len(entries) > 1 else field)
             for i, e in enumerate(entries)]
  dup = sorted({s.path for s in sources if sum(t.path == s.path for t in sources) > 1})
  if dup:
    raise MixtureError(f"config.{field}: {dup} listed more than once; give one weight each")
  total = sum(s.weight for s in sources)
  return [Source(s.path, s.weight / total) for s in sources]


def is_mixture(data_cfg) -> bool:
  return len(parse_sources(data_cfg)) > 1


def primary_path(data_cfg) -> str:
  """What eval, plots and the demo probe read: data.path's (first) directory, else the
  mixture's first source."""
  path = data_cfg.get("path") or ""
  first = (path.split(",")[0] if isinstance(path, str) else (list(path) or [""])[0]).strip()
  if first:
    return _parse_entry(first, "data.path").path
  sources = parse_sources(data_cfg)
  return sources[0].path if sources else ""


def check_sources(data_cfg, split: str) -> None:
  """Every source is a converted shard directory with records in ``split``."""
  sources = parse_sources(data_cfg)
  field = "data.mixture" if data_cfg.get("mixture") else "data.path"
  for i, s in enumerate(sources):
    name = f"config.{field}[{i}]" if len(sources) > 1 else f"config.{field}"
    try:
      spec = spec_lib.load(s.path)
    except spec_lib.SpecError as e:
      raise MixtureError(f"{name}: {e}") from e
    if not int((spec.get("splits") or {}).get(split, 0)):
      raise MixtureError(f"{name}: {s.path} has no records in split {split!r} (splits: "
                         f"{spec.get('splits')})")


def merged_spec(specs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  """What the window needs from several specs: every rate, every dtype, pooled lead stats."""
  rates: dict[str, int] = {}
  dtypes: set[str] = set()
  sums: dict[str, np.ndarray] = {}
  for spec in specs:
    for r, n in spec.get("sampling_rates", {}).items():
      rates[r] = rates.get(r, 0) + int(n)
    dtypes |= set(spec.get("signal_dtypes") or ("int16", "int32", "float32"))
    for lead, st in (spec.get("lead_stats") or {}).items():
      n, mean, std = float(st["count"]), float(st["mean"]), float(st["std"])
      sums[lead] = sums.get(lead, np.zeros(3)) + (n, n * mean, n * (std**2 + mean**2))
  stats = {}
  for lead, (n, s1, s2) in sums.items():
    mean = s1 / max(n, 1.0)
    stats[lead] = {"mean": mean, "std": float(np.sqrt(max(s2 / max(n, 1.0) - mean**2, 0.0))),
                   "count": int(n)}
  return {"sampling_rates": rates, "signal_dtypes": sorted(dtypes), "lead_stats": stats}


def train_spec(data_cfg) -> dict[str, Any] | None:
  """The spec the train window is built from: the one source's, or the mixture's merge."""
  sources = parse_sources(data_cfg)
  if not sources:
    return None
  specs = [spec_lib.load(s.path) for s in sources]
  return specs[0] if len(specs) == 1 else merged_spec(specs)


def _source_seed(seed: int, index: int) -> int:
  """Each source's own epoch permutations: independent streams from one config seed."""
  return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


class MixtureCounts:
  """Per-source row counts of batch k and how many rows each source gave before it.

  counts(k) ~ Multinomial(batch, weights) from a generator keyed on (seed, process, block
  of k); a pure function of (seed, process, k).
  """

  def __init__(self, weights: Sequence[float], batch_size: int, seed: int, process_index: int):
    self.weights = np.asarray(weights, np.float64)
    self.batch_size, self.seed, self.process_index = int(batch_size), int(seed), int(process_index)
    self._block_cache: dict[int, np.ndarray] = {}
    self._block_starts = [np.zeros(len(self.weights), np.int64)]  # rows before block b
    self._lock = threading.Lock()  # grain's read threads share this object.

  def __getstate__(self):
    state = self.__dict__.copy()
    del state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def _block(self, b: int) -> np.ndarray:
    """[_BLOCK, S] counts of the batches of block ``b``."""
    out = self._block_cache.get(b)
    if out is None:
      rng = np.random.default_rng((self.seed, self.process_index, 0x313, b))
      out = rng.multinomial(self.batch_size, self.weights, size=_BLOCK).astype(np.int64)
      self._block_cache = {b: out, **{k: v for k, v in self._block_cache.items() if k == b - 1}}
    return out

  def counts(self, k: int) -> np.ndarray:
    with self._lock:
      return self._block(k // _BLOCK)[k % _BLOCK]

  def before(self, k: int) -> np.ndarray:
    """[S] rows each source contributed to batches 0 .. k-1."""
    b = k // _BLOCK
    with self._lock:
      while len(self._block_starts) <= b:
        i = len(self._block_starts) - 1
        self._block_starts.append(self._block_starts[i] + self._block(i).sum(0))
      return self._block_starts[b] + self._block(b)[:k % _BLOCK].sum(0)


class MixtureBatches(grain.MapDataset):
  """Element k = this process's k-th two-view batch drawn from several sources.

  Row j's source comes from the batch's counts (rows in a seeded order), its record from
  that source's own stream (see module doc); draws for stretch and beat are the same as
  :class:`~ecgjax.data.pipeline.TrainBatches`'. A corrupt record is replaced as there.
  """

  def __init__(self, sources: Sequence[ShardedSource], weights: Sequence[float],
               cutter: pipeline.SegmentCutter, batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    super().__init__()
    self.sources, self.cutter = list(sources), cutter
    self.batch_size, self.seed, self.process_index = int(batch_size), int(seed), process_index
    self.orders = [pipeline.RecordOrder(len(s), _source_seed(seed, i), process_index,
                                        process_count) for i, s in enumerate(self.sources)]
    self._per_epoch = [-(-len(s) // process_count) for s in self.sources]
    self.mix = MixtureCounts(weights, batch_size, seed, process_index)

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return (f"MixtureBatches({[repr(s) for s in self.sources]}, "
            f"weights={self.mix.weights.round(4).tolist()}, batch={self.batch_size})")

  def rows(self, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(source index, position in that source's stream) of each row of batch k."""
    counts = self.mix.counts(k)
    start = self.mix.before(k)
    src = np.repeat(np.arange(len(self.sources)), counts)
    pos = np.concatenate([start[s] + np.arange(c) for s, c in enumerate(counts)])
    order = np.random.default_rng((self.seed, self.process_index, 0x314, k)).permutation(
        self.batch_size)
    return src[order], pos[order]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    k, b = int(index), self.batch_size
    draws = pipeline.batch_draws(self.seed, self.process_index, k, b, self.cutter.views)
    out = self.cutter.new_batch(b)
    src, pos = self.rows(k)
    out["source"] = src.astype(np.int32)
    records = [None] * b
    for s in np.unique(src):  # a source's rows hold consecutive positions: one read_many each.
      rows = np.flatnonzero(src == s)
      first = int(pos[rows].min())
      got = pipeline.read_batch_replacing_corrupt(self.sources[s], self.orders[s], first,
                                                  rows.size, self._per_epoch[s])
      for j in rows:
        records[j] = got[int(pos[j]) - first]
    for j, record in enumerate(records):
      self.cutter.fill(out, j, record, draws[j])
    return out


def make_batches(data_cfg, split: str, window: pipeline.WindowConfig, local_batch: int,
                 seed: int, process_index: int = 0, process_count: int = 1) -> MixtureBatches:
  """The mixture's per-process batch dataset (labels dropped: sources label differently)."""
  check_sources(data_cfg, split)
  parsed = parse_sources(data_cfg)
  skip = bool(data_cfg.get("skip_corrupt", False))
  sources = [ShardedSource(s.path, split, skip_corrupt=skip) for s in parsed]
  for s in sources:
    if len(s) < process_count:
      raise ValueError(f"{s!r} has fewer records than JAX processes ({process_count})")
  cutter = pipeline.SegmentCutter(window, 0, "none", views=2)
  return MixtureBatches(sources, [s.weight for s in parsed], cutter, local_batch, seed,
                        process_index, process_count)
