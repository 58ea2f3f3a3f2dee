"""Host preprocessing properties and the grain pipeline: shapes, alignment, resume."""
import numpy as np
import pytest
import scipy.signal

import configs.hl as hl
from ecgjax.data import example, pipeline, preprocess, windows
from ecgjax.data import spec as spec_lib
from ecgjax.data.records import STANDARD_LEADS, EcgRecord
from ecgjax.data.source import ShardedSource


def _window(sig, rows, gain, start, ratio, out_len, normalize="none", dtype=np.int16):
  """One record through the host slice + windows.resample, like the eval pipeline."""
  k = preprocess.decimation(ratio, 1.0)
  seg_len = preprocess.segment_length(out_len, ratio, 1.0)
  seg = np.full((rows.size, seg_len), 7, dtype)  # stale values must be overwritten
  valid = preprocess.extract_segment(sig, rows, start, seg_len, seg)
  present = rows >= 0
  scale = np.zeros(rows.size, np.float32)
  scale[present] = 1.0 / (k * gain[rows[present]])
  batch = {"seg1": seg[None], "ratio1": np.float32([ratio]), "valid1": np.int32([valid]),
           "k": np.int32([k]), "scale": scale[None], "lead_mask": present[None]}
  w = pipeline.WindowConfig(leads=("x",) * rows.size, sampling_rate=1.0, window_samples=out_len,
                            normalize=normalize)
  return windows.on_host(batch, w)["view1"][0]


def test_resample_matches_scipy_for_band_limited_signal():
  fs, target = 500.0, 250.0
  t = np.arange(5000) / fs
  x = (np.sin(2 * np.pi * 7 * t) + 0.5 * np.sin(2 * np.pi * 23 * t)) * 1000
  sig = np.stack([x, -x]).astype(np.int16)
  gain = np.array([1000.0, 1000.0], np.float32)
  y = _window(sig, np.array([0, 1]), gain, 0, fs / target, 1250)
  ref = scipy.signal.resample_poly(x / 1000.0, 1, 2)[:1250]
  # Boxcar + linear interpolation: within a few % of a polyphase FIR in the ECG band.
  assert np.abs(y[0] - ref)[10:-10].max() < 0.06
  np.testing.assert_allclose(y[1], -y[0], atol=1e-3)


@pytest.mark.parametrize("ratio", [0.8, 1.0, 1.37, 2.0, 2.2, 3.9, 4.0])
def test_resample_equals_boxcar_then_linear_interpolation(ratio):
  """Prefix-sum block means + gathers == the textbook decimate-then-np.interp, any k."""
  rng = np.random.default_rng(int(ratio * 100))
  sig = (rng.standard_normal((3, 3000)) * 800).astype(np.int16)
  gain = np.array([500.0, 1000.0, 2000.0], np.float32)
  out_len, start = 300, 37
  y = _window(sig, np.array([2, 0, 1]), gain, start, ratio, out_len)
  k = preprocess.decimation(ratio, 1.0)
  x = sig[[2, 0, 1], start:].astype(np.float64) / gain[[2, 0, 1], None]
  n = x.shape[1] // k
  dec = x[:, :n * k].reshape(3, n, k).mean(-1)
  pos = np.maximum(np.arange(out_len) * ratio / k - (k - 1) / (2 * k), 0)
  ref = np.stack([np.interp(pos, np.arange(n), d) for d in dec])
  # float32 positions (ulp ~3e-5 samples here) on white noise: < 0.2 of a raw unit.
  np.testing.assert_allclose(y, ref, atol=2e-4)
  # float32 segments (shards of other dtypes) give the same windows.
  y32 = _window(sig.astype(np.float32), np.array([2, 0, 1]), gain, start, ratio, out_len,
                dtype=np.float32)
  np.testing.assert_allclose(y32, y, atol=2e-5)


def test_resample_stretch_and_absent_rows():
  sig = np.tile(np.arange(1000, dtype=np.int16), (2, 1))
  gain = np.ones(2, np.float32)
  y = _window(sig, np.array([1, -1]), gain, 100, 1.5, 100)  # 1.5x stretch
  np.testing.assert_allclose(y[0], 100 + np.arange(100) * 1.5, atol=1e-3)
  assert not y[1].any()


def test_window_past_end_is_zero_padded():
  sig = np.ones((1, 300), np.int16)
  y = _window(sig, np.array([0]), np.ones(1, np.float32), 250, 1.0, 100)
  assert y[0, :49].min() == 1.0 and not y[0, 51:].any()


