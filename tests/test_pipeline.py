"""Host preprocessing properties and the grain pipeline: shapes, alignment, resume."""
import numpy as np
import pytest
import scipy.signal

import configs.hl as hl
from ecgjax.data import example, pipeline, preprocess
from ecgjax.data.records import STANDARD_LEADS
from ecgjax.data.source import ShardedSource


def test_resample_matches_scipy_for_band_limited_signal():
  fs, target = 500.0, 250.0
  t = np.arange(5000) / fs
  x = (np.sin(2 * np.pi * 7 * t) + 0.5 * np.sin(2 * np.pi * 23 * t)) * 1000
  sig = np.stack([x, -x]).astype(np.int16)
  gain = np.array([1000.0, 1000.0], np.float32)
  y = preprocess.resample_window(sig, np.array([0, 1]), gain, 0, 2500.0, 1250)
  ref = scipy.signal.resample_poly(x / 1000.0, 1, 2)[:1250]
  # Boxcar + linear interpolation: within a few % of a polyphase FIR in the ECG band.
  assert np.abs(y[0] - ref)[10:-10].max() < 0.06
  np.testing.assert_allclose(y[1], -y[0], atol=1e-3)


def test_resample_stretch_and_absent_rows():
  sig = np.tile(np.arange(1000, dtype=np.int16), (2, 1))
  gain = np.ones(2, np.float32)
  y = preprocess.resample_window(sig, np.array([1, -1]), gain, 100, 150.0, 100)  # 1.5x stretch
  np.testing.assert_allclose(y[0], 100 + np.arange(100) * 1.5, atol=1e-3)
  assert not y[1].any()


def test_window_past_end_is_zero_padded():
  sig = np.ones((1, 300), np.int16)
  y = preprocess.resample_window(sig, np.array([0]), np.ones(1, np.float32), 250, 100.0, 100)
  assert y[0, :49].min() == 1.0 and not y[0, 51:].any()


def test_choose_start_is_rpeak_aligned():
  rng = np.random.default_rng(0)
  peaks = np.array([50, 300, 550, 800, 1050, 1300])
  starts = {preprocess.choose_start(rng, peaks, 1500, 500, 25) for _ in range(200)}
  assert starts <= {p - 25 for p in peaks if p - 25 + 500 <= 1500}
  assert len(starts) > 1
  # No usable beat: uniform fallback still gives a full window.
  s = preprocess.choose_start(rng, np.array([], np.int64), 1500, 500, 25)
  assert 0 <= s <= 1000


def test_normalize_record_and_absent_leads():
  x = np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32) * 5 + 2
  present = np.array([True, False, True])
  y = preprocess.normalize(x.copy(), present, "record")
  np.testing.assert_allclose(y[[0, 2]].mean(1), 0, atol=1e-5)
  np.testing.assert_allclose(y[[0, 2]].std(1), 1, atol=1e-3)
  assert not y[1].any()
  with pytest.raises(ValueError, match="data.normalize"):
    preprocess.normalize(x, present, "bogus")


def _cfg(path, workers=0):
  c = hl.get_config()
  c.data.path = path
  c.data.num_workers = workers
  c.data.read_threads = 1
  c.data.sampling_rate = 100.0
  c.data.window_s = 2.0
  return c


def test_train_batches_shapes_and_views_differ(synthetic_shards):
  c = _cfg(synthetic_shards)
  b = next(iter(pipeline.make_train_dataset(c.data, 8, seed=0)))
  assert b["view1"].shape == b["view2"].shape == (8, 12, 200)
  assert b["lead_mask"].shape == (8, 12) and b["lead_mask"].all()
  assert b["label"].shape == (8, 6) and (b["label"].sum(1) == 1).all()
  assert not np.allclose(b["view1"], b["view2"])
  np.testing.assert_allclose(b["view1"].mean(-1), 0, atol=1e-4)


def test_eval_window_starts_before_first_beat(synthetic_shards):
  c = _cfg(synthetic_shards)
  ds, src = pipeline.make_eval_dataset(c.data, "val", batch_size=4)
  b = ds[0]
  rec = example.decode(src[0])
  rows, present = preprocess.lead_rows(rec["leads"], STANDARD_LEADS)
  start = int(rec["r_peaks"][0] - round(0.25 * rec["sampling_rate"]))
  start = start if start >= 0 else int(rec["r_peaks"][1] - round(0.25 * rec["sampling_rate"]))
  x = preprocess.resample_window(rec["signal"], rows, rec["gain"], start,
                                 200 * rec["sampling_rate"] / 100.0, 200)
  np.testing.assert_allclose(b["view1"][0], preprocess.normalize(x, present, "record"), atol=1e-4)
  assert "view2" not in b


@pytest.mark.parametrize("workers", [0, 2])
def test_iterator_resume_gives_the_same_next_batch(synthetic_shards, workers):
  c = _cfg(synthetic_shards, workers)
  it = iter(pipeline.make_train_dataset(c.data, 4, seed=3))
  for _ in range(3):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  it2 = iter(pipeline.make_train_dataset(c.data, 4, seed=3))
  it2.set_state(state)
  for e in expected:
    got = next(it2)
    for k in e:
      np.testing.assert_array_equal(e[k], got[k])


def test_process_slices_are_disjoint_and_complete(synthetic_shards):
  src = ShardedSource(synthetic_shards, "train")
  import grain
  n = len(src)
  for count in (2, 3):
    seen = []
    for p in range(count):
      ds = grain.MapDataset.source(src).seed(0).shuffle()[p::count]
      seen.append({example.decode(ds[i])["record_id"] for i in range(len(ds))})
    assert sum(len(s) for s in seen) == n
    assert set().union(*seen) == {example.decode(src[i])["record_id"] for i in range(n)}
