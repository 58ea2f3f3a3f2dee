"""Corrupt shards and bad raw records: a named error, or a counted skip with skip_corrupt."""
import json
import logging
import os
import shutil

import numpy as np
import pytest

from data_pipelines import convert
from ecgjax.data import source as source_lib
from ecgjax.data import spec as spec_lib
from ecgjax.data import tfrecord
from ecgjax.data.source import ShardedSource
from tests.faults.conftest import run_job


@pytest.fixture
def shards(fault_shards, tmp_path):
  out = tmp_path / "shards"
  shutil.copytree(fault_shards, out, ignore=shutil.ignore_patterns(".built"))
  return out


def _train_shard(d) -> str:
  spec = spec_lib.load(str(d))
  return str(d / next(e["file"] for e in spec["shards"] if e["split"] == "train"))


def _patch(path: str, offset: int, xor: int = 0x20) -> None:
  with open(path, "r+b") as f:
    f.seek(offset)
    b = f.read(1)
    f.seek(offset)
    f.write(bytes([b[0] ^ xor]))


def _read_all(src: ShardedSource) -> list:
  return [src[i] for i in range(len(src))]


# (where in record 3 of the first train shard, expected reason)
FLIPS = {
    "length_header": (0, "length CRC mismatch"),
    "payload_byte": (tfrecord.HEADER_BYTES + 40, "data CRC mismatch"),
    "data_crc_footer": (-2, "data CRC mismatch"),
}


@pytest.mark.parametrize("where", sorted(FLIPS))
def test_flipped_byte_names_file_offset_and_record(shards, where):
  path = _train_shard(shards)
  offsets = tfrecord.read_index(path)
  delta, reason = FLIPS[where]
  _patch(path, int(offsets[3] + delta if delta >= 0 else offsets[4] + delta))
  src = ShardedSource(str(shards), "train")
  with pytest.raises(tfrecord.CorruptRecordError) as e:
    _read_all(src)
  msg = str(e.value)
  assert path in msg and f"byte offset {offsets[3]}" in msg and reason in msg
  assert "record 3 of the shard" in msg


def test_skip_corrupt_counts_bad_records(shards, caplog):
  path = _train_shard(shards)
  offsets = tfrecord.read_index(path)
  for k in (1, 5):
    _patch(path, int(offsets[k] + tfrecord.HEADER_BYTES + 7))
  before = source_lib.skipped_records()
  src = ShardedSource(str(shards), "train", skip_corrupt=True)
  with caplog.at_level(logging.WARNING):
    got = _read_all(src)
  assert sum(g is None for g in got) == 2 and src.num_skipped == 2
  assert source_lib.skipped_records() - before == 2
  assert caplog.text.count(f"skipping corrupt record") == 2 and path in caplog.text


def test_skipped_records_are_replaced_so_train_batches_keep_their_size(shards):
  """TrainBatches swaps a corrupt record for the one at its place in the next epoch."""
  from ecgjax.data import pipeline
  path = _train_shard(shards)
  offsets = tfrecord.read_index(path)
  bad = {1, 5}
  for k in bad:
    _patch(path, int(offsets[k] + tfrecord.HEADER_BYTES + 7))
  src = ShardedSource(str(shards), "train", skip_corrupt=True)
  window = pipeline.WindowConfig(leads=("I", "II"), sampling_rate=100.0, window_samples=100,
                                 source_rates=tuple(float(r) for r in src.spec["sampling_rates"]))
  cutter = pipeline.SegmentCutter(window, len(src.spec["label_names"]),
                                  src.spec["label_encoding"], views=2)
  n = len(src)
  ds = pipeline.TrainBatches(src, cutter, n, seed=0)  # one batch = one epoch
  batch = ds[0]
  assert batch["seg1"].shape[0] == n and np.isfinite(batch["scale"]).all()
  assert src.num_skipped == 2  # each bad record was read once, counted, and replaced
  before = source_lib.skipped_records()
  ds[1]  # epoch 2 reads both bad records again: each run counts them once.
  assert src.num_skipped == 4 and source_lib.skipped_records() == before
  # Each replaced row holds the record at the same position of epoch 1, cut with the
  # row's own draws.
  replaced = [j for j in range(n) if ds.order[j] in bad]  # first train shard = records 0..
  assert len(replaced) == 2
  draws = np.random.default_rng((0, 0, 0)).random((n, 2, 2))
  for j in replaced:
    one = cutter.new_batch(1)
    cutter.fill(one, 0, src[ds.order[j + n]], draws[j])
    for key in one:
      np.testing.assert_array_equal(one[key][0], batch[key][j])


