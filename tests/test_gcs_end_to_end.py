"""A run that lives in a bucket, end to end, against a real GCS API server (the emulator).

convert to gs:// -> train from it with --workdir=gs:// -> kill -9 -> resume -> the params equal
an uninterrupted run's bit for bit -> export to gs:// -> ``load_pretrained("gs://...")`` embeds
exactly as a local export of the same run does.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np
from flax import nnx

from configs import export as export_config
from ecgjax import checkpoint as ckpt_lib
from ecgjax import storage
from ecgjax.inference import export
from ecgjax.inference import pretrained

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12

# The micro model of tests/conftest.py:micro_config, as main.py flags.
MICRO = {
    "total_steps": STEPS, "global_batch": 8, "log_every": 2, "checkpoint_every": 2,
    "plot_every": 1000, "eval_every": 0, "probe_at_end": False, "async_checkpointing": False,
    "data.window_s": 2.0, "data.device_prefetch": 1, "data.read_threads": 1,
    "data.prefetch": 8, "model.width": 32, "model.depth": 2, "model.num_heads": 2,
    "model.mlp_dim": 64, "model.local_depth": 1, "model.decoder_width": 32,
    "model.decoder_depth": 1, "model.decoder_heads": 2, "model.decoder_mlp_dim": 64,
    "model.proj_hidden": 32, "model.proj_dim": 16, "optim.warmup_steps": 2,
}


def _env():
  return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
              JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)


def _train_cmd(workdir: str, data: str) -> list[str]:
  return [sys.executable, os.path.join(ROOT, "main.py"), "--config=configs/hl.py:demo",
          f"--workdir={workdir}", f"--config.data.path={data}",
          *(f"--config.{k}={v}" for k, v in MICRO.items())]


def _train(workdir: str, data: str) -> None:
  out = subprocess.run(_train_cmd(workdir, data), cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-4000:]


def _train_and_kill(workdir: str, data: str, after_step: int) -> None:
  """Starts training and SIGKILLs it once step ``after_step`` is committed in the bucket."""
  proc = subprocess.Popen(_train_cmd(workdir, data), cwd=ROOT, env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  marker = storage.join(workdir, "checkpoints", str(after_step), ckpt_lib.COMMIT_FILE)
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None and not storage.exists(marker):
    time.sleep(0.2)
  proc.kill()  # SIGKILL: no handler, no final save.
  proc.wait()
  assert storage.exists(marker), f"the run never committed step {after_step}"


def _steps(workdir: str) -> list[int]:
  d = storage.join(workdir, "checkpoints")
  return sorted(int(s) for s in storage.listdir(d) if s.isdigit()
                and ckpt_lib.is_final(storage.join(d, s)))


def test_bucket_run_convert_train_kill_resume_export_embed(gcs_emulator, tmp_path):
  root = f"{gcs_emulator}/e2e_{os.getpid()}"
  data = f"{root}/shards"
  conv = subprocess.run(
      [sys.executable, "-m", "data_pipelines.convert", "--format=synthetic", f"--output={data}",
       "--num_records=240", "--num_shards=3", "--workers=1", "--sampling_rate=250", "--quiet"],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert conv.returncode == 0, conv.stderr[-3000:]
  assert storage.isfile(f"{data}/spec.json")

  ref, killed = f"{root}/ref", f"{root}/killed"
  _train(ref, data)
  _train_and_kill(killed, data, after_step=2)
  assert _steps(killed)[-1] < STEPS, _steps(killed)
  _train(killed, data)  # resumes from the newest committed step
  assert _steps(killed)[-1] == STEPS

  # The workdir's other files are in the bucket too.
  rows = [json.loads(l) for l in storage.read_text(f"{killed}/metrics.jsonl").splitlines()]
  assert rows[-1]["step"] == STEPS and rows[0]["step"] == 2  # the first run's rows kept
  assert json.loads(storage.read_text(f"{killed}/config.json"))["data"]["path"] == data
  assert any(f.startswith("tb/events.out.tfevents") for f in storage.walk_files(killed))
  assert storage.getsize(f"{killed}/plots/loss_curves.png") > 1000
  assert ckpt_lib.verify(storage.join(killed, "checkpoints", str(STEPS)))  # sealed

  # Export the resumed run to the bucket (the export job) and to a local directory.
  cfg = export_config.get_config()
  cfg.checkpoint, cfg.output = killed, f"{root}/export"
  export.run(cfg)
  model, train_cfg, step = export.restore_model(killed)
  local = str(tmp_path / "export")
  export.write(local, model, export.export_config(train_cfg, step, killed, "trained"))
  assert sorted(storage.listdir(f"{root}/export")) == sorted(os.listdir(local))

  # Bitwise: the resumed run's params are the uninterrupted run's.
  ref_model, _, ref_step = export.restore_model(ref)
  assert ref_step == step == STEPS
  a = export.flatten_params(nnx.state(ref_model, nnx.Param))
  b = export.load_params(f"{root}/export")
  assert len(b) > 10 and set(b) <= set(a)
  for k in b:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)

  x = np.random.default_rng(0).standard_normal((3, 12, 1000)).astype(np.float32) * 0.5
  from_bucket = pretrained.load_pretrained(f"{root}/export").embed(x, 250, mode="first")
  from_disk = pretrained.load_pretrained(local).embed(x, 250, mode="first")
  assert from_bucket.shape == (3, 64) and np.all(np.isfinite(from_bucket))
  np.testing.assert_array_equal(from_bucket, from_disk)