def test_mixed_rates_in_one_batch_match_single_records(tmp_path):
  """Records at 250, 500 and 1000 Hz (k = 1, 2, 4) share a batch; each equals its own."""
  leads = ("I", "II")
  w = pipeline.WindowConfig(leads=leads, sampling_rate=250.0, window_samples=500,
                            stretch=(0.9, 1.1), source_rates=(250.0, 500.0, 1000.0),
                            segment_dtype="int16")
  cutter = pipeline.SegmentCutter(w, 2, "class_index", views=2)
  records, draws = [], np.random.default_rng(0).random((3, 2, 2))
  for i, fs in enumerate((250.0, 500.0, 1000.0)):
    t = np.arange(int(10 * fs)) / fs
    sig = (np.stack([np.sin(2 * np.pi * 1.3 * t), np.cos(2 * np.pi * 0.7 * t)]) * 900).astype(np.int16)
    rec = EcgRecord(record_id=f"r{i}", signal=sig, sampling_rate=fs, leads=leads,
                    gain=np.array([900.0, 900.0], np.float32), labels=(i % 2,),
                    r_peaks=np.arange(0, sig.shape[1], int(fs)))
    records.append(example.encode(rec))
  batch = cutter.new_batch(3)
  for i, data in enumerate(records):
    cutter.fill(batch, i, data, draws[i])
  together = windows.on_host(batch, w)
  for i, data in enumerate(records):
    one = cutter.new_batch(1)
    cutter.fill(one, 0, data, draws[i])
    alone = windows.on_host(one, w)
    np.testing.assert_allclose(together["view1"][i], alone["view1"][0], atol=1e-5)
  np.testing.assert_array_equal(batch["label"], [[1, 0], [0, 1], [1, 0]])
  # Same underlying sinusoids: every rate gives a unit-variance window of the same shape.
  np.testing.assert_allclose(together["view1"].std(-1), 1.0, atol=1e-2)


def test_choose_start_is_rpeak_aligned():
  u = np.random.default_rng(0).random(200)
  peaks = np.array([50, 300, 550, 800, 1050, 1300])
  starts = {preprocess.choose_start(x, peaks, 1500, 500, 25) for x in u}
  assert starts == {p - 25 for p in peaks if p - 25 + 500 <= 1500}  # every usable beat
  # No usable beat: uniform fallback still gives a full window, anywhere in the record.
  s = [preprocess.choose_start(x, np.array([], np.int64), 1500, 500, 25) for x in u]
  assert 0 <= min(s) < 100 and 900 < max(s) <= 1000


def test_normalize_record_and_absent_leads():
  x = np.random.default_rng(0).standard_normal((3, 100)).astype(np.float32) * 5 + 2
  present = np.array([True, False, True])
  y = np.asarray(windows.normalize(x, present, "record"))
  np.testing.assert_allclose(y[[0, 2]].mean(1), 0, atol=1e-5)
  np.testing.assert_allclose(y[[0, 2]].std(1), 1, atol=1e-3)
  assert not y[1].any()
  with pytest.raises(ValueError, match="data.normalize"):
    windows.normalize(x, present, "bogus")


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
  segments = next(iter(pipeline.make_train_dataset(c.data, 8, seed=0)))
  window = pipeline.WindowConfig.from_config(c.data, spec_lib.load(synthetic_shards))
  assert segments["seg1"].dtype == np.int16  # the synthetic shards are int16 only
  assert {k: v.shape for k, v in segments.items() if k != "label"} == {
      k: shape for k, (shape, _) in window.batch_struct(8).items()}
  b = {**segments, **windows.on_host(segments, window)}
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
  x = _window(rec["signal"], rows, rec["gain"], start, rec["sampling_rate"] / 100.0, 200,
              normalize="record")
  np.testing.assert_allclose(b["view1"][0], x, atol=1e-4)
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
  n = len(src)
  everything = {example.decode(src[i])["record_id"] for i in range(n)}
  for count in (2, 3):
    seen = []
    for p in range(count):
      ds = pipeline.process_records(src, 0, p, count)
      share = len(range(p, n, count))  # first epoch: global elements p, p + count, ...
      seen.append([example.decode(ds[i])["record_id"] for i in range(share)])
    flat = [r for ids in seen for r in ids]
    assert len(flat) == n and set(flat) == everything


def test_record_order_is_a_fresh_permutation_each_epoch():
  order = pipeline.RecordOrder(50, seed=4)
  epochs = [[order[e * 50 + i] for i in range(50)] for e in range(3)]
  assert all(sorted(e) == list(range(50)) for e in epochs)
  assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(50))
  assert [pipeline.RecordOrder(50, seed=4)[i] for i in range(50)] == epochs[0]
  assert [pipeline.RecordOrder(50, seed=5)[i] for i in range(50)] != epochs[0]


def test_train_batch_is_a_pure_function_of_its_index(synthetic_shards):
  """Batch k is the same read alone, after other batches, or through the iterator."""
  c = _cfg(synthetic_shards)
  it = iter(pipeline.make_train_dataset(c.data, 4, seed=3))
  streamed = [next(it) for _ in range(3)]
  src = pipeline.open_split(c.data, "train")
  window = pipeline.WindowConfig.from_config(c.data, src.spec)
  cutter = pipeline.SegmentCutter(window, len(src.spec["label_names"]),
                                  src.spec["label_encoding"], views=2)
  direct = pipeline.TrainBatches(src, cutter, 4, seed=3)
  for k in (2, 0, 1):
    for key, value in streamed[k].items():
      np.testing.assert_array_equal(direct[k][key], value)
  assert not np.array_equal(streamed[0]["seg1"], streamed[1]["seg1"])