def _strict_raises_then_skipping(shards, path, error, match, caplog):
  """A strict source raises ``error`` naming ``path``; a skipping one opens (and logs it).

  Returns (skipping source, skipped_records() before it was opened).
  """
  with pytest.raises(error, match=match) as e:
    ShardedSource(str(shards), "train")
  assert path in str(e.value)
  before = source_lib.skipped_records()
  with caplog.at_level(logging.ERROR):
    src = ShardedSource(str(shards), "train", skip_corrupt=True)
  assert path in caplog.text
  return src, before


def test_truncated_shard(shards, caplog):
  path = _train_shard(shards)
  offsets = tfrecord.read_index(path)
  os.truncate(path, int(offsets[-3] + 10))  # last two records cut (one partly).
  src, before = _strict_raises_then_skipping(shards, path, tfrecord.CorruptRecordError,
                                             "truncated or rewritten", caplog)
  assert f"shard {path} is truncated" in caplog.text
  got = _read_all(src)
  assert sum(g is None for g in got) == 2 and source_lib.skipped_records() - before == 2


def test_missing_shard(shards, caplog):
  path = _train_shard(shards)
  n = int(len(tfrecord.read_index(path)) - 1)
  os.remove(path)
  src, before = _strict_raises_then_skipping(shards, path, spec_lib.SpecError, "missing",
                                             caplog)
  assert source_lib.skipped_records() - before == n
  assert len(src) == spec_lib.load(str(shards))["splits"]["train"] - n
  assert all(r is not None for r in _read_all(src))


def test_spec_that_disagrees_with_shards_is_an_error_even_when_skipping(shards):
  spec = json.loads((shards / "spec.json").read_text())
  entry = next(e for e in spec["shards"] if e["split"] == "train")
  entry["records"] += 1
  (shards / "spec.json").write_text(json.dumps(spec))
  for skip in (False, True):
    with pytest.raises(spec_lib.SpecError, match="disagree") as e:
      ShardedSource(str(shards), "train", skip_corrupt=skip)
    assert entry["file"] in str(e.value) and "spec.json" in str(e.value)
  (shards / "spec.json").write_text("{not json")
  with pytest.raises(spec_lib.SpecError, match="not valid JSON") as e:
    ShardedSource(str(shards), "train")
  assert str(shards / "spec.json") in str(e.value)


def test_skip_count_crosses_grain_worker_processes(shards):
  """With mp_prefetch the source runs in worker processes; the count still adds up."""
  import grain
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  path = _train_shard(shards)
  offsets = tfrecord.read_index(path)
  for k in (2, 4, 6):
    _patch(path, int(offsets[k] + tfrecord.HEADER_BYTES + 3))
  src = ShardedSource(str(shards), "train", skip_corrupt=True)
  before = source_lib.skipped_records()
  ds = (grain.MapDataset.source(src).to_iter_dataset().filter(lambda x: x is not None)
        .mp_prefetch(grain.MultiprocessingOptions(num_workers=2)))
  got = list(ds)
  assert len(got) == len(src) - 3
  assert src.num_skipped == 0  # nothing was read in this process...
  assert source_lib.skipped_records() - before == 3  # ...but the workers' skips add up.


def test_skipped_records_reach_the_training_metrics(shards, job_env, tmp_path):
  path = _train_shard(shards)
  offsets = tfrecord.read_index(path)
  for k in range(0, 6):
    _patch(path, int(offsets[k] + tfrecord.HEADER_BYTES + 5))
  # 10 steps of 8 read every one of the 76 train records (the 6 bad ones once each); the
  # resumed job counts them once although it reads some again, and knows the others from
  # the checkpoint's data-iterator state.
  for steps in (10, 12):
    run_job(job_env, tmp_path / "run", str(shards), steps=steps,
            extra=["--set=data.skip_corrupt=True", "--set=checkpoint_every=10"])
  rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == list(range(1, 13)), rows
  assert rows[9]["skipped_records"] == 6 and rows[-1]["skipped_records"] == 6, rows
  rows_err = run_job(job_env, tmp_path / "strict", str(shards), steps=4, expect_rc=1)
  assert "CorruptRecordError" in rows_err and path in rows_err


