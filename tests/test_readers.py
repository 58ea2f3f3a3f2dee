"""Tests for the raw-archive readers and record validation.

Real-data tests use ../shared/data (PTB-XL 100 Hz subset, MIT-BIH, CinC-2021 samples)
and skip when it is absent; the rest build small archives in tmp_path.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_pipelines import readers
from data_pipelines.validate import validate
from ecgjax.data.records import STANDARD_LEADS, EcgRecord, Reject

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data"
needs_data = pytest.mark.skipif(not SHARED.is_dir(),
                                reason=f"shared ECG data not found at {SHARED}")
PTBXL = SHARED / "ptbxl"
CINC = SHARED / "cinc2021_samples"
MITBIH = SHARED / "mitbih"

# README table: split -> (n, NORM, MI, STTC, CD, HYP, no superclass).
README_COUNTS = {"train": (1490, 801, 266, 345, 321, 159, 9),
                 "val": (242, 111, 55, 69, 48, 30, 10),
                 "test": (255, 139, 49, 53, 41, 26, 3)}


@pytest.fixture(scope="module")
def ptbxl_reader():
  return readers.PtbxlReader(str(PTBXL), str(PTBXL / "ptbxl_labels.csv"))


def _csv_labels(row) -> tuple[int, ...]:
  return tuple(i for i, c in enumerate(readers.PTBXL_SUPERCLASSES) if row[c] == 1)


# ------------------------------------------------------------------------------------
# PTB-XL.


@needs_data
def test_ptbxl_listing_and_summary(ptbxl_reader):
  r = ptbxl_reader
  assert r.label_names == ("NORM", "MI", "STTC", "CD", "HYP")
  assert r.label_type == "multi_hot"
  items = r.list_items()
  assert len(items) == 1987 and items == sorted(items)
  assert items[0] == "00001" and items[-1] == "01999"
  assert "00137" not in items
  s = r.summary()
  assert s["records"] == 1987
  assert s["missing_signal"] == 21799 - 1987
  assert s["splits"] == {k: v[0] for k, v in README_COUNTS.items()}
  assert s["label_counts"] == {"NORM": 1051, "MI": 370, "STTC": 467, "CD": 410, "HYP": 215}
  assert s["no_superclass"] == 22
  json.dumps(s)  # The converter writes it into spec.json.


@needs_data
def test_ptbxl_reads_all_records_clean(ptbxl_reader):
  """Every subset record passes validation; per-split counts match the README table."""
  counts = {s: np.zeros(7, np.int64) for s in README_COUNTS}
  for item in ptbxl_reader.list_items():
    rec = ptbxl_reader.read(item)
    assert isinstance(rec, EcgRecord), rec
    hot = np.zeros(5, np.int64)
    hot[list(rec.labels)] = 1
    counts[rec.split] += np.concatenate([[1], hot, [not rec.labels]])
  assert {k: tuple(v.tolist()) for k, v in counts.items()} == README_COUNTS


@needs_data
def test_ptbxl_record_and_labels_match_csv(ptbxl_reader):
  table = pd.read_csv(PTBXL / "ptbxl_labels.csv").set_index("ecg_id")
  for ecg_id in (1, 2, 9, 136, 144, 500, 1000, 1457, 1999):
    rec = ptbxl_reader.read(f"{ecg_id:05d}")
    assert isinstance(rec, EcgRecord), rec
    assert rec.record_id == f"{ecg_id:05d}"
    assert rec.labels == _csv_labels(table.loc[ecg_id])
    assert rec.split == table.loc[ecg_id, "split"]
    assert rec.signal.shape == (12, 1000) and rec.signal.dtype == np.int16
    assert rec.sampling_rate == 100.0
    assert rec.leads == STANDARD_LEADS
    np.testing.assert_array_equal(rec.gain, 1000.0)
  unknown = ptbxl_reader.read("00137")
  assert isinstance(unknown, Reject) and "unknown item" in unknown.reason


@needs_data
def test_ptbxl_official_database_excerpt_agrees_with_label_table():
  r = readers.PtbxlReader(str(PTBXL), str(PTBXL / "ptbxl_database_excerpt_ecg_id_1-500.csv"))
  assert r.summary()["label_format"].startswith("ptbxl_database")
  items = r.list_items()
  assert len(items) == 488 and r.summary()["missing_signal"] == 0
  table = pd.read_csv(PTBXL / "ptbxl_labels.csv").set_index("ecg_id")
  for item in items:
    rec = r.read(item)
    assert isinstance(rec, EcgRecord), rec
    row = table.loc[int(item)]
    assert rec.labels == _csv_labels(row), item
    assert rec.split == row["split"], item
    fold = int(rec.metadata["strat_fold"])
    assert readers._fold_to_split(fold) == rec.split
    assert rec.metadata["patient_id"]


def _link_ptbxl(tmp_path: Path, ids, drop_dat=()) -> Path:
  for ecg_id in ids:
    sub = f"records100/{ecg_id // 1000 * 1000:05d}"
    (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    for ext in (".hea", ".dat"):
      if ext == ".dat" and ecg_id in drop_dat:
        continue
      os.symlink(PTBXL / sub / f"{ecg_id:05d}_lr{ext}", tmp_path / sub / f"{ecg_id:05d}_lr{ext}")
  return tmp_path


@needs_data
def test_ptbxl_missing_signal_counted_and_missing_dat_rejected(tmp_path):
  root = _link_ptbxl(tmp_path, [1, 2, 1500, 1999], drop_dat=[2])
  r = readers.PtbxlReader(str(root), str(PTBXL / "ptbxl_labels.csv"))
  assert r.list_items() == ["00001", "00002", "01500", "01999"]
  assert r.summary()["missing_signal"] == 21799 - 4
  assert isinstance(r.read("00001"), EcgRecord)
  bad = r.read("00002")
  assert isinstance(bad, Reject) and bad.record_id == "00002"
  assert bad.reason.startswith("unreadable") and "00002_lr" in bad.reason
  # Only records100 exists: asking for 500 Hz finds no signal at all, which is an error.
  with pytest.raises(ValueError, match=r"^--input=.*: no PTB-XL headers under records500/"):
    readers.PtbxlReader(str(root), str(PTBXL / "ptbxl_labels.csv"), sampling_rate=500)
  with pytest.raises(ValueError):
    readers.PtbxlReader(str(root), str(PTBXL / "ptbxl_labels.csv"), sampling_rate=250)


# ------------------------------------------------------------------------------------
# CinC-2021 (# Dx SNOMED-CT codes) and MIT-BIH.


@needs_data
def test_cinc2021_dx_labels_match_records_csv():
  codes = pd.read_csv(CINC / "dx_codes.csv", dtype=str)
  meta = pd.read_csv(CINC / "records.csv", dtype=str).set_index("record")
  r = readers.WfdbReader(str(CINC))
  assert r.label_type == "multi_hot"
  assert len(r.label_names) == 25 and set(r.label_names) == set(codes.snomed_ct_code)
  assert r.label_names == tuple(sorted(r.label_names))
  assert r.list_items() == sorted(meta.index)
  for item in r.list_items():
    rec = r.read(item)
    assert isinstance(rec, EcgRecord), rec
    assert rec.record_id == item
    expected = set(meta.loc[item, "dx_snomed"].split(","))
    assert {r.label_names[i] for i in rec.labels} == expected, item
    flat = [l for l in rec.metadata.get("flat_leads", "").split(",") if l]  # absent leads
    assert rec.signal.shape == (12 - len(flat), 5000) and rec.sampling_rate == 500.0
    assert rec.leads == tuple(l for l in STANDARD_LEADS if l not in flat)
    np.testing.assert_array_equal(rec.gain, 1000.0)  # HR* headers say 'mv'.
    assert rec.metadata["sex"] == meta.loc[item, "sex"]


@needs_data
def test_cinc2021_zero_leads_become_absent():
  import wfdb  # pylint: disable=g-import-not-at-top
  r = readers.WfdbReader(str(CINC))
  for item in ("JS20004", "JS20008"):
    rec = r.read(item)
    assert isinstance(rec, EcgRecord) and rec.record_id == item
    assert rec.metadata["flat_leads"] == "V2,V4,V6"
    assert rec.leads == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V3", "V5")
    ref = wfdb.rdrecord(str(CINC / item))
    keep = [ref.sig_name.index(l) for l in rec.leads]
    np.testing.assert_allclose(rec.physical(), ref.p_signal.T[keep], atol=1e-5)
    assert np.ptp(ref.p_signal[:, ref.sig_name.index("V2")]) == 0  # really flat at source
  assert len(r.read("JS20005").leads) == 12


@needs_data
def test_mitbih_record_100_and_lossless_digital_values():
  import wfdb  # pylint: disable=g-import-not-at-top
  r = readers.WfdbReader(str(MITBIH))
  expected = (MITBIH / "RECORDS").read_text().split()
  assert r.list_items() == sorted(expected) and len(expected) == 44
  assert r.label_names == () and r.summary()["sampling_rates"] == {"360": 44}
  rec = r.read("100")
  assert isinstance(rec, EcgRecord), rec
  assert rec.record_id == "100" and rec.leads == ("II", "V5")
  assert rec.sampling_rate == 360.0 and rec.signal.shape == (2, 650000)
  assert rec.signal.dtype == np.int16 and rec.labels == ()
  assert r.read("114").leads == ("V5", "II")  # Source order is kept.
  for path, item, reader in ((MITBIH / "100", "100", r), (MITBIH / "114", "114", r),
                             (CINC / "E07500", "E07500", readers.WfdbReader(str(CINC)))):
    rec = reader.read(item)
    ref = wfdb.rdrecord(str(path), physical=False)
    baseline = np.asarray([int(b) for b in rec.metadata["baseline"].split(",")])
    np.testing.assert_array_equal(rec.signal.astype(np.int64) + baseline[:, None],
                                  ref.d_signal.T)
    np.testing.assert_array_equal(rec.gain, ref.adc_gain)
    phys = wfdb.rdrecord(str(path)).p_signal.T
    np.testing.assert_allclose(rec.physical(), phys, atol=1e-5)


@needs_data
def test_wfdb_sampling_rate_mismatch_is_an_error_not_a_filter():
  with pytest.raises(ValueError, match=r"^--sampling_rate=500: the WFDB headers declare "
                                       r"360 Hz \(44 records\)"):
    readers.WfdbReader(str(MITBIH), sampling_rate=500)
  assert readers.WfdbReader(str(MITBIH), sampling_rate=360).read("100").sampling_rate == 360


@needs_data
@pytest.mark.parametrize("header", [False, True])
def test_wfdb_labels_csv_reference_style(tmp_path, header):
  for name in ("E07500", "E07501", "E07502"):
    for ext in (".hea", ".mat"):
      os.symlink(CINC / f"{name}{ext}", tmp_path / f"{name}{ext}")
  ref = tmp_path / "REFERENCE.csv"
  ref.write_text(("record,label\n" if header else "") + "E07500,N\nE07501,A\nZ99999,O\n")
  r = readers.WfdbReader(str(tmp_path), labels_csv=str(ref))
  assert r.label_type == "class_index" and r.label_names == ("A", "N", "O")
  assert r.read("E07500").labels == (1,) and r.read("E07501").labels == (0,)
  unlabelled = r.read("E07502")
  assert isinstance(unlabelled, Reject) and "not in labels CSV" in unlabelled.reason
  s = r.summary()
  assert s["missing_signal"] == 1 and s["unlabelled_records"] == 1
  ref.write_text("E07500,N,A\nE07501,A\n")
  multi = readers.WfdbReader(str(tmp_path), labels_csv=str(ref))
  assert multi.label_type == "multi_hot" and multi.read("E07500").labels == (0, 1)


# ------------------------------------------------------------------------------------
# Broken WFDB files (no shared data needed).


def _write_wfdb(directory: Path, name: str, fs=500, seconds=10.0, comments=None,
                missing_at=None):
  import wfdb  # pylint: disable=g-import-not-at-top
  d = np.round(_ecg(3, fs, seconds).T * 1000).astype(np.int64)
  if missing_at is not None:
    d[missing_at, 2] = -32768  # WFDB format-16 "no sample" value.
  wfdb.wrsamp(name, fs=fs, units=["mV"] * 3, sig_name=["I", "MLII", "v1"],
              d_signal=d, fmt=["16"] * 3,
              adc_gain=[1000.0] * 3, baseline=[5, 0, -7], comments=comments or [],
              write_dir=str(directory))


def test_wfdb_broken_records_become_rejects(tmp_path):
  _write_wfdb(tmp_path, "good", comments=["Dx: 426783006,164934002", "Age: 50"])
  _write_wfdb(tmp_path, "nodat")
  os.remove(tmp_path / "nodat.dat")
  (tmp_path / "garbled.hea").write_text("this is not\x00 a header at all\n")
  sub = tmp_path / "sub"
  sub.mkdir()
  _write_wfdb(sub, "short", seconds=1.2)
  _write_wfdb(sub, "gap", missing_at=100)
  r = readers.WfdbReader(str(tmp_path))
  assert r.list_items() == ["garbled", "good", "nodat", "sub/gap", "sub/short"]
  assert r.label_names == ("164934002", "426783006")
  assert r.summary()["unparsable_headers"] == 1
  good = r.read("good")
  assert isinstance(good, EcgRecord), good
  assert good.leads == ("I", "II", "V1") and good.labels == (0, 1)
  assert good.metadata["age"] == "50" and good.metadata["baseline"] == "5,0,-7"
  for item, record_id, reason in (("garbled", "garbled", "unreadable"),
                                  ("nodat", "nodat", "unreadable"),
                                  ("sub/short", "short", "too short: 1.2 s < 2.0 s"),
                                  ("sub/gap", "gap", "nan_or_inf in lead V1"),
                                  ("missing", "missing", "unknown item")):
    rec = r.read(item)
    assert isinstance(rec, Reject), (item, rec)
    assert rec.record_id == record_id and rec.reason.startswith(reason), rec
  assert "nodat.dat" in r.read("nodat").reason
  r2 = pickle.loads(pickle.dumps(r))
  assert r2.read("good").labels == (0, 1)


# ------------------------------------------------------------------------------------
# NumPy / HDF5.


def _ecg(n_leads=12, fs=500.0, seconds=10.0, seed=0) -> np.ndarray:
  """ECG-like float mV [leads, samples]: 75 bpm QRS spikes, wander, a little noise."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(round(fs * seconds))) / fs
  spikes = np.exp(-0.5 * (((t % 0.8) - 0.4) / 0.012) ** 2)
  amp = rng.uniform(0.3, 1.5, (n_leads, 1)) * rng.choice([-1, 1], (n_leads, 1))
  wander = 0.1 * np.sin(2 * np.pi * 0.25 * t + rng.uniform(0, 6, (n_leads, 1)))
  return amp * spikes + wander + 0.01 * rng.standard_normal((n_leads, t.size))


