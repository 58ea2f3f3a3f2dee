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
  w = pipeline.WindowConfig(leads=("x",) * rows.size, sampling_rate=1.0, window_samples=out_len,
                            normalize=normalize, source_rates=(ratio,))
  seg_len = w.segment_length(ratio)
  seg = np.full((rows.size, seg_len), 7, dtype)  # stale values must be overwritten
  valid = preprocess.extract_segment(sig, rows, start - w.context, seg_len, seg)
  present = rows >= 0
  scale = np.zeros(rows.size, np.float32)
  scale[present] = 1.0 / gain[rows[present]]
  batch = {"seg1": seg[None], "ratio1": np.float32([ratio]), "valid1": np.int32([valid]),
           "scale": scale[None], "lead_mask": present[None]}
  return windows.on_host(batch, w)["view1"][0]


def test_resample_matches_scipy_for_band_limited_signal():
  fs, target = 500.0, 250.0
  t = np.arange(5000) / fs
  x = (np.sin(2 * np.pi * 7 * t) + 0.5 * np.sin(2 * np.pi * 23 * t)) * 1000
  sig = np.stack([x, -x]).astype(np.int16)
  gain = np.array([1000.0, 1000.0], np.float32)
  y = _window(sig, np.array([0, 1]), gain, 0, fs / target, 1250)
  ref = scipy.signal.resample_poly(x / 1000.0, 1, 2)[:1250]
  # Both are Kaiser-windowed sincs with < 0.3% passband ripple; int16 rounding is 1e-3.
  # Both see zeros before the record's start, so even the first samples agree.
  assert np.abs(y[0] - ref).max() < 0.005
  np.testing.assert_allclose(y[1], -y[0], atol=1e-3)


