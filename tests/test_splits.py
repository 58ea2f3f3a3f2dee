"""Splits that cannot leak: patient_id in the shards, patient-wise converter splits and
probe holdouts, and a pretraining stream that reads only the train split."""
import hashlib
import json

import numpy as np
import pytest

import configs.hl as hl
from data_pipelines import convert
from ecgjax.data import example, pipeline
from ecgjax.data import spec as spec_lib
from ecgjax.data.records import EcgRecord
from ecgjax.data.source import ShardedSource
from ecgjax.evaluation import embeddings as probe_data
from ecgjax.evaluation import probe
from tests.conftest import requires_shared


def _convert(*argv):
  return convert.convert(convert.build_parser().parse_args([*argv, "--quiet"]))


def _records(path: str, split: str) -> list[dict]:
  src = ShardedSource(path, split)
  return [example.decode(src[i]) for i in range(len(src))]


def _record(patient_id: str = "p7") -> EcgRecord:
  return EcgRecord(record_id="r1", signal=np.arange(24, dtype=np.int16).reshape(2, 12),
                   sampling_rate=100.0, leads=("I", "II"), gain=np.ones(2, np.float32),
                   labels=(1,), split="val", patient_id=patient_id)


def test_patient_id_round_trips_and_old_shards_still_decode():
  data = example.encode(_record(), "class_index", 2)
  assert example.decode(data)["patient_id"] == "p7"
  assert example.decode_view(np.frombuffer(data, np.uint8))["patient_id"] == "p7"
  # A shard record written before the feature existed: same bytes minus 'patient_id'.
  from tensorflow_datasets.proto import tf_example_generated_pb2 as pb
  ex = pb.Example()
  ex.ParseFromString(data)
  del ex.features.feature["patient_id"]
  old = ex.SerializeToString(deterministic=True)
  for decode in (example.decode, example.decode_view):
    rec = decode(np.frombuffer(old, np.uint8))
    assert rec["patient_id"] == "" and rec["record_id"] == "r1" and rec["split"] == "val"


def _expected_split(key: str, seed: int) -> str:
  """The documented rule, computed here: sha256(seed NUL key) -> u in [0, 1) -> 80/10/10."""
  u = int(hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()[:16], 16) / 2.0**64
  return "train" if u < 0.8 else ("val" if u < 0.9 else "test")


@pytest.fixture(scope="module")
def patient_npy(tmp_path_factory):
  """120 float records of 40 patients (3 each), no split column, patient ids in the sidecar."""
  tmp = tmp_path_factory.mktemp("patients")
  rng = np.random.default_rng(0)
  t = np.arange(300) / 100.0
  x = (np.sin(2 * np.pi * 1.2 * t)[None, None] + 0.1 * rng.standard_normal((120, 2, 300)))
  np.save(tmp / "sig.npy", x.astype(np.float32))
  patients = [f"P{i // 3:03d}" for i in range(120)]
  (tmp / "sig.json").write_text(json.dumps({
      "sampling_rate": 100, "leads": ["I", "II"], "patient_ids": patients,
      "record_ids": [f"r{i:03d}" for i in range(120)]}))
  return tmp / "sig.npy", dict(zip([f"r{i:03d}" for i in range(120)], patients))


def test_converter_assigns_seeded_patient_wise_splits(patient_npy, tmp_path):
  path, patient_of = patient_npy
  a = _convert("--format=numpy", f"--input={path}", f"--output={tmp_path / 'a'}",
               "--num_shards=1", "--workers=1", "--min_duration_s=1")
  b = _convert("--format=numpy", f"--input={path}", f"--output={tmp_path / 'b'}",
               "--num_shards=3", "--workers=2", "--min_duration_s=1")
  assert a["split_origin"] == "assigned" and a["num_records"] == 120
  assert a["split_counts_by_origin"] == {"source": 0, "assigned": 120}
  assert a["split_assignment"]["fractions"] == [0.8, 0.1, 0.1]
  assert a["splits"] == b["splits"] and set(a["splits"]) == {"train", "val", "test"}
  split_of = {}
  for out in (tmp_path / "a", tmp_path / "b"):
    for split in a["splits"]:
      for rec in _records(str(out), split):
        assert rec["patient_id"] == patient_of[rec["record_id"]]
        assert split_of.setdefault(rec["record_id"], split) == split  # same in both runs
  for rid, split in split_of.items():
    assert split == _expected_split(patient_of[rid], 0)
  by_patient = {}
  for rid, split in split_of.items():
    by_patient.setdefault(patient_of[rid], set()).add(split)
  assert all(len(s) == 1 for s in by_patient.values())  # no patient in two splits
  c = _convert("--format=numpy", f"--input={path}", f"--output={tmp_path / 'c'}",
               "--num_shards=1", "--workers=1", "--min_duration_s=1", "--split_seed=1")
  assert c["split_assignment"]["seed"] == 1
  moved = [r["record_id"] for s in c["splits"] for r in _records(str(tmp_path / "c"), s)
           if split_of[r["record_id"]] != s]
  assert moved  # another seed, another (still patient-wise) draw


