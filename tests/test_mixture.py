"""Data mixtures: config parsing/validation, determinism, exact resume, proportions, mixed
rates and lead sets in one batch, per-process disjointness."""
import json

import numpy as np
import pytest

import configs.hl as hl
from ecgjax import config_validation
from ecgjax.config import ConfigError
from ecgjax.data import example, mixture, pipeline, synthetic, windows
from ecgjax.data.records import STANDARD_LEADS


@pytest.fixture(scope="module")
def two_lead_shards(tmp_path_factory) -> str:
  """20 two-lead (II, V1) 360 Hz float records, as a second source unlike the synthetic one."""
  from data_pipelines import convert
  tmp = tmp_path_factory.mktemp("two_lead")
  ii, v1 = STANDARD_LEADS.index("II"), STANDARD_LEADS.index("V1")
  x = np.stack([synthetic.make_record(i, 7, 360.0, 8.0).physical()[[ii, v1]]
                for i in range(20)]).astype(np.float32)
  np.save(tmp / "sig.npy", x)
  (tmp / "sig.json").write_text(json.dumps({
      "sampling_rate": 360, "leads": ["II", "V1"],
      "record_ids": [f"m{i:02d}" for i in range(20)], "splits": "train"}))
  out = str(tmp / "shards")
  convert.convert(convert.build_parser().parse_args([
      "--format=numpy", f"--input={tmp / 'sig.npy'}", f"--output={out}", "--num_shards=2",
      "--workers=1", "--quiet"]))
  return out


def _cfg(mix, workers=0):
  c = hl.get_config()
  c.data.path = ""
  c.data.mixture = tuple(mix)
  c.data.num_workers = workers
  c.data.read_threads = 1
  c.data.sampling_rate = 100.0
  c.data.window_s = 2.0
  return c


def test_sources_parse_from_path_list_and_mixture():
  c = hl.get_config()
  c.data.path = "/a:3,/b"
  assert mixture.parse_sources(c.data) == [mixture.Source("/a", 0.75), mixture.Source("/b", 0.25)]
  assert mixture.primary_path(c.data) == "/a" and mixture.is_mixture(c.data)
  c.data.path = "/only"
  assert mixture.parse_sources(c.data) == [mixture.Source("/only", 1.0)]
  assert not mixture.is_mixture(c.data)
  c.data.mixture = ("/x:1", "/y:1")  # the mixture is what pretraining reads; eval keeps path.
  assert [s.path for s in mixture.parse_sources(c.data)] == ["/x", "/y"]
  assert mixture.primary_path(c.data) == "/only"


@pytest.mark.parametrize("mix, field, message", [
    (("{a}:1", "{a}/nope:1"), r"data.mixture\[1\]", "is not a directory"),
    (("{a}:1", "{b}:0"), r"data.mixture\[1\]", "must be > 0"),
    (("{a}:-2", "{b}:1"), r"data.mixture\[0\]", "must be > 0"),
    (("{a}:heavy", "{b}:1"), r"data.mixture\[0\]", "must be a number"),
    (("{a}:1", ":2"), r"data.mixture\[1\]", "has no path"),
    (("{a}:1", "{a}:2"), "data.mixture", "more than once"),
])
def test_mixture_config_errors_name_the_field(synthetic_shards, two_lead_shards, mix, field,
                                              message):
  c = _cfg([m.format(a=synthetic_shards, b=two_lead_shards) for m in mix])
  with pytest.raises(ConfigError, match=f"config.{field}.*{message}"):
    config_validation.validate(c)


def test_source_without_the_train_split_is_named(synthetic_shards, two_lead_shards):
  c = _cfg([f"{synthetic_shards}:1", f"{two_lead_shards}:1"])
  c.data.train_split = "val"  # the two-lead set has only train records.
  with pytest.raises(mixture.MixtureError, match=r"data.mixture\[1\].*no records in split 'val'"):
    pipeline.make_train_dataset(c.data, 4, seed=0)


def test_counts_are_multinomial_with_the_weights_and_pure():
  weights = [0.6, 0.3, 0.1]
  mix = mixture.MixtureCounts(weights, 16, seed=2, process_index=0)
  counts = np.stack([mix.counts(k) for k in range(3000)])
  assert (counts.sum(1) == 16).all()
  frac = counts.sum(0) / counts.sum()
  np.testing.assert_allclose(frac, weights, atol=0.01)  # 48k rows: sd of each < 0.004
  # Per-batch counts vary (a draw), with the multinomial's variance b w (1 - w).
  np.testing.assert_allclose(counts.var(0), 16 * np.multiply(weights, 1 - np.array(weights)),
                             rtol=0.1)
  # 'before' is the running sum, across block edges, whatever the query order.
  fresh = mixture.MixtureCounts(weights, 16, seed=2, process_index=0)
  for k in (2500, 1024, 1023, 0, 7):
    np.testing.assert_array_equal(fresh.before(k), counts[:k].sum(0))
  other = mixture.MixtureCounts(weights, 16, seed=3, process_index=0)
  assert not np.array_equal(other.counts(0), mix.counts(0)) or not np.array_equal(
      other.counts(1), mix.counts(1))