def test_numpy_npy_with_sidecar(tmp_path):
  x = np.stack([_ecg(12, 100, 10, seed=i) for i in range(5)]).astype(np.float64)
  np.save(tmp_path / "ecg.npy", x)
  (tmp_path / "ecg.npy.json").write_text(json.dumps({
      "sampling_rate": 100, "leads": list(STANDARD_LEADS), "labels": [0, 2, 1, 2, 0],
      "label_names": ["a", "b", "c"], "splits": ["train"] * 3 + ["val", "test"]}))
  r = readers.make_reader("numpy", str(tmp_path / "ecg.npy"), None, None)
  assert r.label_type == "class_index" and r.label_names == ("a", "b", "c")
  assert r.list_items() == ["0000", "0001", "0002", "0003", "0004"]
  rec = r.read("0003")
  assert isinstance(rec, EcgRecord), rec
  assert rec.signal.dtype == np.float32 and rec.labels == (2,) and rec.split == "val"
  np.testing.assert_array_equal(rec.gain, 1.0)
  np.testing.assert_allclose(rec.signal, x[3], atol=1e-6)
  assert rec.record_id == "0003"


def test_numpy_npz_integer_with_gain_and_multi_hot(tmp_path):
  x = np.stack([np.round(_ecg(2, 250, 4, seed=i) * 200) for i in range(3)]).astype(np.int32)
  y = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]])
  np.savez(tmp_path / "d.npz", x=x, y=y, ids=np.array(["r1", "r2", "r3"]))
  (tmp_path / "d.json").write_text(json.dumps({
      "sampling_rate": 250, "leads": ["MLII", "V5"], "gain": 200, "labels": "y",
      "record_ids": "ids", "label_names": ["A", "B", "C"]}))
  r = readers.NumpyReader(str(tmp_path / "d.npz"))
  assert r.label_type == "multi_hot" and r.label_names == ("A", "B", "C")
  recs = [r.read(i) for i in r.list_items()]
  assert [rec.record_id for rec in recs] == ["r1", "r2", "r3"]
  assert [rec.labels for rec in recs] == [(0, 2), (), (1,)]
  assert recs[0].signal.dtype == np.int16 and recs[0].leads == ("II", "V5")
  np.testing.assert_array_equal(recs[0].signal, x[0])
  np.testing.assert_array_equal(recs[0].gain, 200.0)
  rp = pickle.loads(pickle.dumps(r))
  np.testing.assert_array_equal(rp.read("0002").signal, x[2])