def test_split_fractions_and_records_errors(patient_npy, tmp_path):
  path, _ = patient_npy
  spec = _convert("--format=numpy", f"--input={path}", f"--output={tmp_path / 'all'}",
                  "--num_shards=1", "--workers=1", "--min_duration_s=1",
                  "--split_fractions=1,0,0", "--records=r000,r005,r010")
  assert spec["splits"] == {"train": 3}
  assert sorted(r["record_id"] for r in _records(str(tmp_path / "all"), "train")) == [
      "r000", "r005", "r010"]
  with pytest.raises(ValueError, match="--split_fractions"):
    _convert("--format=numpy", f"--input={path}", f"--output={tmp_path / 'x'}",
             "--split_fractions=0.8,0.3,0.1")
  with pytest.raises(ValueError, match=r"--records: \['nope'\] not found"):
    _convert("--format=numpy", f"--input={path}", f"--output={tmp_path / 'y'}",
             "--records=r001,nope")


def test_mitbih_records_list_keeps_only_those_and_uses_record_ids_as_patients(tmp_path):
  data = requires_shared("mitbih")
  spec = _convert("--format=wfdb", f"--input={data}", f"--output={tmp_path}",
                  "--records=100,101", "--num_shards=1", "--workers=1")
  recs = [r for s in spec["splits"] for r in _records(str(tmp_path), s)]
  assert sorted(r["record_id"] for r in recs) == ["100", "101"]
  assert all(r["patient_id"] == r["record_id"] for r in recs)
  assert all(r["split"] == _expected_split(r["record_id"], 0) for r in recs)


def test_ptbxl_patient_ids_come_from_the_database_table(tmp_path):
  """ptbxl_database-style rows (scp_codes, strat_fold, patient_id): ids stored, folds kept."""
  data = requires_shared("ptbxl")
  import pandas as pd  # pylint: disable=g-import-not-at-top
  table = pd.read_csv(data / "ptbxl_database_excerpt_ecg_id_1-500.csv")
  ids = [f"{i:05d}" for i in table.ecg_id.head(12)]
  spec = _convert("--format=ptbxl", f"--input={data}",
                  f"--labels={data}/ptbxl_database_excerpt_ecg_id_1-500.csv",
                  f"--output={tmp_path}", f"--records={','.join(ids)}", "--num_shards=1",
                  "--workers=1")
  assert spec["split_origin"] == "source" and spec["num_records"] == 12
  expected = {f"{int(r.ecg_id):05d}": (str(int(r.patient_id)), int(r.strat_fold))
              for r in table.head(12).itertuples()}
  for split in spec["splits"]:
    for rec in _records(str(tmp_path), split):
      pid, fold = expected[rec["record_id"]]
      assert rec["patient_id"] == pid
      assert rec["split"] == ("train" if fold <= 8 else "val" if fold == 9 else "test")


def test_stratified_holdout_keeps_patients_whole():
  rng = np.random.default_rng(3)
  groups = np.repeat(np.arange(80), 4)  # 80 patients x 4 records
  rng.shuffle(groups)
  y = (rng.random((320, 3)) < 0.2).astype(np.float32)
  val, test, rest = probe_data.stratified_holdout(y, (0.1, 0.2), seed=0, groups=groups)
  assert sorted(np.concatenate([val, test, rest]).tolist()) == list(range(320))
  parts = [set(groups[p]) for p in (val, test, rest)]
  assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
  # Whole patients: each part holds all 4 records of each of its patients.
  assert len(val) == 4 * len(parts[0]) and len(test) == 4 * len(parts[1])
  assert abs(len(parts[0]) - 8) <= 3 and abs(len(parts[1]) - 16) <= 3
  again = probe_data.stratified_holdout(y, (0.1, 0.2), seed=0, groups=groups)
  assert all(np.array_equal(a, b) for a, b in zip((val, test, rest), again))
  # One record per group is the record-wise split.
  no_groups = probe_data.stratified_holdout(y, (0.1, 0.2), seed=0)
  singles = probe_data.stratified_holdout(y, (0.1, 0.2), seed=0, groups=np.arange(320))
  assert all(np.array_equal(a, b) for a, b in zip(no_groups, singles))