def _tones(rng, t, freqs):
  return sum(np.cos(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs)


@pytest.mark.parametrize("up,down", [(5, 4), (1, 1), (100, 137), (1, 2), (5, 11), (10, 39),
                                     (1, 5), (1, 10)])
def test_resample_equals_scipy_resample_poly(up, down):
  """Any ratio, in-band tones kept and out-of-band tones removed, like scipy's polyphase FIR.

  Input: 4 tones below 0.35 x the lower of the two Nyquist-limited bands plus (when the
  rate drops) 3 tones above 0.65 x the new rate. Reference: ``scipy.signal.resample_poly``
  of the in-band tones alone (its own Kaiser FIR, 10 zero crossings a side).
  """
  ratio = down / up
  band = 1.0 / max(ratio, 1.0)  # the lower rate, in cycles per source sample
  rng = np.random.default_rng(up * 1000 + down)
  t = np.arange(6000, dtype=np.float64)
  inband = _tones(rng, t, rng.uniform(0.0, 0.35 * band, 4))
  noise = _tones(rng, t, rng.uniform(0.65 * band, 0.5, 3)) if ratio > 1.3 else 0.0
  sig = np.stack([(inband + noise) * 2000, -(inband + noise) * 1000]).astype(np.int16)
  gain = np.array([2000.0, 1000.0], np.float32)
  out_len = 400
  # Start past the kernel's reach, on scipy's output grid: output t <-> scipy's t + start/ratio.
  start = -(-100 // down) * down
  y = _window(sig, np.array([0, 1]), gain, start, ratio, out_len)
  ref = scipy.signal.resample_poly(inband, up, down)[start // down * up:][:out_len]
  # Passband ripple (ours < 0.3%, scipy's less), stopband (>= 53 dB) on 3 tones: < 1% of
  # the 4-tone peak amplitude of up to 4.
  np.testing.assert_allclose(y[0], ref, atol=0.04)
  np.testing.assert_allclose(y[1], -y[0], atol=2e-3)
  # float32 segments (shards of other dtypes) give the same windows.
  y32 = _window(sig.astype(np.float32), np.array([0, 1]), gain, start, ratio, out_len,
                dtype=np.float32)
  np.testing.assert_allclose(y32, y, atol=2e-5)


def _amplitude(y, f, rate):
  """Least-squares amplitude of the tone f (Hz) in y sampled at ``rate``."""
  t = np.arange(y.size) / rate
  basis = np.stack([np.cos(2 * np.pi * f * t), np.sin(2 * np.pi * f * t)], axis=1)
  coef = np.linalg.lstsq(basis, y, rcond=None)[0]
  return float(np.hypot(*coef))


@pytest.mark.parametrize("stretch", [1.0, 1.1])
def test_mains_above_new_nyquist_is_removed_and_band_passes(stretch):
  """60 Hz mains in a 500 Hz record into a 100 Hz model: >= 40 dB down; 30/39 Hz pass.

  With stretch 1.1 mains lands at 66 Hz of the window (still stopband); a 0.9 stretch
  would put it at 54 Hz, inside the 40-60 Hz transition band.
  """
  fs, rate, out_len = 500.0, 100.0, 1000
  t = np.arange(6000) / fs
  ratio = fs / rate * stretch
  start = 200  # The segment holds real samples before the window (its resampling context).
  mains = _window(np.round(1000 * np.sin(2 * np.pi * 60 * t))[None].astype(np.int16),
                  np.array([0]), np.ones(1, np.float32) * 1000, start, ratio, out_len)[0]
  # The boxcar + linear interpolation this replaced left a 40 Hz alias at ~20% amplitude.
  rms = np.sqrt(np.mean(mains ** 2))
  assert 20 * np.log10(rms / np.sqrt(0.5)) <= -40.0, rms
  # A stretched view samples source time at ratio / fs, so a source tone f appears at
  # f * stretch in the window: pick source tones that land at 30 and 39 Hz (< 0.4 x rate).
  for f_out in (30.0, 39.0):
    f = f_out / stretch
    tone = np.round(1000 * np.sin(2 * np.pi * f * t))[None].astype(np.int16)
    y = _window(tone, np.array([0]), np.ones(1, np.float32) * 1000, start, ratio, out_len)[0]
    amp = _amplitude(y, f_out, rate)
    assert abs(amp - 1.0) < 0.01, (f_out, amp)


def test_resample_stretch_and_absent_rows():
  sig = np.tile(np.arange(1000, dtype=np.int16), (2, 1))
  gain = np.ones(2, np.float32)
  y = _window(sig, np.array([1, -1]), gain, 100, 1.5, 100)  # 1.5x stretch
  # A ramp is kept (up to float32 and the kernel's sampling): linear in, linear out.
  np.testing.assert_allclose(y[0], 100 + np.arange(100) * 1.5, atol=2e-2)
  assert not y[1].any()


def test_extract_segment_before_record_start_is_zero():
  sig = np.arange(1, 21, dtype=np.int16).reshape(2, 10)
  out = np.full((2, 8), 7, np.int16)
  assert preprocess.extract_segment(sig, np.array([1, -1]), -3, 8, out) == 8
  np.testing.assert_array_equal(out[0], [0, 0, 0, 11, 12, 13, 14, 15])
  assert not out[1].any()
  assert preprocess.extract_segment(sig, None, -12, 8, out) == 8 and not out.any()


def test_window_past_end_is_zero_padded():
  sig = np.ones((1, 300), np.int16)
  y = _window(sig, np.array([0]), np.ones(1, np.float32), 250, 1.0, 100)
  # DC is exact up to the record's end, even where the kernel is cut (renormalised).
  np.testing.assert_allclose(y[0, :50], 1.0, rtol=1e-6)
  assert not y[0, 51:].any()


def test_mixed_rates_in_one_batch_match_single_records(tmp_path):
  """Records at 250, 500 and 1000 Hz (3 kernel widths) share a batch; each equals its own."""
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


def test_normalize_record_joint_keeps_between_lead_ratios():
  rng = np.random.default_rng(1)
  base = rng.standard_normal(200)
  x = np.stack([base + 3.0, 2.5 * base - 1.0, 99.0 * rng.standard_normal(200),
                0.5 * base]).astype(np.float32)
  present = np.array([True, True, False, True])
  y = np.asarray(windows.normalize(x, present, "record_joint"))
  c = x[[0, 1, 3]] - x[[0, 1, 3]].mean(1, keepdims=True)     # independent numpy reference.
  rms = np.sqrt((c ** 2).mean())
  np.testing.assert_allclose(y[[0, 1, 3]], c / (rms + 1e-3), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(y[1] / y[0], 2.5, rtol=1e-3)    # 'record' would make this 1.
  assert not y[2].any()                                      # absent: zero, not in the RMS.
  assert np.allclose(np.asarray(windows.normalize(x, present, "record"))[1] /
                     np.asarray(windows.normalize(x, present, "record"))[0], 1.0, rtol=1e-3)


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
