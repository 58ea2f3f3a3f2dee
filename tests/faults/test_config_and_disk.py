"""Bad configs and unusable workdirs fail before anything compiles, naming the field/path."""
import importlib
import os
import subprocess
import sys

import pytest

from ecgjax import checkpoint as ckpt_lib
from ecgjax import config_validation as cv
from ecgjax import state as state_lib
from ecgjax import train
from tests.conftest import micro_config
from tests.faults.conftest import ROOT


def _cfg(path=""):
  c = importlib.import_module("configs.hl").get_config("demo")
  c.data.path = path
  return c


BAD = {
    # name: (mutation, field named in the message, what it must say is allowed)
    "mesh_vs_devices": (lambda c: c.mesh.update(data=3, fsdp=1, tensor=1), "config.mesh",
                        "needs 3 devices but 8 are available"),
    "mesh_two_wildcards": (lambda c: c.mesh.update(data=-1, fsdp=-1), "config.mesh",
                           "at most one axis may be -1"),
    "batch_vs_data_parallel": (lambda c: setattr(c, "global_batch", 12), "config.global_batch",
                               "not divisible by the data-parallel size 8"),
    "grad_accum": (lambda c: c.optim.update(grad_accum=3), "config.optim.grad_accum",
                   "per-device batch 4"),
    "patch_vs_rate": (lambda c: setattr(c, "patch_ms", 15.0), "config.patch_ms",
                      "is 1.5 samples"),
    "window_vs_patch": (lambda c: c.data.update(window_s=4.1), "config.data.window_s",
                        "not a multiple of the patch"),
    "unknown_key_in_file": (lambda c: c.optim.__setattr__("learning_rate", 1e-3),
                            "config.optim.learning_rate",
                            "did you mean config.optim.lr? keys allowed under config.optim: b1"),
    "unknown_top_level_key": (lambda c: c.__setattr__("totl_steps", 5), "config.totl_steps",
                              "did you mean config.total_steps"),
    "missing_data_path": (lambda c: c.data.update(path="/nonexistent/shards"), "config.data.path",
                          "is not a directory"),
    "unknown_lead": (lambda c: c.data.update(leads=["I", "II", "V7"]), "config.data.leads",
                     "allowed: ("),
    "heads_vs_width": (lambda c: c.model.update(num_heads=5), "config.model",
                       "not divisible by num_heads"),
    "bad_objective": (lambda c: setattr(c, "objective", "byol"), "config.objective",
                      "not in ('hl', 'mae', 'simclr')"),
    "negative_workers": (lambda c: c.data.update(num_workers=-1), "config.data.num_workers",
                         "must be >= 0"),
    "mask_ratio": (lambda c: c.loss.update(mask_ratio=1.0), "config.loss.mask_ratio",
                   "not in [0, 1)"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_config_names_field_and_allowed_values(name):
  mutate, field, allowed = BAD[name]
  c = _cfg()
  with c.unlocked():
    mutate(c)
  with pytest.raises(cv.ConfigError) as e:
    cv.validate(c, num_devices=8)
  assert str(e.value).startswith(field), str(e.value)
  assert allowed in str(e.value), str(e.value)


def test_data_dir_without_spec_is_refused(tmp_path):
  c = _cfg(str(tmp_path))
  with pytest.raises(cv.ConfigError, match="has no spec.json"):
    cv.validate(c, num_devices=8)


@pytest.mark.parametrize("module", ["hl", "mae", "simclr"])
@pytest.mark.parametrize("arg", [None, "demo", "tiny", "small", "base", "large"])
def test_shipped_configs_validate(module, arg):
  cv.validate(importlib.import_module(f"configs.{module}").get_config(arg), num_devices=8)


def _no_compile(monkeypatch):
  def forbidden(*_, **__):
    raise AssertionError("compiled/built before the config or workdir was checked")
  monkeypatch.setattr(train, "compile_step", forbidden)
  return forbidden


def test_bad_config_fails_before_any_state_or_compile(monkeypatch, tmp_path, synthetic_shards):
  forbidden = _no_compile(monkeypatch)
  monkeypatch.setattr(state_lib, "create_state", forbidden)
  c = micro_config(synthetic_shards)
  c.global_batch = 12
  with pytest.raises(cv.ConfigError, match="config.global_batch"):
    train.train_and_evaluate(c, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_unknown_command_line_override_is_rejected(tmp_path):
  out = subprocess.run([sys.executable, "main.py", "--config=configs/hl.py:demo",
                        f"--workdir={tmp_path}", "--config.optim.learnin_rate=1"],
                       cwd=str(ROOT), capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode != 0 and "learnin_rate" in out.stderr, out.stderr[-2000:]


def test_unwritable_workdir_fails_before_training(monkeypatch, tmp_path, synthetic_shards):
  forbidden = _no_compile(monkeypatch)
  monkeypatch.setattr(state_lib, "create_state", forbidden)
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  workdir = str(blocker / "run")  # a directory can't live under a file (even as root).
  with pytest.raises(ckpt_lib.WorkdirError, match="is not writable") as e:
    train.train_and_evaluate(micro_config(synthetic_shards), workdir)
  assert workdir in str(e.value)


def test_full_disk_fails_before_compile(monkeypatch, tmp_path, synthetic_shards):
  _no_compile(monkeypatch)
  import collections
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr(ckpt_lib.shutil, "disk_usage", lambda _: usage(10 << 30, 10 << 30, 1 << 20))
  with pytest.raises(ckpt_lib.WorkdirError, match=r"has 1.0 MiB free but one checkpoint needs"):
    train.train_and_evaluate(micro_config(synthetic_shards), str(tmp_path / "w"))


def test_write_probe_reports_enospc(monkeypatch, tmp_path):
  real_open = open

  def full_open(path, mode="r", *a, **k):
    if ".write_probe-" in str(path):
      raise OSError(28, "No space left on device", str(path))
    return real_open(path, mode, *a, **k)

  monkeypatch.setattr("builtins.open", full_open)
  with pytest.raises(ckpt_lib.WorkdirError, match="No space left on device"):
    ckpt_lib.check_workdir(str(tmp_path / "w"))
