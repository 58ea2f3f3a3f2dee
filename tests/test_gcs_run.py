"""Run-side files in a bucket (the GCS emulator) and on local disk: metrics.jsonl across a
resume, TensorBoard, plots, checkpoint seal / verify / quarantine, export round trip."""
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ecgjax import checkpoint as ckpt_lib
from ecgjax import metrics as metrics_lib
from ecgjax import plots
from ecgjax import state as state_lib
from ecgjax import storage


@pytest.fixture
def root(storage_root):
  return storage_root


def test_metrics_jsonl_survives_a_resume_and_tensorboard_is_written(root):
  w = metrics_lib.MetricWriter(root, enabled=True)
  w.scalars(2, {"loss": 1.5})
  w.scalars(4, {"loss": 1.25})
  w.close()
  time.sleep(1.1)  # tensorboardX names event files by the second.
  w = metrics_lib.MetricWriter(root, enabled=True)  # a resumed run appends.
  w.scalars(6, {"loss": 1.0, "lr": 0.5})
  png = storage.join(root, "plots", "curve.png")
  plots.loss_curves(png, plots.read_metrics(storage.join(root, "metrics.jsonl")))
  w.image(6, "curve", png)
  w.close()
  rows = [json.loads(l) for l in storage.read_text(storage.join(root, "metrics.jsonl")).splitlines()]
  assert [(r["step"], r["loss"]) for r in rows] == [(2, 1.5), (4, 1.25), (6, 1.0)]
  assert rows[-1]["lr"] == 0.5
  assert storage.read_bytes(png)[:8] == b"\x89PNG\r\n\x1a\n"
  events = [f for f in storage.walk_files(storage.join(root, "tb")) if "tfevents" in f]
  assert len(events) == 2  # one event file per writer (run and resumed run)
  # The scalars and the image are in the event files (TFRecord framing, protobuf events).
  from tensorboardX.proto import event_pb2
  tags = []
  for f in events:
    data = storage.read_bytes(storage.join(root, "tb", f))
    at = 0
    while at < len(data):
      n = int.from_bytes(data[at:at + 8], "little")
      ev = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
      tags += [(ev.step, v.tag) for v in ev.summary.value]
      at += 12 + n + 4
  assert {(2, "loss"), (4, "loss"), (6, "loss"), (6, "lr"), (6, "curve")} <= set(tags), tags


def _manager(directory):
  cfg = ml_collections.ConfigDict({"keep_checkpoints": 5, "async_checkpointing": False})
  return ckpt_lib.make_manager(directory, cfg)


