"""Corrupt, half-deleted and failing checkpoints: detected by path, older step used.

Orbax/TensorStore read a bit-flipped OCDBT data file without any error (measured with
orbax-checkpoint 0.12.8), which is why every step carries ecgjax_integrity.json.
"""
import logging
import os
import pathlib

import grain
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ecgjax import checkpoint as ckpt_lib


class _Cfg(dict):
  __getattr__ = dict.__getitem__


def _manager(d, async_=False):
  return ckpt_lib.make_manager(str(d), _Cfg(keep_checkpoints=5, async_checkpointing=async_))


def _state(v: float):
  return {"w": jnp.full((64, 64), v, jnp.float32), "b": jnp.arange(300, dtype=jnp.float32) * v}


def _iterator(skip: int):
  it = iter(grain.MapDataset.range(1000).to_iter_dataset())
  for _ in range(skip):
    next(it)
  return it


def _save_steps(d, async_=False):
  m = _manager(d, async_)
  for s in (1, 2):
    assert ckpt_lib.save(m, s, _state(float(s)), _iterator(10 * s), metrics={"loss": 1.0 / s})
  m.wait_until_finished()
  m.close()
  return d


def _abstract():
  return {k: ocp.utils.to_shape_dtype_struct(v) for k, v in _state(0.0).items()}


def _restore(d, quarantine=True):
  m = _manager(d)
  it = _iterator(0)
  try:
    out = ckpt_lib.restore(m, _abstract(), it, quarantine=quarantine)
  finally:
    m.close()
  return out, next(it)


def _largest(path: pathlib.Path) -> pathlib.Path:
  return max((p for p in (path / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip(p: pathlib.Path):
  b = bytearray(p.read_bytes())
  b[len(b) // 2] ^= 0x40
  p.write_bytes(bytes(b))


CORRUPTIONS = {
    "truncated_array_file": lambda s: os.truncate(_largest(s), _largest(s).stat().st_size // 3),
    "bit_flip_in_array_file": lambda s: _flip(_largest(s)),
    "deleted_array_file": lambda s: os.remove(_largest(s)),
    "deleted_ocdbt_manifest": lambda s: os.remove(s / "state" / "manifest.ocdbt"),
    "deleted_iterator_state": lambda s: os.remove(s / "data_iter" / "process_0-of-1.json"),
    "deleted_state_dir": lambda s: __import__("shutil").rmtree(s / "state"),
}


@pytest.mark.parametrize("async_", [False, True], ids=["sync", "async"])
def test_every_finalised_step_is_sealed(tmp_path, async_):
  d = _save_steps(tmp_path / "ckpt", async_)
  for s in (1, 2):
    assert (d / str(s) / ckpt_lib.INTEGRITY_FILE).exists()
    assert ckpt_lib.verify(str(d / str(s)))
  (step, state, with_iter), nxt = _restore(d)
  assert step == 2 and with_iter and nxt == 20
  np.testing.assert_array_equal(state["w"], np.full((64, 64), 2.0))


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_latest_step_falls_back_to_previous(tmp_path, kind, caplog):
  d = _save_steps(tmp_path / "ckpt")
  CORRUPTIONS[kind](d / "2")
  with caplog.at_level(logging.WARNING):
    (step, state, with_iter), nxt = _restore(d)
  assert step == 1 and with_iter and nxt == 10, "resumed from the corrupt step"
  np.testing.assert_array_equal(state["w"], np.full((64, 64), 1.0))
  assert f"checkpoint {d / '2'} is unreadable" in caplog.text
  # Moved aside (kept for forensics) so the resumed run can write step 2 again.
  assert not (d / "2").exists() and list((tmp_path / "ckpt_unreadable").iterdir())
  m = _manager(d)
  assert ckpt_lib.save(m, 2, _state(2.0), _iterator(20))
  m.close()


def test_readers_fall_back_without_moving_anything(tmp_path):
  d = _save_steps(tmp_path / "ckpt")
  _flip(_largest(d / "2"))
  (step, _, _), _ = _restore(d, quarantine=False)
  assert step == 1 and (d / "2").exists() and not (tmp_path / "ckpt_unreadable").exists()


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
  d = _save_steps(tmp_path / "ckpt")
  for s in ("1", "2"):
    os.truncate(_largest(d / s), 10)
  with pytest.raises(ckpt_lib.CheckpointError, match="no readable checkpoint") as e:
    _restore(d)
  assert str(d / "1") in str(e.value) and str(d / "2") in str(e.value)


def test_unsealed_step_is_restored_with_a_warning(tmp_path, caplog):
  d = _save_steps(tmp_path / "ckpt")
  os.remove(d / "2" / ckpt_lib.INTEGRITY_FILE)  # e.g. killed between rename and seal.
  with caplog.at_level(logging.WARNING):
    (step, _, _), _ = _restore(d)
  assert step == 2 and "has no ecgjax_integrity.json" in caplog.text


def test_failing_save_is_reported_and_retried(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(ckpt_lib, "_RETRY_BACKOFF_S", 0.0)
  m = _manager(tmp_path / "ckpt", async_=True)
  real = ocp.CheckpointManager.save
  calls = []

  def flaky(self, step, *a, **k):
    calls.append(step)
    if len(calls) == 1:
      raise OSError(28, "No space left on device")
    return real(self, step, *a, **k)

  monkeypatch.setattr(ocp.CheckpointManager, "save", flaky)
  with caplog.at_level(logging.ERROR):
    assert ckpt_lib.save(m, 1, _state(1.0), _iterator(1))
  m.wait_until_finished()
  m.close()
  assert calls == [1, 1]
  assert "save of step 1" in caplog.text and "attempt 1 of 4" in caplog.text
  assert "No space left" in caplog.text
  assert ckpt_lib.verify(str(tmp_path / "ckpt" / "1"))


def test_background_failure_of_previous_async_save_surfaces_and_is_retried(tmp_path, monkeypatch,
                                                                           caplog):
  """Orbax re-raises a failed async write on the next save: that save is retried."""
  monkeypatch.setattr(ckpt_lib, "_RETRY_BACKOFF_S", 0.0)
  m = _manager(tmp_path / "ckpt", async_=True)
  assert ckpt_lib.save(m, 1, _state(1.0), _iterator(1))
  real_wait = ocp.CheckpointManager.wait_until_finished
  failed = []

  def wait(self):
    real_wait(self)
    if not failed:
      failed.append(True)
      raise OSError(5, "Input/output error (background commit)")

  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", wait)
  with caplog.at_level(logging.ERROR):
    assert ckpt_lib.save(m, 2, _state(2.0), _iterator(2))
  monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", real_wait)
  m.wait_until_finished()
  m.close()
  assert "background commit" in caplog.text
  assert ckpt_lib.verify(str(tmp_path / "ckpt" / "2"))


def test_save_that_keeps_failing_raises_and_keeps_older_checkpoints(tmp_path, monkeypatch):
  monkeypatch.setattr(ckpt_lib, "_RETRY_BACKOFF_S", 0.0)
  d = _save_steps(tmp_path / "ckpt")
  m = _manager(d)

  def broken(self, step, *a, **k):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "save", broken)
  with pytest.raises(ckpt_lib.CheckpointError, match=f"could not save step 3 to {d / '3'}"):
    ckpt_lib.save(m, 3, _state(3.0), _iterator(3))
  m.close()
  monkeypatch.undo()
  (step, _, _), _ = _restore(d)
  assert step == 2
