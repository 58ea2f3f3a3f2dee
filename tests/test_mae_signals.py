"""MAE options (target, variance floor, decoder init / lead-wise), the validation hook,
the loss-curve and mV plots, and the cross-lead linear baseline."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from ecgjax import config as config_lib
from ecgjax import config_validation
from ecgjax import plots
from ecgjax import train
from ecgjax.models import signal_transformer as st
from ecgjax.objectives import hybrid
from ecgjax.objectives import mae
from tests.conftest import micro_config

B, L, P, N = 3, 4, 8, 5


def _model(**kw):
  cfg = st.model_config(
      "tiny", width=32, depth=2, num_heads=2, mlp_dim=64, local_depth=1, decoder_width=16,
      decoder_depth=1, decoder_heads=2, decoder_mlp_dim=32, proj_hidden=32, proj_dim=8,
      num_leads=L, patch_size=P, max_patches=N, dtype="float32", **kw)
  with nnx.use_eager_sharding(False):
    return st.SignalTransformer(cfg, rngs=nnx.Rngs(0))


def _np_norm_mse(pred, target, w, eps):
  t = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + eps)
  per = ((pred - t) ** 2).mean(-1)
  return (per * w).sum() / w.sum()


def test_variance_floor_matches_numpy():
  rng = np.random.default_rng(0)
  target = rng.normal(size=(2, 6, P)) * rng.uniform(0.01, 2.0, size=(2, 6, 1))
  pred = rng.normal(size=(2, 6, P))
  masked = rng.uniform(size=(2, 6)) < 0.6
  valid = np.ones((2, 6), bool)
  for eps in (1e-6, 0.01, 1.0):
    got = mae.mae_loss(jnp.asarray(pred), jnp.asarray(target), masked, valid, eps=eps)
    np.testing.assert_allclose(got, _np_norm_mse(pred, target, masked, eps), rtol=1e-5)
  # A floor shrinks flat patches' normalised targets towards 0: the zero predictor's
  # loss falls from ~1 towards the share of high-variance patches.
  zero = np.zeros_like(pred)
  assert float(mae.mae_loss(zero, target, masked, valid, eps=1.0)) < float(
      mae.mae_loss(zero, target, masked, valid, eps=1e-6))


def test_reference_mae_renormalises_signal_predictions():
  rng = np.random.default_rng(1)
  target = rng.normal(size=(2, 6, P)) * 3 + 5
  pred_sig = target + rng.normal(size=target.shape) * 0.5
  masked = np.ones((2, 6), bool)
  got = mae.reference_mae(jnp.asarray(pred_sig), jnp.asarray(target), masked, masked)
  want = (((pred_sig - target) ** 2).mean(-1) / (target.var(-1) + mae.REFERENCE_EPS)).mean()
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  clean = np.sin(np.linspace(0, 6 * np.pi, N * P) * rng.uniform(0.5, 2, (B, L, 1)))
  noisy = lambda: clean + rng.normal(size=clean.shape)
  return {"view1": jnp.asarray(noisy(), jnp.float32), "view2": jnp.asarray(noisy(), jnp.float32),
          "target1": jnp.asarray(clean, jnp.float32), "target2": jnp.asarray(clean, jnp.float32),
          "mask1": jnp.ones((B, L), bool), "mask2": jnp.ones((B, L), bool)}


def test_clean_target_uses_the_view_before_noise():
  model = _model()
  batch = _batch()
  key = jax.random.key(0)
  cfg_in = hybrid.objective_config("mae")
  cfg_clean = hybrid.objective_config("mae", target="clean")
  _, m_in = hybrid.loss_fn(model, batch, key, cfg_in)
  _, m_clean = hybrid.loss_fn(model, batch, key, cfg_clean)
  # Same masks and predictions; the clean target equals 'input' on a batch whose views
  # are the clean signals, and differs on the noisy batch.
  swapped = dict(batch, view1=batch["target1"], view2=batch["target2"])
  _, m_in_clean = hybrid.loss_fn(model, swapped, key, cfg_in)
  _, m_clean_clean = hybrid.loss_fn(model, swapped, key, cfg_clean)
  np.testing.assert_allclose(m_in_clean["mae"], m_clean_clean["mae"], rtol=1e-6)
  assert abs(float(m_in["mae"]) - float(m_clean["mae"])) > 1e-3
  with pytest.raises(ValueError, match="target"):
    hybrid.objective_config("hl", target="denoised")


def test_zero_init_decoder_predicts_patch_mean():
  model = _model(decoder_zero_init=True)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(B, L, N * P)), jnp.float32)
  tokens, _ = model.encode(x, jnp.ones((B, L), bool))
  pred = model.decode(tokens, None, jnp.ones((B, L), bool), N)
  np.testing.assert_array_equal(np.asarray(pred), 0.0)
  assert float(jnp.abs(_model().decoder_out.kernel[...]).sum()) > 0


def _decode_shifted(model, seed: int, *selections):
  """Decoded patches of random full-grid tokens, then with each selection's tokens + 1."""
  tokens = jnp.asarray(np.random.default_rng(seed).normal(size=(B, L * N, 32)), jnp.float32)
  lead_mask = jnp.ones((B, L), bool)
  return [model.decode(tokens, None, lead_mask, N)] + [
      model.decode(tokens.at[:, sel].add(1.0), None, lead_mask, N) for sel in selections]