def test_batches_are_deterministic_pure_and_follow_weights(synthetic_shards, two_lead_shards):
  c = _cfg([f"{synthetic_shards}:0.7", f"{two_lead_shards}:0.3"])
  a = iter(pipeline.make_train_dataset(c.data, 8, seed=5))
  b = iter(pipeline.make_train_dataset(c.data, 8, seed=5))
  streamed = [next(a) for _ in range(40)]
  for k in range(3):
    got = next(b)
    for key in streamed[k]:
      np.testing.assert_array_equal(got[key], streamed[k][key])
  window = pipeline.WindowConfig.from_config(c.data, mixture.train_spec(c.data))
  direct = mixture.make_batches(c.data, "train", window, 8, seed=5)
  for k in (7, 2, 30):
    for key in streamed[k]:
      np.testing.assert_array_equal(direct[k][key], streamed[k][key])
  sources = np.concatenate([s["source"] for s in streamed])
  assert abs(np.mean(sources == 1) - 0.3) < 0.08  # 320 rows: sd 0.026
  other = next(iter(pipeline.make_train_dataset(c.data, 8, seed=6)))
  assert not np.array_equal(other["seg1"], streamed[0]["seg1"])


@pytest.mark.parametrize("workers", [0, 2])
def test_mixture_iterator_resume_gives_the_same_next_batches(synthetic_shards, two_lead_shards,
                                                             workers):
  c = _cfg([f"{synthetic_shards}:1", f"{two_lead_shards}:1"], workers)
  it = iter(pipeline.make_train_dataset(c.data, 4, seed=3))
  for _ in range(5):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  it2 = iter(pipeline.make_train_dataset(c.data, 4, seed=3))
  it2.set_state(state)
  for e in expected:
    got = next(it2)
    for k in e:
      np.testing.assert_array_equal(e[k], got[k])


def test_each_source_is_read_epoch_by_epoch(synthetic_shards, two_lead_shards):
  """Rows of a source walk its own seeded epochs: every record once before any repeats."""
  c = _cfg([f"{synthetic_shards}:1", f"{two_lead_shards}:1"])
  window = pipeline.WindowConfig.from_config(c.data, mixture.train_spec(c.data))
  ds = mixture.make_batches(c.data, "train", window, 8, seed=1)
  n = len(ds.sources[1])
  read = []
  for k in range(40):
    src, pos = ds.rows(k)
    read += [(int(p), ds.orders[1][int(p)]) for s, p in zip(src, pos) if s == 1]
  read.sort()
  assert [p for p, _ in read] == list(range(len(read)))  # positions consumed in order, once.
  assert len(read) >= 2 * n
  first = [r for _, r in read[:n]]
  assert sorted(first) == list(range(n))


def test_mixed_rates_and_leads_in_one_batch_give_correct_windows(synthetic_shards,
                                                                 two_lead_shards):
  c = _cfg([f"{synthetic_shards}:1", f"{two_lead_shards}:1"])
  window = pipeline.WindowConfig.from_config(c.data, mixture.train_spec(c.data))
  assert set(window.source_rates) == {250.0, 360.0}
  ds = mixture.make_batches(c.data, "train", window, 8, seed=0)
  k = next(k for k in range(20) if 0 < ds[k]["source"].sum() < 8)  # both sources present.
  batch = ds[k]
  src, pos = ds.rows(k)
  np.testing.assert_array_equal(batch["source"], src)
  two = np.isin(STANDARD_LEADS, ("II", "V1"))
  for j in range(8):
    np.testing.assert_array_equal(batch["lead_mask"][j], two if src[j] == 1 else np.ones(12, bool))
  views = windows.on_host(batch, window)
  draws = np.random.default_rng((0, 0, k)).random((8, 2, 2))
  for j in range(8):
    data = ds.sources[src[j]][ds.orders[src[j]][int(pos[j])]]
    rec = example.decode(data)
    assert rec["sampling_rate"] == (360.0 if src[j] else 250.0)
    one = ds.cutter.new_batch(1)
    ds.cutter.fill(one, 0, data, draws[j])
    alone = windows.on_host(one, window)
    for v in ("view1", "view2"):
      np.testing.assert_allclose(views[v][j], alone[v][0], atol=1e-5)
      assert views[v][j].shape == (12, 200)
      assert not np.any(views[v][j][~batch["lead_mask"][j]])
      assert np.all(views[v][j][batch["lead_mask"][j]].std(-1) > 0.5)  # z-scored signal


def test_processes_read_disjoint_records_of_every_source(synthetic_shards, two_lead_shards):
  c = _cfg([f"{synthetic_shards}:1", f"{two_lead_shards}:1"])
  window = pipeline.WindowConfig.from_config(c.data, mixture.train_spec(c.data))
  per_process = []
  for p in range(2):
    ds = mixture.make_batches(c.data, "train", window, 4, seed=0, process_index=p,
                              process_count=2)
    seen = {0: set(), 1: set()}
    for k in range(2):  # 8 rows: within each source's first epoch (10 two-lead records each).
      for s, q in zip(*ds.rows(k)):
        seen[int(s)].add(ds.orders[s][int(q)])
    per_process.append(seen)
  for s in (0, 1):
    assert per_process[0][s] and not per_process[0][s] & per_process[1][s]
