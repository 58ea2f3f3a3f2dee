"""Beat / rhythm-window segmentation of MIT-BIH and the de Chazal inter-patient split."""
import collections
import os

import numpy as np
import pytest

from data_pipelines import convert, segment
from ecgjax.data import example
from ecgjax.data.source import ShardedSource
from tests.conftest import requires_shared

# The 48 MIT-BIH Arrhythmia records (PhysioNet RECORDS file).
ALL_48 = ("100 101 102 103 104 105 106 107 108 109 111 112 113 114 115 116 117 118 119 121 "
          "122 123 124 200 201 202 203 205 207 208 209 210 212 213 214 215 217 219 220 221 "
          "222 223 228 230 231 232 233 234").split()
# AAMI classes written out independently of segment.AAMI_MAP.
_CLASS_OF = {**dict.fromkeys("NLRej", "N"), **dict.fromkeys("AaJS", "S"),
             **dict.fromkeys("VE", "V"), "F": "F", **dict.fromkeys("/fQ", "Q")}


def _link(tmp_path, records):
  src = requires_shared("mitbih")
  d = tmp_path / "mitbih"
  d.mkdir()
  for r in records:
    for ext in ("hea", "dat", "atr"):
      os.symlink(src / f"{r}.{ext}", d / f"{r}.{ext}")
  return d


def _convert(inp, out, *flags):
  args = convert.build_parser().parse_args(
      ["--format=wfdb", f"--input={inp}", f"--output={out}", "--num_shards=1", "--workers=1",
       "--quiet", *flags])
  return convert.convert(args)


def test_split_lists_disjoint_and_complete():
  ds1, ds2 = set(segment.DS1), set(segment.DS2)
  assert len(ds1) == len(segment.DS1) == 22 and len(ds2) == len(segment.DS2) == 22
  assert not ds1 & ds2
  assert ds1 | ds2 | set(segment.PACED) == set(ALL_48)
  assert set(segment.PACED) == {"102", "104", "107", "217"}
  splits = {r: segment.inter_patient_split(r, val_records=4, seed=3) for r in ALL_48}
  assert {r for r, s in splits.items() if s == "test"} == ds2
  assert {r for r, s in splits.items() if s in ("train", "val")} == ds1
  assert sum(s == "val" for s in splits.values()) == 4
  assert all(splits[r] is None for r in segment.PACED)


def test_source_record_ids():
  assert segment.source_record("100_b000123") == "100"
  assert segment.source_record("a/b_7_w0007") == "a/b_7"
  assert segment.source_record("100") == "100"


@pytest.mark.parametrize("record", ["100", "208", "232"])
def test_beat_counts_per_aami_class_match_atr(tmp_path, record):
  import wfdb
  d = _link(tmp_path, [record])
  from data_pipelines.readers import WfdbReader
  reader = segment.SegmentingReader(WfdbReader(str(d)), "beats", window_s=2.0,
                                    beat_offset_s=0.5)
  examples = reader.read(record)
  # Independent count from the .atr: beats whose [s - 180, s - 180 + 720) fits in 650000.
  ann = wfdb.rdann(str(d / record), "atr")
  expected = collections.Counter(
      _CLASS_OF[sym] for s, sym in zip(ann.sample, ann.symbol)
      if sym in _CLASS_OF and s - 180 >= 0 and s - 180 + 720 <= 650000)
  got = collections.Counter(segment.AAMI_CLASSES[e.labels[0]] for e in examples)
  assert got == expected
  # Each example is the signal around its own beat, with that beat as its only R peak.
  rec = wfdb.rdrecord(str(d / record), physical=False)
  raw = rec.d_signal.T - np.asarray(rec.baseline)[:, None]  # shards store baseline-free adu.
  beats = [s for s, sym in zip(ann.sample, ann.symbol) if sym in "NLRBAaJSVrFejnE/fQ?"]
  for e in examples[:: max(1, len(examples) // 20)]:
    k = int(e.record_id.rsplit("_b", 1)[1])
    np.testing.assert_array_equal(e.signal, raw[:, beats[k] - 180: beats[k] + 540])
    assert e.r_peaks.tolist() == [180]


def test_beat_summary_matches_mitbih_directory(tmp_path):
  # MIT-BIH Arrhythmia Directory, record 208: 1586 N, 2 S, 992 V, 373 F, 2 Q.
  from data_pipelines.readers import WfdbReader
  d = _link(tmp_path, ["208"])
  reader = segment.SegmentingReader(WfdbReader(str(d)), "beats", window_s=5.0)
  syms = reader.summary()["segmentation"]["beat_symbols"]
  assert (syms["N"], syms["S"], syms["V"], syms["F"], syms["Q"]) == (1586, 2, 992, 373, 2)


def test_windows_never_straddle_and_rhythm_labels(tmp_path):
  import wfdb
  d = _link(tmp_path, ["201", "100"])
  spec = _convert(d, tmp_path / "out", "--segment=windows", "--window_s=10",
                  "--split_scheme=mitbih_inter_patient")
  assert spec["splits"] == {"test": 180, "train": 180}  # 100 in DS2, 201 in DS1 (train, seed 0)
  names = spec["label_names"]
  length = 3600
  for split in ("train", "test"):
    src = ShardedSource(str(tmp_path / "out"), split)
    recs = [example.decode(src[i]) for i in range(len(src))]
    record = "201" if split == "train" else "100"
    rec = wfdb.rdrecord(str(d / record), physical=False)
    raw = rec.d_signal.T - np.asarray(rec.baseline)[:, None]
    ann = wfdb.rdann(str(d / record), "atr")
    # Independent rhythm runs: each '+' rhythm holds until the next '+'.
    marks = [(s, a.strip("\x00")) for s, sym, a in zip(ann.sample, ann.symbol, ann.aux_note)
             if sym == "+"]
    ids = set()
    for r in recs:
      rid = r["record_id"]
      assert segment.source_record(rid) == record
      w = int(rid.rsplit("_w", 1)[1])
      ids.add(w)
      assert r["signal"].shape == (2, length)
      np.testing.assert_array_equal(r["signal"], raw[:, w * length:(w + 1) * length])
      lo, hi = w * length, (w + 1) * length
      want = set()
      for k, (s, a) in enumerate(marks):
        end = marks[k + 1][0] if k + 1 < len(marks) else 650000
        if s < hi and end > lo:
          want.add(a)
      assert {names[i] for i in np.flatnonzero(r["label"])} == want, rid
    assert ids == set(range(650000 // length))
  af = names.index("(AFIB")
  assert spec["label_counts"]["train"][af] > 0 and spec["label_counts"]["test"][af] == 0


def test_paced_and_unknown_records_rejected_by_scheme(tmp_path):
  from data_pipelines.readers import WfdbReader
  d = _link(tmp_path, ["100"])
  # Record 999 (not in DS1/DS2, like a paced record): 100's header renamed, same .dat/.atr.
  os.symlink(d / "100.atr", d / "999.atr")
  (d / "999.hea").write_text((d / "100.hea").read_text().replace("100", "999", 1))
  reader = segment.SegmentingReader(WfdbReader(str(d)), "beats", 5.0,
                                    split_scheme="mitbih_inter_patient")
  assert reader.list_items() == ["100"]
  assert reader.summary()["segmentation"]["records_outside_split_scheme"] == ["999"]
  with pytest.raises(ValueError, match="split_scheme"):
    segment.SegmentingReader(WfdbReader(str(d)), "beats", 5.0, split_scheme="ds3")