@pytest.mark.parametrize("leadwise", [False, True])
def test_leadwise_decoder_isolates_leads(leadwise):
  # Change lead 1's encoded tokens only: lead 0's decoded patches must not move when
  # decoding is lead-wise, and do move when the decoder attends across leads.
  out, out2 = _decode_shifted(_model(decoder_leadwise=leadwise), 3, slice(N, 2 * N))
  diff0 = float(jnp.abs(out2[:, :N] - out[:, :N]).max())
  assert (diff0 == 0.0) if leadwise else (diff0 > 1e-4)
  assert float(jnp.abs(out2[:, N:2 * N] - out[:, N:2 * N]).max()) > 1e-4


@pytest.mark.parametrize("time_local", [0, 1])
def test_time_local_decoder_reads_only_its_instant(time_local):
  # Change time patch 2 of every lead: with one same-instant decoder block, patches at the
  # other instants must not move; patch 2 of another lead must (it reads across leads).
  t = np.arange(L * N) % N
  out, out2, lead0_t2 = _decode_shifted(_model(decoder_time_local=time_local), 4, t == 2, N + 2)
  diff_other = float(jnp.abs(out2[:, t != 2] - out[:, t != 2]).max())
  assert (diff_other == 0.0) if time_local else (diff_other > 1e-4)
  assert float(jnp.abs(lead0_t2[:, 2] - out[:, 2]).max()) > 1e-4
  with pytest.raises(ValueError, match="decoder_time_local"):
    _model(decoder_time_local=2)
  with pytest.raises(ValueError, match="embed_std"):
    _model(embed_std=0.0)


def test_config_without_new_fields_builds_the_legacy_model():
  cfg = _model(decoder_time_local=1).cfg.to_dict()
  for key in ("decoder_time_local", "embed_std"):  # as in an export made before them
    cfg.pop(key)
  with nnx.use_eager_sharding(False):
    model = st.SignalTransformer(ml_collections.ConfigDict(cfg), rngs=nnx.Rngs(0))
  assert model.cfg.decoder_time_local == 0 and model.cfg.embed_std == 0.02


def test_embed_std_scales_lead_and_time_embeddings():
  for std in (0.02, 1.0):
    m = _model(embed_std=std)
    for p in (m.lead_embed, m.pos_embed, m.decoder_lead_embed, m.decoder_pos_embed):
      assert abs(float(jnp.std(p[...])) - std) < 0.5 * std


def test_config_validation_of_new_keys(synthetic_shards):
  cfg = micro_config(synthetic_shards)
  config_validation.validate(cfg)
  for key, value, field in (("target", "denoised", "loss.target"),
                            ("norm_eps", -1.0, "loss.norm_eps")):
    bad = micro_config(synthetic_shards)
    bad.loss[key] = value
    with pytest.raises(config_lib.ConfigError, match=field):
      config_validation.validate(bad)
  bad = micro_config(synthetic_shards)
  bad.eval_every = -1
  with pytest.raises(config_lib.ConfigError, match="eval_every"):
    config_validation.validate(bad)