def test_patient_groups_fall_back_to_record_ids():
  g = probe_data.patient_groups(np.array(["a", "b", "c"]), np.array(["p1", "", "p1"]))
  assert g[0] == g[2] and g[1] != g[0] and len(set(g)) == 2
  # A record id equal to some patient id is still its own group.
  g = probe_data.patient_groups(np.array(["p1", "x"]), np.array(["", "p1"]))
  assert g[0] != g[1]


def test_split_groups_report_patients_shared_between_splits(patient_npy, tmp_path):
  path, patient_of = patient_npy
  _convert("--format=numpy", f"--input={path}", f"--output={tmp_path}", "--num_shards=1",
           "--workers=1", "--min_duration_s=1")
  groups = {s: probe_data.split_groups(str(tmp_path), s) for s in ("train", "val", "test")}
  assert sum(g.size for g in groups.values()) == 120
  assert probe_data.shared_groups(groups) == {"train/val": 0, "train/test": 0, "val/test": 0}
  groups["val"] = np.concatenate([groups["val"], groups["train"][:2]])  # a leak of 2 records
  shared = probe_data.shared_groups(groups)
  assert shared["train/val"] == len(set(groups["train"][:2])) and shared["val/test"] == 0


def test_ptbxl_probes_drop_records_without_superclass():
  assert probe.drops_unlabelled({"format": "ptbxl", "label_encoding": "multi_hot"})
  assert not probe.drops_unlabelled({"format": "wfdb", "label_encoding": "multi_hot"})


def _read_ids(monkeypatch) -> list[tuple[str, str]]:
  """Every (record_id, split) any ShardedSource hands out from now on, in this process."""
  seen = []
  original = ShardedSource.__getitem__

  def spy(self, index):
    data = original(self, index)
    if data is not None:
      rec = example.decode_view(data)
      seen.append((rec["record_id"], rec["split"]))
    return data

  monkeypatch.setattr(ShardedSource, "__getitem__", spy)
  return seen


@pytest.mark.parametrize("mixed", [False, True])
def test_pretraining_reads_only_the_train_split(synthetic_shards, patient_npy, tmp_path,
                                                monkeypatch, mixed):
  held_out = {r["record_id"] for s in ("val", "test") for r in _records(synthetic_shards, s)}
  train = {r["record_id"] for r in _records(synthetic_shards, "train")}
  assert held_out and train and not held_out & train
  c = hl.get_config()
  c.data.path = synthetic_shards
  c.data.sampling_rate, c.data.window_s, c.data.num_workers = 100.0, 2.0, 0
  other_held = set()
  if mixed:
    path, _ = patient_npy
    other = str(tmp_path / "patients")
    spec = _convert("--format=numpy", f"--input={path}", f"--output={other}", "--num_shards=2",
                    "--workers=1", "--min_duration_s=1")
    other_held = {r["record_id"] for s in ("val", "test") if s in spec["splits"]
                  for r in _records(other, s)}
    assert other_held
    c.data.mixture = (f"{synthetic_shards}:1", f"{other}:1")
  seen = _read_ids(monkeypatch)
  it = iter(pipeline.make_train_dataset(c.data, 16, seed=0))
  for _ in range(60):  # 960 rows: several epochs of every train split
    next(it)
  ids = {r for r, _ in seen}
  assert {s for _, s in seen} == {"train"}
  assert not ids & (held_out | other_held)
  assert train <= ids  # the stream did cover the train records


def test_demo_probe_scores_on_records_pretraining_never_read(synthetic_shards):
  """The demo probe's val/test come from the shards' own val/test splits (not carved out
  of train), which the training stream above never reads."""
  c = hl.get_config("demo")
  c.data.path = synthetic_shards
  pc = probe.demo_config(c, "/tmp/unused")
  assert pc.data.path == synthetic_shards
  spec = spec_lib.load(synthetic_shards)
  assert c.data.train_split == "train"
  for role in ("val", "test"):
    assert pc.splits[role] != c.data.train_split and int(spec["splits"][pc.splits[role]]) > 0