def test_numpy_hdf5_samples_last_microvolts(tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  x = np.stack([_ecg(12, 400, 5, seed=i).T * 1000 for i in range(4)]).astype(np.float32)
  with h5py.File(tmp_path / "t.h5", "w") as f:
    f["tracings"] = x  # [N, samples, leads], like CODE-15.
    f["exam_id"] = np.array([11, 12, 13, 14])
  r = readers.make_reader("hdf5", str(tmp_path / "t.h5"),
                          labels=["AF", ["AF", "RBBB"], [], "RBBB"], sampling_rate=400,
                          leads=",".join(STANDARD_LEADS), units="uV", record_ids="exam_id",
                          splits="train")
  assert r.summary()["layout"] == "NTC" and r.label_type == "multi_hot"
  assert r.label_names == ("AF", "RBBB")
  rec = r.read("0001")
  assert isinstance(rec, EcgRecord), rec
  assert rec.record_id == "12" and rec.labels == (0, 1) and rec.split == "train"
  assert rec.signal.shape == (12, 2000)
  np.testing.assert_allclose(rec.signal, x[1].T / 1000, rtol=1e-6)
  r2 = pickle.loads(pickle.dumps(r))  # An open h5py handle must not travel.
  assert r2.read("0003").labels == (1,) and r2.read("0002").labels == ()


def test_numpy_directory_of_records(tmp_path):
  d = tmp_path / "recs"
  d.mkdir()
  for name, seed in (("b", 1), ("a", 0), ("c", 2), ("d", 3)):
    np.save(d / f"{name}.npy", _ecg(3, 200, 3, seed=seed).astype(np.float32))
  x_bad = _ecg(3, 200, 3)
  x_bad[2, 10] = np.nan
  np.save(d / "nan.npy", x_bad.astype(np.float32))
  (d / "meta.json").write_text(json.dumps({
      "sampling_rate": 200, "leads": ["I", "II", "V2"],
      "labels": {"a": "x", "b": "y", "c": "x", "nan": "y"}}))
  r = readers.NumpyReader(str(d))
  assert r.list_items() == ["a", "b", "c", "d", "nan"]
  assert r.label_type == "class_index" and r.label_names == ("x", "y")
  assert r.read("b").labels == (1,)
  unlabelled = r.read("d")
  assert isinstance(unlabelled, Reject) and unlabelled.reason.startswith("unlabelled")
  rec = r.read("nan")
  assert isinstance(rec, Reject) and rec.reason == "nan_or_inf in lead V2"
  assert rec.source.endswith("nan.npy")


def test_make_reader_rejects_unknown_format(tmp_path):
  with pytest.raises(ValueError, match="unknown format"):
    readers.make_reader("edf", str(tmp_path), None, None)


# ------------------------------------------------------------------------------------
# validate().


def _record(x: np.ndarray, fs=500.0, leads=STANDARD_LEADS, digital=True) -> EcgRecord:
  if digital:
    return EcgRecord("r", np.round(x * 1000).astype(np.int16), fs, tuple(leads),
                     np.full(len(leads), 1000.0, np.float32))
  return EcgRecord("r", x.astype(np.float32), fs, tuple(leads), np.ones(len(leads), np.float32))


def test_validate_clean_records_pass():
  assert validate(_record(_ecg())) is None
  assert validate(_record(_ecg(), digital=False), expected_rate=500,
                  required_leads=["ii", "AVR"]) is None


def test_validate_reasons():
  x = _ecg()
  nan = x.copy()
  nan[8, 100:110] = np.nan
  assert validate(_record(nan, digital=False)) == "nan_or_inf in lead V3"
  inf = x.copy()
  inf[[0, 1], 5] = np.inf
  assert validate(_record(inf, digital=False)) == "nan_or_inf in leads I,II"
  flat = x.copy()
  flat[6] = 0.0
  flat[7] = 0.002 * np.sin(np.arange(x.shape[1]))
  assert validate(_record(flat)) == "flat lead(s): V1,V2"
  assert validate(_record(flat), max_flat_leads=1) == "flat lead(s): V1,V2"
  assert validate(_record(flat), max_flat_leads=2) is None
  sat = x.copy()
  sat[1] = np.clip(sat[1], None, np.percentile(sat[1], 90))
  assert validate(_record(sat)) == "saturated lead(s): II"
  assert validate(_record(x, fs=250.0), expected_rate=500) == "wrong sampling rate: 250 != 500"
  short = _record(x[:, :600])
  assert validate(short) == "too short: 1.2 s < 2.0 s"
  assert validate(short, min_duration_s=1.0) is None
  assert validate(_record(x[:3], leads=("I", "X", "II"))) == "unknown lead name: 'X'"
  assert validate(_record(x[:3], leads=("I", "X", "II")), allowed_leads=None) is None
  assert validate(_record(x[:3], leads=("I", "II", "II"))) == "duplicate lead: 'II'"
  assert validate(_record(x[:2], leads=("I", "II")),
                  required_leads=["I", "V1"]) == "missing required leads: V1"
  assert validate(_record(x[:3], leads=("I", "II"))).startswith("shape mismatch")
  rec = _record(x, digital=False)
  rec.gain = rec.gain * 2
  assert validate(rec).startswith("bad gain")