def test_to_units_inverts_per_lead_normalisation():
  rng = np.random.default_rng(4)
  mv = rng.normal(size=(3, 50)) * np.array([[0.2], [1.5], [0.7]]) + np.array([[0.1], [-2], [0]])
  z = (mv - mv.mean(-1, keepdims=True)) / mv.std(-1, keepdims=True)
  pred_z = z[:, ::-1] * 0.5
  want = pred_z * mv.std(-1, keepdims=True) + mv.mean(-1, keepdims=True)
  np.testing.assert_allclose(plots.to_units(pred_z, z, mv), want, rtol=1e-9, atol=1e-12)


def test_validation_hook_logs_fixed_val_losses_and_curves(synthetic_shards, tmp_path):
  cfg = micro_config(synthetic_shards)
  cfg.total_steps = 4
  cfg.eval_every = 2
  cfg.eval_batches = 2
  cfg.checkpoint_every = 100
  cfg.loss.target = "clean"
  final = train.train_and_evaluate(cfg, str(tmp_path))
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  val = [r for r in rows if "val_mae" in r]
  assert [r["step"] for r in val] == [2, 4]
  for r in val:
    assert np.isfinite(r["val_mae"]) and 0.2 < r["val_mae"] < 5
    assert np.isfinite(r["val_nt_xent"]) and r["val_nt_xent"] > 0
  assert final["val_mae"] == val[-1]["val_mae"]
  assert os.path.getsize(tmp_path / "plots" / "loss_curves.png") > 1000
  # Fixed draws: re-evaluating the final state reproduces the logged value exactly.
  from ecgjax import sharding, state as state_lib, validation
  mesh = sharding.make_mesh(cfg.mesh)
  graphdef, state, shardings, _ = state_lib.create_state(cfg, mesh)

  class _Sink:
    def scalars(self, step, m):
      self.m = dict(m)

  v = validation.make_validator(cfg, str(tmp_path / "again"), graphdef, shardings, mesh,
                                train.window_config(cfg))
  sink = _Sink()
  first = v(0, state, sink)
  assert v(0, state, sink) == first
  cfg.eval_every = 0
  off = validation.make_validator(cfg, str(tmp_path), graphdef, shardings, mesh,
                                  train.window_config(cfg))
  assert not off.due(2) and not off.due(4)


def test_linear_baseline_conditional_mean():
  from benchmarks import linear_baseline
  rng = np.random.default_rng(5)
  lead_i, lead_ii = rng.normal(size=(2, 4000))
  lead_v = 0.5 * lead_i + rng.normal(size=4000)
  x = np.stack([lead_i, lead_ii, lead_ii - lead_i, lead_v])  # III = II - I exactly.
  cov = x @ x.T / x.shape[1]
  present = np.ones(4, bool)
  pred = linear_baseline.predict(x[:, :20], np.array([1, 1, 0, 0], bool), present, cov,
                                 ridge=0.0)
  np.testing.assert_allclose(pred[2], x[2, :20], atol=1e-8)       # Einthoven, exactly.
  np.testing.assert_array_equal(pred[:2], x[:2, :20])              # visible leads kept.
  # Lead V from I and II: the least-squares regression weights (independent computation).
  w, *_ = np.linalg.lstsq(x[:2].T, x[3], rcond=None)
  np.testing.assert_allclose(pred[3], w @ x[:2, :20], rtol=1e-6, atol=1e-9)
  assert not linear_baseline.predict(x[:, :20], np.zeros(4, bool), present, cov).any()


def test_linear_baseline_uses_the_validators_masks(synthetic_shards):
  from benchmarks import linear_baseline
  from ecgjax import validation
  cfg = micro_config(synthetic_shards)
  model = _model()
  x = jnp.asarray(np.random.default_rng(6).normal(size=(B, L, N * P)), jnp.float32)
  present = jnp.ones((B, L), bool).at[0, 2].set(False)
  _, masked = hybrid.reconstruct(model, x, present, validation.mask_key(cfg.seed, 1), cfg.loss)
  np.testing.assert_array_equal(
      linear_baseline.eval_masks(cfg, 1, B, L, N, np.asarray(present)), np.asarray(masked))
