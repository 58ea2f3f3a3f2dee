"""Converter CLI end to end: real PTB-XL / CinC-2021 / MIT-BIH shards, spec, rejects, resume."""
import json
import os

import numpy as np
import pytest

from data_pipelines import convert
from ecgjax.data import example, spec as spec_lib, tfrecord
from ecgjax.data.source import ShardedSource
from tests.conftest import requires_shared


def _convert(*argv):
  return convert.convert(convert.build_parser().parse_args([*argv, "--quiet"]))


@pytest.fixture(scope="module")
def ptbxl_shards(tmp_path_factory):
  data = requires_shared("ptbxl")
  out = str(tmp_path_factory.mktemp("ptbxl"))
  _convert("--format=ptbxl", f"--input={data}", f"--labels={data}/ptbxl_labels.csv",
           f"--output={out}", "--num_shards=4", "--workers=2")
  return out


def test_ptbxl_counts_labels_and_folds(ptbxl_shards):
  spec = spec_lib.load(ptbxl_shards)
  assert spec["splits"] == {"train": 1490, "val": 242, "test": 255}
  assert spec["label_names"] == ["NORM", "MI", "STTC", "CD", "HYP"]
  assert spec["label_encoding"] == "multi_hot"
  assert spec["label_counts"]["test"] == [139, 49, 53, 41, 26]
  assert spec["label_counts"]["train"] == [801, 266, 345, 321, 159]
  assert spec["rejects"]["count"] == 0
  assert spec["reader_summary"]["missing_signal"] == 21799 - 1987
  assert spec["sampling_rates"] == {"100.0": 1987}
  assert sum(s["records"] for s in spec["shards"]) == 1987
  assert set(spec["lead_stats"]) == set(spec["lead_order"]) and len(spec["lead_order"]) == 12
  # Record 00001 is NORM, in train; its signal round-trips losslessly from the WFDB file.
  src = ShardedSource(ptbxl_shards, "train")
  recs = {r["record_id"]: r for r in (example.decode(src[i]) for i in range(len(src)))}
  r = recs["00001"]
  assert r["label"].tolist() == [1, 0, 0, 0, 0] and r["split"] == "train"
  import wfdb
  ref = wfdb.rdrecord(str(requires_shared("ptbxl") / "records100/00000/00001_lr"), physical=False)
  np.testing.assert_array_equal(r["signal"], ref.d_signal.T)
  assert r["r_peaks"].size >= 5 and r["sampling_rate"] == 100.0


def test_rerun_skips_finished_shards(ptbxl_shards):
  data = requires_shared("ptbxl")
  before = {f: os.path.getmtime(os.path.join(ptbxl_shards, f)) for f in os.listdir(ptbxl_shards)
            if ".tfrecord-" in f}
  spec = _convert("--format=ptbxl", f"--input={data}", f"--labels={data}/ptbxl_labels.csv",
                  f"--output={ptbxl_shards}", "--num_shards=4", "--workers=1")
  after = {f: os.path.getmtime(os.path.join(ptbxl_shards, f)) for f in before}
  assert before == after and spec["num_records"] == 1987
  with pytest.raises(ValueError, match="other settings"):
    _convert("--format=ptbxl", f"--input={data}", f"--labels={data}/ptbxl_labels.csv",
             f"--output={ptbxl_shards}", "--num_shards=8")


def test_cinc2021_flat_leads_become_absent_and_keeps_dx_labels(tmp_path):
  data = requires_shared("cinc2021_samples")
  spec = _convert("--format=wfdb", f"--input={data}", f"--output={tmp_path}",
                  "--num_shards=2", "--workers=1", "--sampling_rate=500")
  # JS20004 / JS20008 have V2, V4 and V6 all zero: kept, with those leads absent.
  assert spec["num_records"] == 50 and spec["rejects"]["count"] == 0
  assert spec["flat_leads"] == {"records": 2, "by_lead": {"V2": 2, "V4": 2, "V6": 2}}
  stored = {}
  for split in spec["splits"]:
    source = ShardedSource(str(tmp_path), split)
    for i in range(len(source)):
      rec = example.decode(source[i])
      stored[rec["record_id"]] = rec["leads"]
  assert stored["JS20004"] == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V3", "V5")
  assert len(stored["JS20005"]) == 12
  assert len(spec["label_names"]) == 25  # SNOMED-CT codes in the headers
  assert spec["label_encoding"] == "multi_hot"


def test_mitbih_record_ids_and_rpeaks(tmp_path):
  data = requires_shared("mitbih")
  import shutil
  sub = tmp_path / "in"
  sub.mkdir()
  for ext in ("hea", "dat", "atr"):
    shutil.copy(data / f"100.{ext}", sub / f"100.{ext}")
  spec = _convert("--format=wfdb", f"--input={sub}", f"--output={tmp_path / 'out'}",
                  "--num_shards=1", "--workers=1")
  assert spec["num_records"] == 1 and spec["lead_order"][0] == "II"
  rec = example.decode(next(tfrecord.read_records(str(tmp_path / "out" / "train.tfrecord-00000-of-00001"))))
  assert rec["record_id"] == "100" and rec["leads"] == ("II", "V5")
  import wfdb
  ann = wfdb.rdann(str(data / "100"), "atr")
  beats = np.array([s for s, y in zip(ann.sample, ann.symbol) if y in "NLRBAaJSVrFejnE/fQ?"])
  d = np.abs(rec["r_peaks"][:, None] - beats[None, :]).min(0)
  assert np.mean(d <= 54) > 0.995  # sensitivity at 150 ms


def test_synthetic_conversion_is_deterministic(tmp_path):
  a = _convert("--format=synthetic", f"--output={tmp_path / 'a'}", "--num_records=40",
               "--num_shards=2", "--workers=2", "--sampling_rate=100")
  b = _convert("--format=synthetic", f"--output={tmp_path / 'b'}", "--num_records=40",
               "--num_shards=2", "--workers=1", "--sampling_rate=100")
  assert a["splits"] == b["splits"]
  for s in a["shards"]:
    assert (tmp_path / "a" / s["file"]).read_bytes() == (tmp_path / "b" / s["file"]).read_bytes()