def test_checkpoint_seal_verify_and_quarantine(root):
  directory = storage.join(root, "checkpoints")
  state = {"w": jnp.arange(4096, dtype=jnp.float32), "b": jnp.ones((3, 5), jnp.float32)}
  manager = _manager(directory)
  for step in (1, 2):
    ckpt_lib.save(manager, step, jax.tree.map(lambda x: x * step, state), None, force=True)
  manager.wait_until_finished()
  manager.close()
  for step in (1, 2):
    path = storage.join(directory, str(step))
    assert ckpt_lib.is_final(path) and ckpt_lib.verify(path)
  seal = json.loads(storage.read_text(storage.join(directory, "2", ckpt_lib.INTEGRITY_FILE)))
  assert seal["files"] and all(f.startswith("state/") for f in seal["files"])
  # Flip one byte of the largest sealed file: the seal catches it (Orbax would not).
  rel = max(seal["files"], key=lambda f: seal["files"][f][0])
  target = storage.join(directory, "2", rel)
  data = bytearray(storage.read_bytes(target))
  data[len(data) // 2] ^= 0xFF
  storage.write_bytes(target, bytes(data))
  with pytest.raises(ckpt_lib.CheckpointError, match="crc32c"):
    ckpt_lib.verify(storage.join(directory, "2"))

  manager = _manager(directory)
  abstract = ckpt_lib.abstract_with_shardings(
      state, jax.tree.map(lambda x: x.sharding, state))
  step, restored, _ = ckpt_lib.restore(manager, abstract, None, quarantine=True)
  assert step == 1
  np.testing.assert_array_equal(restored["w"], np.arange(4096, dtype=np.float32))
  assert manager.all_steps() == [1]
  moved = storage.listdir(directory.rstrip("/") + "_unreadable")
  assert len(moved) == 1 and moved[0].startswith("2-")
  assert not storage.exists(storage.join(directory, "2", rel))
  # The step number can be written again (Orbax refuses while the broken one is there).
  ckpt_lib.save(manager, 2, state, None, force=True)
  manager.wait_until_finished()
  assert ckpt_lib.verify(storage.join(directory, "2"))
  manager.close()


def test_check_workdir_probes_the_bucket(root):
  ckpt_lib.check_workdir(storage.join(root, "wd"))
  left = storage.walk_files(root) if storage.isdir(root) else []
  assert not [f for f in left if ".write_probe" in f]  # the probe object is deleted.
  if storage.is_remote(root):
    with pytest.raises(ckpt_lib.WorkdirError, match="gs://no-such-bucket-ecgjax/wd"):
      ckpt_lib.check_workdir("gs://no-such-bucket-ecgjax/wd")


def test_export_round_trip_and_load_pretrained(root, tmp_path):
  from ecgjax.inference import encoder as encoder_lib
  from ecgjax.inference import export
  from ecgjax.inference import pretrained
  from tests.conftest import micro_config
  cfg = micro_config("")
  model = encoder_lib.random_init(state_lib.model_config(cfg), seed=3)
  meta = export.export_config(cfg, 7, root, "random")
  out = storage.join(root, "export")
  export.write(out, model, meta)
  assert sorted(storage.listdir(out)) == ["README.md", "config.json", "numpy_encoder.py",
                                          "params.safetensors"]
  assert "step 7" in storage.read_text(storage.join(out, "README.md"))
  expected = {k: v for k, v in export.flatten_params(nnx.state(model, nnx.Param)).items()
              if not export.is_head_param(k)}
  got = export.load_params(out)
  assert got.keys() == expected.keys()
  for k in got:
    np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
  x = np.random.default_rng(1).standard_normal((2, 12, 1000)).astype(np.float32)
  enc = pretrained.load_pretrained(out)
  assert enc.config["source"] == storage.abspath(out)
  emb = enc.embed(x, 250, mode="first")
  win, present = enc.windows(x[0], 250, enc.leads, "first")
  direct = np.asarray(model.embed(jnp.asarray(win), jnp.asarray(present[None])))
  np.testing.assert_allclose(emb[:1], direct, rtol=1e-6, atol=1e-6)
  # A damaged file names itself.
  storage.write_bytes(storage.join(out, export.PARAMS_FILE), b"\x08\x00\x00")
  with pytest.raises(ValueError, match="params.safetensors"):
    export.load_params(out)


def test_embed_cli_reads_and_writes_the_bucket(gcs_emulator, tmp_path):
  """--model, --input (numpy + sidecar, and shards) and --output all in the bucket."""
  import io
  from data_pipelines import convert
  from ecgjax.data.records import STANDARD_LEADS
  from ecgjax.inference import embed
  from ecgjax.inference import encoder as encoder_lib
  from ecgjax.inference import export
  from ecgjax.inference import pretrained
  from tests.conftest import micro_config
  root = f"{gcs_emulator}/embed_cli_{os.getpid()}"
  cfg = micro_config("")
  model = encoder_lib.random_init(state_lib.model_config(cfg), seed=5)
  export.write(f"{root}/export", model, export.export_config(cfg, 0, root, "random"))
  x = (np.random.default_rng(2).standard_normal((3, 12, 1000)) * 0.5).astype(np.float32)
  buf = io.BytesIO()
  np.save(buf, x)
  storage.write_bytes(f"{root}/in/x.npy", buf.getvalue())
  storage.write_text(f"{root}/in/x.json", json.dumps({"sampling_rate": 250,
                                                      "leads": list(STANDARD_LEADS)}))
  embed.run(embed.build_parser().parse_args([
      f"--model={root}/export", f"--input={root}/in/x.npy", f"--output={root}/out/emb.npz",
      "--mode=first", "--quiet"]))
  with np.load(io.BytesIO(storage.read_bytes(f"{root}/out/emb.npz"))) as z:
    got = z["embeddings"]
  want = pretrained.load_pretrained(f"{root}/export").embed(x, 250, mode="first")
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

  shards = f"{root}/shards"
  convert.convert(convert.build_parser().parse_args([
      "--format=synthetic", f"--output={shards}", "--num_records=24", "--num_shards=1",
      "--workers=1", "--sampling_rate=250", "--quiet"]))
  out = embed.run(embed.build_parser().parse_args([
      f"--model={root}/export", f"--input={shards}", f"--output={root}/out/shards",
      "--splits=test", "--quiet"]))
  spec = json.loads(storage.read_text(f"{shards}/spec.json"))
  assert out["embeddings"].shape == (spec["splits"]["test"], 64)
  assert storage.isfile(f"{root}/out/shards.npz")  # '.npz' added, as np.savez does.


def test_probe_job_in_the_bucket_equals_the_local_one(gcs_emulator, synthetic_shards, tmp_path):
  """Export, shards, workdir and embedding cache in the bucket: the same results as on disk."""
  from data_pipelines import convert
  from ecgjax.evaluation import probe
  from ecgjax.inference import encoder as encoder_lib
  from ecgjax.inference import export
  from tests.conftest import micro_config
  from tests.test_probe import _probe_config
  root = f"{gcs_emulator}/probe_{os.getpid()}"
  shards = f"{root}/shards"  # the synthetic_shards fixture's conversion, into the bucket
  convert.convert(convert.build_parser().parse_args([
      "--format=synthetic", f"--output={shards}", "--num_records=240", "--num_shards=3",
      "--workers=1", "--sampling_rate=250", "--quiet"]))
  cfg = micro_config(synthetic_shards)
  model = encoder_lib.random_init(state_lib.model_config(cfg), seed=7)
  meta = export.export_config(cfg, 0, str(tmp_path), "random")
  export.write(str(tmp_path / "export"), model, meta)
  export.write(f"{root}/export", model, meta)
  local = probe.run(_probe_config(str(tmp_path / "export"), synthetic_shards),
                    str(tmp_path / "probe"))
  remote = probe.run(_probe_config(f"{root}/export", shards), f"{root}/probe")
  assert [r["test"]["macro_auroc"] for r in remote["results"]] == [
      r["test"]["macro_auroc"] for r in local["results"]]
  saved = json.loads(storage.read_text(f"{root}/probe/results.json"))
  assert saved["task"]["data_path"] == shards
  for png in ("roc_curves.png", "label_efficiency.png"):
    assert storage.getsize(f"{root}/probe/{png}") > 1000
  assert len(storage.listdir(f"{root}/probe/embeddings")) == 3  # train, val, test
  again = probe.run(_probe_config(f"{root}/export", shards), f"{root}/probe")
  assert all(e["cached"] for e in again["splits"]["embeddings"].values())
  assert again["results"] == remote["results"]


def test_task_suite_in_the_bucket_equals_the_local_one(gcs_emulator, synthetic_shards, tmp_path):
  """data_root, task data and workdir in the bucket: the same metrics and files as on disk."""
  from configs import tasks as tasks_config
  from data_pipelines import convert
  from ecgjax.evaluation import tasks
  from tests.test_tasks import _config
  root = f"{gcs_emulator}/tasks_{os.getpid()}"
  convert.convert(convert.build_parser().parse_args([  # the synthetic_shards conversion.
      "--format=synthetic", f"--output={root}/data/syn", "--num_records=240",
      "--num_shards=3", "--workers=1", "--sampling_rate=250", "--quiet"]))

  def config(data_root, data):
    c = _config(data_root, af=tasks_config.task(
        data=data, classes=(("AF", ("atrial_fibrillation",)),),
        keep=("atrial_fibrillation", "normal_sinus"), metrics=("auroc", "f1")))
    c.label_fractions, c.bootstrap = (1.0,), 20
    return c

  local = tasks.run(config(os.path.dirname(synthetic_shards),
                           os.path.basename(synthetic_shards)), str(tmp_path / "suite"))
  remote = tasks.run(config(f"{root}/data", "syn"), f"{root}/suite")
  for enc in ("random", "handcrafted"):
    assert (remote["tasks"]["af"]["encoders"][enc][-1]["metrics"] ==
            local["tasks"]["af"]["encoders"][enc][-1]["metrics"])
  for f in ("tasks.json", "tasks.md", "tasks.png"):
    assert storage.getsize(f"{root}/suite/{f}") > 200