def _ecg(n_leads: int, fs: float, seconds: float, seed: int) -> np.ndarray:
  """mV [leads, samples]: a spike train at 72 bpm on a slow sine, plus noise."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(fs * seconds)) / fs
  beat = np.exp(-0.5 * (((t + 0.3) % (60 / 72) - 0.3) / 0.015) ** 2)
  lead_gain = rng.uniform(0.4, 1.2, (n_leads, 1))
  return lead_gain * beat + 0.05 * np.sin(2 * np.pi * 0.3 * t) + 0.02 * rng.standard_normal(
      (n_leads, t.size))


def _wfdb(d, name, x_mv, fs=250):
  import wfdb
  digital = np.round(x_mv.T * 1000).astype(np.int64)
  wfdb.wrsamp(name, fs=fs, units=["mV"] * 3, sig_name=["I", "II", "V1"], d_signal=digital,
              fmt=["16"] * 3, adc_gain=[1000.0] * 3, baseline=[0] * 3, write_dir=str(d))


def test_conversion_of_a_bad_wfdb_directory_lists_every_reject(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  for i in range(3):
    _wfdb(raw, f"good{i}", _ecg(3, 250, 8, i))
  (raw / "garbled.hea").write_bytes(b"\x00\xff garbage \x13\n not a header\n")
  (raw / "gibberish_fields.hea").write_text("gibberish_fields x y z\nfoo bar\n")
  _wfdb(raw, "nodat", _ecg(3, 250, 8, 9))
  os.remove(raw / "nodat.dat")
  x = _ecg(3, 250, 8, 4)
  _wfdb(raw, "flat", np.concatenate([x[:2], np.full((1, x.shape[1]), 0.2)]))
  sat = _ecg(3, 250, 8, 5)
  sat[1] = np.clip(sat[1] * 3, -0.3, 0.3)
  _wfdb(raw, "saturated", sat)
  gap = _ecg(3, 250, 8, 6)
  _wfdb(raw, "nan_signal", gap)
  import wfdb
  rec = wfdb.rdrecord(str(raw / "nan_signal"), physical=False)
  d = rec.d_signal.copy()
  d[100:140, 0] = -32768  # WFDB format 16's "no sample": NaN in physical units.
  wfdb.wrsamp("nan_signal", fs=250, units=["mV"] * 3, sig_name=["I", "II", "V1"],
              d_signal=d, fmt=["16"] * 3, adc_gain=[1000.0] * 3, baseline=[0] * 3,
              write_dir=str(raw))
  _wfdb(raw, "truncated_dat", _ecg(3, 250, 8, 7))
  os.truncate(raw / "truncated_dat.dat", 1000)
  out = tmp_path / "out"
  spec = convert.convert(convert.build_parser().parse_args([
      "--format=wfdb", f"--input={raw}", f"--output={out}", "--num_shards=2", "--workers=1",
      "--quiet"]))
  rejects = {r["record_id"]: r["reason"] for r in map(json.loads, open(out / "rejects.jsonl"))}
  expected = {"garbled": "unreadable", "gibberish_fields": "unreadable", "nodat": "unreadable",
              "saturated": "saturated lead", "nan_signal": "nan_or_inf", "truncated_dat": ""}
  assert set(rejects) == set(expected), rejects
  for rid, reason in expected.items():
    assert rejects[rid].startswith(reason), (rid, rejects[rid])
  # The record with a flat V1 is kept, V1 absent (masked downstream), and counted.
  assert spec["num_records"] == 4 and spec["rejects"]["count"] == len(expected)
  assert spec["flat_leads"] == {"records": 1, "by_lead": {"V1": 1}}
  assert sum(spec["rejects"]["by_reason"].values()) == len(expected)
  on_disk = json.loads((out / "spec.json").read_text())
  assert on_disk["rejects"] == spec["rejects"]
