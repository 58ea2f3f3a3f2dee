"""Non-finite losses/gradients: skipped and counted in the jitted step, stop after a streak."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ecgjax import state as state_lib
from ecgjax import train
from tests.faults.conftest import run_job


def _restore(path):
  """(params tree, optimizer tree) of a step dir, as saved (no model needed)."""
  r = ocp.StandardCheckpointer().restore(str(path / "state"))
  return r["0"], r["1"]


def _assert_same(a, b, what):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb) > 10
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=what)


def test_bad_steps_are_skipped_counted_and_a_streak_stops_the_run(fault_shards, job_env,
                                                                  tmp_path):
  # Step 4 is a one-off; 8, 9, 10 are a streak of max_bad_steps=3 -> stop after step 10.
  log = run_job(job_env, tmp_path, fault_shards, fault="nan_at:4,8,9,10,11,12",
                extra=["--set=max_bad_steps=3"], expect_rc=1)
  assert "NonFiniteError: 3 consecutive steps with non-finite loss/gradients by step 11" in log
  assert f"saved in {tmp_path / 'checkpoints' / '11'}" in log
  rows = {r["step"]: r for r in map(json.loads, open(tmp_path / "metrics.jsonl"))}
  assert sorted(rows) == list(range(1, 12))
  assert [rows[s]["bad_steps"] for s in range(1, 12)] == [0, 0, 0, 0, 1, 0, 0, 0, 1, 1, 1]
  assert [rows[s]["bad_streak"] for s in (5, 6, 9, 10, 11)] == [1, 0, 1, 2, 3]
  assert rows[11]["bad_steps_total"] == 4
  assert not np.isfinite(rows[5]["loss"]) and np.isfinite(rows[6]["loss"])  # recovered.
  ckpts = tmp_path / "checkpoints"
  p8, o8 = _restore(ckpts / "8")
  p10, _ = _restore(ckpts / "10")
  p11, o11 = _restore(ckpts / "11")
  # Skipped updates leave the params (and Adam moments) bit-identical: 11 = 10 = 8.
  _assert_same(p8, p10, "params changed on a skipped step")
  _assert_same(p8, p11, "params changed on a skipped step")
  _assert_same(o8["opt_state"]["inner_state"], o11["opt_state"]["inner_state"], "moments")
  assert int(o11["opt_state"]["notfinite_count"]["value"]) == 3
  assert int(o11["opt_state"]["total_notfinite"]["value"]) == 4


def test_window_reduction_of_counters():
  """Over a logging window the streak is its max (a streak inside the window still stops
  the run), the total is the last value, everything else is summed (then averaged)."""
  ms = [{"loss": jnp.float32(l), "bad_streak": jnp.float32(b), "bad_steps_total": jnp.float32(t)}
        for l, b, t in ((1, 0, 0), (2, 3, 3), (3, 0, 3))]
  acc = None
  for m in ms:
    acc = train._accumulate(acc, m)
  assert {k: float(v) for k, v in acc.items()} == {"loss": 6, "bad_streak": 3,
                                                   "bad_steps_total": 3}


def test_nonfinite_metrics_read_the_optimizer_state_by_type():
  import optax
  from flax import nnx
  model = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
  tx, _ = state_lib.make_optimizer(_optim_cfg(), 10)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
  opt.update(model, jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), nnx.state(model, nnx.Param)))
  m = train._nonfinite_metrics(opt)
  assert (float(m["bad_step"]), float(m["bad_streak"]), float(m["bad_steps_total"])) == (1, 1, 1)
  _assert_same_small(before, nnx.state(model, nnx.Param))
  plain = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  try:
    train._nonfinite_metrics(plain)
  except TypeError as e:
    assert "apply_if_finite" in str(e)
  else:
    raise AssertionError("an optimizer without apply_if_finite must be refused")


def _assert_same_small(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _optim_cfg():
  import ml_collections
  return ml_collections.ConfigDict({"lr": 1e-3, "warmup_steps": 1, "min_lr_ratio": 0.1,
                                    "weight_decay": 0.05, "b1": 0.9, "b2": 0.95,
                                    "clip_norm": 1.0, "grad_accum": 1})
