"""Mistakes users make get one line and a non-zero exit; odd inputs warn; leads by position.

CLI failures run as subprocesses (the exit status and stderr are what a user sees) on tiny
synthetic inputs; nothing here trains except the shared 3-step run the embed test needs.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipelines import convert
from data_pipelines import readers
from ecgjax import cli
from ecgjax.data import example, spec as spec_lib, synthetic
from ecgjax.data.source import ShardedSource
from tests.conftest import requires_shared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*argv, timeout=180):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=env)


def _one_line(out, status, prog):
  """The only stderr line is 'PROG: error: ...'; returns the message after the prefix."""
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == status, (out.returncode, out.stderr[-3000:])
  assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), out.stderr[-3000:]
  return lines[0][len(f"{prog}: error: "):]


def _wfdb_dir(path, names=("ECG", "ECG"), fs=250, seconds=10.0, n=2):
  """n two-channel WFDB records r000.. built from synthetic leads II and V1 (mV)."""
  import wfdb  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  for i in range(n):
    rec = synthetic.make_record(i, 0, float(fs), seconds)
    x = rec.physical()[[rec.leads.index("II"), rec.leads.index("V1")]].T.astype(np.float64)
    wfdb.wrsamp(f"r{i:03d}", fs=fs, units=["mV", "mV"], sig_name=["CHA", "CHB"], p_signal=x,
                fmt=["16", "16"], adc_gain=[200.0, 200.0], baseline=[0, 0],
                write_dir=str(path))
    # wfdb refuses to write duplicate names, which real Holter headers have.
    hea = os.path.join(path, f"r{i:03d}.hea")
    lines = open(hea).read().splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0] + f" {names[0]}"
    lines[2] = lines[2].rsplit(" ", 1)[0] + f" {names[1]}"
    with open(hea, "w") as f:
      f.write("\n".join(lines) + "\n")
  return str(path)


# ------------------------------------------------------------------------ converter CLI
def test_convert_empty_directory_fails(tmp_path):
  (tmp_path / "in").mkdir()
  out = _cli("-m", "data_pipelines.convert", "--format=wfdb", f"--input={tmp_path / 'in'}",
             f"--output={tmp_path / 'out'}")
  msg = _one_line(out, 2, "convert")
  assert msg == f"--input={tmp_path / 'in'}: no WFDB records (.hea files) under it"
  assert not (tmp_path / "out").exists()


def test_convert_labels_matching_no_record_names_both_sides(tmp_path):
  data = _wfdb_dir(tmp_path / "in", names=("II", "V1"))
  (tmp_path / "labels.csv").write_text("record,label\nA0001,N\nA0002,AF\n")
  out = _cli("-m", "data_pipelines.convert", "--format=wfdb", f"--input={data}",
             f"--labels={tmp_path / 'labels.csv'}", f"--output={tmp_path / 'out'}")
  msg = _one_line(out, 2, "convert")
  assert "none of its 2 ids matches one of the 2 records" in msg
  assert "labels id 'A0001' vs record id 'r000'" in msg


def test_convert_rate_mismatch_is_an_error_not_a_silent_filter(tmp_path):
  data = _wfdb_dir(tmp_path / "in", names=("II", "V1"))
  out = _cli("-m", "data_pipelines.convert", "--format=wfdb", f"--input={data}",
             "--sampling_rate=100", f"--output={tmp_path / 'out'}")
  msg = _one_line(out, 2, "convert")
  assert msg.startswith("--sampling_rate=100: the WFDB headers declare 250 Hz (2 records)")


@pytest.mark.parametrize("flag,expected", [
    ("--sampling_rate=0", "--sampling_rate=0: must be > 0 Hz"),
    ("--leads=X,Y", "--leads: unknown lead name 'X'"),
    ("--leads=II,II", "--leads: duplicate lead 'II'"),
])
def test_convert_bad_flags_fail_before_work(tmp_path, flag, expected):
  data = _wfdb_dir(tmp_path / "in", names=("II", "V1"), n=1)
  out = _cli("-m", "data_pipelines.convert", "--format=wfdb", f"--input={data}", flag,
             f"--output={tmp_path / 'out'}")
  assert _one_line(out, 2, "convert").startswith(expected)
  assert not (tmp_path / "out").exists()  # nothing written before the flags were checked


def test_convert_all_rejected_exits_1_without_spec(tmp_path):
  data = _wfdb_dir(tmp_path / "in", names=("II", "V1"), seconds=1.0)
  out = _cli("-m", "data_pipelines.convert", "--format=wfdb", f"--input={data}",
             f"--output={tmp_path / 'out'}", "--workers=1", "--quiet")
  msg = _one_line(out, 1, "convert")
  assert msg.startswith("0 of 2 records converted (too short: 2; e.g. r000: too short: 1.0 s")
  assert not (tmp_path / "out" / "spec.json").exists()
  assert len((tmp_path / "out" / "rejects.jsonl").read_text().splitlines()) == 2


def test_convert_verbose_keeps_the_traceback(tmp_path):
  (tmp_path / "in").mkdir()
  out = _cli("-m", "data_pipelines.convert", "--format=wfdb", f"--input={tmp_path / 'in'}",
             f"--output={tmp_path / 'out'}", "--verbose")
  assert out.returncode != 0 and "Traceback" in out.stderr
  assert "ValueError: --input=" in out.stderr


def test_numpy_sidecar_typo_is_rejected_with_did_you_mean(tmp_path):
  np.save(tmp_path / "x.npy", np.zeros((2, 2, 1000), np.float32))
  (tmp_path / "x.json").write_text(json.dumps({"sampling_rat": 500, "leads": ["I", "II"]}))
  out = _cli("-m", "data_pipelines.convert", "--format=numpy", f"--input={tmp_path / 'x.npy'}",
             f"--output={tmp_path / 'out'}")
  msg = _one_line(out, 2, "convert")
  assert msg.startswith(f"{tmp_path / 'x.json'}: unknown sidecar key 'sampling_rat' "
                        "(did you mean sampling_rate? allowed: sampling_rate, leads")


# ------------------------------------------------------------------ leads by position
def test_leads_by_position_override_header_names(tmp_path):
  data = _wfdb_dir(tmp_path / "in")  # both channels named 'ECG', as MIT-BIH SVDB 800.
  args = ["--format=wfdb", f"--input={data}", "--num_shards=1", "--workers=1",
          "--split_fractions=1,0,0", "--quiet"]
  out = _cli("-m", "data_pipelines.convert", *args, f"--output={tmp_path / 'plain'}")
  assert "unknown lead name: 'ECG'" in _one_line(out, 1, "convert")
  spec = convert.convert(convert.build_parser().parse_args(
      [*args, f"--output={tmp_path / 'named'}", "--leads=II,V1"]))
  assert spec["num_records"] == 2 and spec["lead_order"] == ["II", "V1"]
  rec = example.decode(ShardedSource(str(tmp_path / "named"), "train")[0])
  assert rec["leads"] == ("II", "V1")
  import wfdb  # pylint: disable=g-import-not-at-top
  ref = wfdb.rdrecord(os.path.join(data, "r000"), physical=False)
  np.testing.assert_array_equal(rec["signal"], ref.d_signal.T)


def test_leads_count_mismatch_is_a_reject(tmp_path):
  data = _wfdb_dir(tmp_path / "in", n=1)
  r = readers.make_reader("wfdb", data, leads="I,II,V1")
  rej = r.read("r000")
  assert rej.reason == "shape mismatch: --leads names 3 channels, the record has 2 (ECG,ECG)"


def test_mitbih_leads_by_position():
  data = requires_shared("mitbih")
  r = readers.make_reader("wfdb", str(data), leads="II,V1")
  rec = r.read("100")  # header names MLII, V5
  assert rec.leads == ("II", "V1") and rec.metadata["source_leads"] == "MLII,V5"


# --------------------------------------------------------------- flat lead -> absent
def _numpy_input(tmp_path, x, leads, **side):
  np.save(tmp_path / "x.npy", x)
  (tmp_path / "x.json").write_text(json.dumps({"sampling_rate": 250, "leads": leads, **side}))
  return str(tmp_path / "x.npy")


def test_flat_lead_becomes_absent_and_is_counted(tmp_path):
  recs = [synthetic.make_record(i, 0, 250.0, 4.0) for i in range(4)]
  leads = ["I", "II", "V1"]
  x = np.stack([r.physical()[[r.leads.index(l) for l in leads]] for r in recs])
  x[1, 2] = 0.0         # record 1: V1 disconnected
  x[2, 0] = 0.3         # record 2: lead I a constant offset
  x[3] = 0.0            # record 3: every lead flat -> rejected
  path = _numpy_input(tmp_path, x, leads)
  spec = convert.convert(convert.build_parser().parse_args(
      ["--format=numpy", f"--input={path}", f"--output={tmp_path / 'out'}", "--num_shards=1",
       "--workers=1", "--split_fractions=1,0,0", "--quiet"]))
  assert spec["num_records"] == 3 and spec["rejects"]["count"] == 1
  assert spec["flat_leads"] == {"records": 2, "by_lead": {"I": 1, "V1": 1}}
  on_disk = spec_lib.load(str(tmp_path / "out"))
  assert on_disk["flat_leads"] == spec["flat_leads"]
  src = ShardedSource(str(tmp_path / "out"), "train")
  stored = {r["record_id"]: r for r in (example.decode(src[i]) for i in range(len(src)))}
  assert stored["0001"]["leads"] == ("I", "II") and stored["0002"]["leads"] == ("II", "V1")
  assert stored["0000"]["leads"] == ("I", "II", "V1")
  np.testing.assert_allclose(stored["0001"]["signal"], x[1, :2], atol=1e-6)
  reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
  assert reject["record_id"] == "0003" and reject["reason"] == "flat lead(s): I,II,V1"


# ---------------------------------------------------------------------- amplitudes
def test_microvolts_given_as_millivolts_warn(tmp_path, caplog):
  recs = [synthetic.make_record(i, 0, 250.0, 4.0) for i in range(3)]
  leads = ["I", "II", "V1"]
  mv = np.stack([r.physical()[[r.leads.index(l) for l in leads]] for r in recs])
  uv = np.round(mv * 1000).astype(np.int16)  # int16 µV, no 'units' in the sidecar
  path = _numpy_input(tmp_path, uv, leads)
  args = ["--format=numpy", f"--input={path}", "--num_shards=1", "--workers=1", "--quiet"]
  with caplog.at_level(logging.WARNING):
    spec = convert.convert(convert.build_parser().parse_args([*args, f"--output={tmp_path / 'a'}"]))
  std_mv = float(np.std(uv[:, 1].astype(np.float64)))  # as the converter sees it: "mV"
  assert std_mv > 100
  assert len(spec["warnings"]) == 1
  assert spec["warnings"][0].startswith(f"lead II std is {std_mv:.4g} \"mV\" over 3 records")
  assert "values look like µV; pass units=uV" in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    spec = convert.convert(convert.build_parser().parse_args(
        [*args, f"--output={tmp_path / 'b'}", "--units=uV"]))
  assert spec["warnings"] == [] and "look like" not in caplog.text
  assert abs(spec["lead_stats"]["II"]["std"] - std_mv / 1000) < 1e-3


def test_amplitude_hint_thresholds():
  from data_pipelines.validate import amplitude_hint  # pylint: disable=g-import-not-at-top
  assert amplitude_hint(0.3) is None and amplitude_hint(2.0) is None
  assert amplitude_hint(260.0) == "values look like µV; pass units=uV"
  assert amplitude_hint(0.0003) == "values look like V; pass units=V"


# ----------------------------------------------------------------------- progress
def test_conversion_progress_moves_per_record(tmp_path, monkeypatch):
  updates = []

  class Bar:
    def __init__(self, total, **_):
      self.total, self.n = total, 0

    def update(self, k=1):
      updates.append(k)
      self.n += k

    def close(self):
      pass

  monkeypatch.setattr(convert.tqdm, "tqdm", Bar)
  convert.convert(convert.build_parser().parse_args(
      ["--format=synthetic", f"--output={tmp_path}", "--num_records=12", "--num_shards=2",
       "--workers=1", "--sampling_rate=250", "--duration_s=3"]))
  # One update per record, not one per shard group.
  assert updates[:12] == [1] * 12 and sum(updates) == 12

  # Worker processes: the parent polls a shared counter, so one group still moves the bar.
  updates.clear()
  convert.convert(convert.build_parser().parse_args(
      ["--format=synthetic", f"--output={tmp_path / 'w2'}", "--num_records=300",
       "--num_shards=1", "--workers=2", "--sampling_rate=250", "--duration_s=3"]))
  assert sum(updates) == 300 and len([k for k in updates if 0 < k < 300]) >= 2, updates


# -------------------------------------------------------------------------- embed CLI
@pytest.mark.parametrize("flags,expected", [
    (["--sampling_rate=0"], "--sampling_rate=0: must be > 0 Hz"),
    (["--sampling_rate=-5"], "--sampling_rate=-5: must be > 0 Hz"),
    (["--sampling_rate=250", "--leads=X,Y,Z"], "--leads: unknown lead name 'X'"),
])
def test_embed_bad_flags_fail_before_any_work(tmp_path, flags, expected):
  np.save(tmp_path / "x.npy", np.zeros((2, 3, 1000), np.float32))
  # The model does not exist: a flag error first shows the flags were checked before it.
  out = _cli("-m", "ecgjax.embed", f"--model={tmp_path / 'no_model'}",
             f"--input={tmp_path / 'x.npy'}", f"--output={tmp_path / 'e.npz'}", *flags)
  assert _one_line(out, 2, "embed").startswith(expected)


@pytest.mark.parametrize("module", ["data_pipelines.convert", "ecgjax.embed"])
def test_mitbih_at_a_wrong_rate_is_one_error_not_44_skips(tmp_path, module):
  data = requires_shared("mitbih")
  extra = ["--format=wfdb"] if module.startswith("data") else [f"--model={tmp_path}"]
  out = _cli("-m", module, *extra, f"--input={data}", f"--output={tmp_path / 'o'}",
             "--sampling_rate=100")
  msg = _one_line(out, 2, module.rsplit(".", 1)[-1])
  assert msg.startswith("--sampling_rate=100: the WFDB headers declare 360 Hz (44 records)")


def test_embed_modes_match_the_api():
  from ecgjax.inference import embed, pretrained  # pylint: disable=g-import-not-at-top
  assert embed.MODES == pretrained.MODES


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, synthetic_shards):
  from tests.trained_run import shared_trained_run  # pylint: disable=g-import-not-at-top
  return os.path.join(shared_trained_run(tmp_path_factory, synthetic_shards), "export")


def test_embed_zero_embeddings_fails_and_info_lines_show(tmp_path, export_dir):
  np.save(tmp_path / "short.npy", np.random.default_rng(0).normal(size=(2, 3, 100)))
  out = _cli("-m", "ecgjax.embed", f"--model={export_dir}", f"--input={tmp_path / 'short.npy'}",
             f"--output={tmp_path / 'e.npz'}", "--sampling_rate=250", "--leads=I,II,V1",
             "--quiet", timeout=300)
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 1, out.stderr[-3000:]
  assert lines[-1].startswith("embed: error: 0 of 2 records embedded; e.g. 0000: "), lines
  assert "shorter than the model's" in lines[-1] and not (tmp_path / "e.npz").exists()
  assert "Traceback" not in out.stderr


def test_embed_layout_flag_and_closing_info_line(tmp_path, export_dir):
  import ecgjax  # pylint: disable=g-import-not-at-top
  recs = [synthetic.make_record(i, 0, 250.0, 3.0) for i in range(2)]
  x = np.stack([r.physical()[:3] for r in recs])  # [N, 3 leads, 750]
  np.save(tmp_path / "ntc.npy", np.ascontiguousarray(x.transpose(0, 2, 1)))
  out = _cli("-m", "ecgjax.embed", f"--model={export_dir}", f"--input={tmp_path / 'ntc.npy'}",
             f"--output={tmp_path / 'e.npz'}", "--sampling_rate=250", "--leads=I,II,III",
             "--layout=NTC", "--mode=first", "--quiet", timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"INFO embedded 2 records (0 skipped) -> {tmp_path / 'e.npz'}" in out.stderr
  want = ecgjax.load_pretrained(export_dir).embed(x, 250.0, ("I", "II", "III"), mode="first")
  np.testing.assert_allclose(np.load(tmp_path / "e.npz")["embeddings"], want, atol=1e-5)


# -------------------------------------------------------------------------- main.py
def test_main_unknown_nested_override_is_one_line_with_did_you_mean(tmp_path):
  out = _cli("main.py", "--config=configs/hl.py:demo", f"--workdir={tmp_path}",
             "--config.optim.learning_rate=1e-3")
  msg = _one_line(out, 2, "main.py")
  assert msg.startswith("config.optim.learning_rate: unknown key (did you mean "
                        "config.optim.lr? keys allowed under config.optim: b1, b2")


def test_main_config_error_in_job_is_one_line_and_verbose_shows_traceback(tmp_path):
  argv = ["main.py", "--config=configs/hl.py:demo", f"--workdir={tmp_path / 'w'}",
          "--config.model_size=huge"]
  msg = _one_line(_cli(*argv, timeout=300), 2, "main.py")
  assert msg.startswith("config.model_size: 'huge' not in (")
  out = _cli(*argv, "--verbose", timeout=300)
  assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr


def test_missing_config_key_at_any_depth():
  import importlib  # pylint: disable=g-import-not-at-top
  c = importlib.import_module("configs.hl").get_config("demo")
  assert cli.missing_config_key(c, "optim.lr") is None
  assert cli.missing_config_key(c, "data.sampling_rat").startswith(
      "config.data.sampling_rat: unknown key (did you mean config.data.sampling_rate?")
  assert (cli.missing_config_key(c, "optim.lr.x")
          == "config.optim.lr is a value (float), not a group")
  assert "did you mean config.global_batch?" in cli.missing_config_key(c, "batch_size")


# ---------------------------------------------------------------------------- probe
def test_probe_asks_for_the_workdir_flag():
  import importlib  # pylint: disable=g-import-not-at-top
  from ecgjax.evaluation import probe  # pylint: disable=g-import-not-at-top
  c = importlib.import_module("configs.probe").get_config()
  with pytest.raises(probe.ProbeConfigError, match=r"^--workdir: give --workdir=DIR"):
    probe.validate(c, None)


def test_probe_tiny_holdouts_warn():
  from ecgjax.evaluation import probe  # pylint: disable=g-import-not-at-top
  data = {"train": (np.zeros((46, 4)), np.zeros((46, 2))), "val": (np.zeros((1, 4)), None),
          "test": (np.zeros((30, 4)), None)}
  origin = {"val": "stratified 2% of 'train'", "test": "shards split 'test'"}
  w = probe.small_split_warnings(data, origin)
  assert w == ["val has only 1 record(s) (stratified 2% of 'train'): its metrics will be n/a "
               "or noise; convert with a val split or raise config.holdout (fewer than 20 "
               "records)"]


# ---------------------------------------------------------------------------- train
def test_training_logs_compile_and_final_save_with_durations(synthetic_shards, tmp_path,
                                                             caplog):
  from ecgjax import train  # pylint: disable=g-import-not-at-top
  from tests.conftest import micro_config  # pylint: disable=g-import-not-at-top
  cfg = micro_config(synthetic_shards)
  cfg.total_steps, cfg.log_every, cfg.checkpoint_every = 2, 2, 2
  with caplog.at_level(logging.INFO):
    train.train_and_evaluate(cfg, str(tmp_path / "run"))
  lines = [r.getMessage() for r in caplog.records]
  i = lines.index("compiling the train step…")
  assert lines[i + 1].startswith("compiled train step in ") and lines[i + 1].endswith("s")
  j = lines.index("saving the final checkpoint (step 2)…")
  assert j > i and any(l.startswith("final checkpoint saved in ") for l in lines[j:])
