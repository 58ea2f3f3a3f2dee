"""Local attention at per-lead cost, checked against the dense masked form it replaces.

The reference is the model's dense path (one [S, S] attention with a lead-group mask),
forced by switching ``use_lead_slots`` off; the per-lead path (grid reshape, or scatter of
the visible tokens to their grid cells) must give the same outputs and gradients in fp32,
with absent leads, on the full grid and on MAE's visible subset.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ecgjax.models import signal_transformer as st
from ecgjax.objectives import masking

B, L, P, N = 3, 4, 10, 6  # batch, leads, patch samples, patches per lead.


def _model(**kw):
  cfg = dict(width=32, depth=3, num_heads=2, mlp_dim=64, local_depth=2, decoder_width=16,
             decoder_depth=1, decoder_heads=2, decoder_mlp_dim=32, proj_hidden=32,
             proj_dim=8, num_leads=L, patch_size=P, max_patches=N, dtype="float32")
  cfg.update(kw)
  with nnx.use_eager_sharding(False):
    return st.SignalTransformer(st.model_config("tiny", **cfg), rngs=nnx.Rngs(0))


def _inputs(mask_ratio):
  x = jax.random.normal(jax.random.key(1), (B, L, N * P))
  # Sample 0: every lead; 1: lead 2 absent; 2: leads 0 and 3 absent.
  lead_mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 1], [0, 1, 1, 0]], bool)
  if mask_ratio is None:
    return x, lead_mask, None
  idx = masking.multiscale_mask(jax.random.key(2), B, L, N, lead_mask, mask_ratio).visible_idx
  return x, lead_mask, idx


def _loss_and_grads(model, x, lead_mask, idx, per_lead: bool, monkeypatch):
  monkeypatch.setattr(st, "use_lead_slots", lambda *a: per_lead)
  w = jax.random.normal(jax.random.key(3), (B, L * N if idx is None else idx.shape[1], 32))

  def loss(m):
    tokens, pooled = m.encode(x, lead_mask, idx)
    return jnp.sum(tokens * w) + jnp.sum(pooled**2), (tokens, pooled)

  step = nnx.jit(lambda m: nnx.value_and_grad(loss, has_aux=True)(m))  # one trace per call.
  (_, (tokens, pooled)), grads = step(model)
  return tokens, pooled, grads


@pytest.mark.parametrize("mask_ratio", [None, 0.25, 0.75])
def test_per_lead_local_attention_equals_dense_masked(monkeypatch, mask_ratio):
  model = _model()
  x, lead_mask, idx = _inputs(mask_ratio)
  ref = _loss_and_grads(model, x, lead_mask, idx, False, monkeypatch)
  got = _loss_and_grads(model, x, lead_mask, idx, True, monkeypatch)
  np.testing.assert_allclose(got[0], ref[0], rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(got[1], ref[1], rtol=2e-5, atol=2e-5)
  flat_ref = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(ref[2]))
  flat_got = dict(jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(got[2])))
  assert len(flat_ref) > 20
  for path, g in flat_ref:  # fp32 summation-order noise scales with the leaf's magnitude.
    atol = 1e-5 * max(1.0, float(np.max(np.abs(g))))
    np.testing.assert_allclose(flat_got[path], g, rtol=1e-4, atol=atol,
                               err_msg=jax.tree_util.keystr(path))


def test_absent_lead_cannot_reach_present_tokens_on_the_per_lead_path():
  """Garbage in an absent lead changes nothing (the per-lead path is on for the full grid)."""
  model = _model()
  x, lead_mask, _ = _inputs(None)
  assert st.use_lead_slots(L, N, L * N)
  encode = nnx.jit(lambda m, x: m.encode(x, lead_mask))
  tokens, pooled = encode(model, x)
  x2 = x.at[1, 2].set(1e3).at[2, 0].set(-7.0)
  tokens2, pooled2 = encode(model, x2)
  present = np.repeat(np.asarray(lead_mask), N, axis=1)
  np.testing.assert_allclose(np.asarray(tokens2)[present], np.asarray(tokens)[present],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pooled2, pooled, rtol=1e-5, atol=1e-6)


def test_lead_slots_choice_follows_the_cost():
  """Per lead L*n^2 vs dense K^2: the full grid always, MAE only below sqrt(L)*n tokens."""
  assert st.use_lead_slots(12, 50, 600)          # full grid: 30000 < 360000
  assert not st.use_lead_slots(12, 50, 150)      # 75% masked: 30000 > 22500
  assert st.use_lead_slots(12, 50, 300)          # 50% masked: 30000 < 90000
  assert not st.use_lead_slots(1, 50, 50)        # one lead: local is global


def test_flops_count_per_lead_attention_where_it_runs():
  """Local blocks on the full grid count L*n^2 (+ g*S for the global queries), not S^2."""
  cfg = st.model_config("base", num_leads=12, max_patches=50)
  d, g, s, local, depth = cfg.width, cfg.num_global_tokens, 600, cfg.local_depth, cfg.depth
  dense = st.flops_per_sample(cfg, s, s, with_decoder=False)
  # What the dense mask would have cost on the local blocks, minus what runs instead.
  saved = 3 * 4.0 * d * local * ((s + g)**2 - (12 * 50**2 + g * (s + g)))
  legacy = dense + saved
  assert st.attention_flops(cfg, s, s)["encoder_local"] == 3 * 4.0 * d * local * (
      12 * 50**2 + g * (s + g))
  assert legacy / dense > 1.0
  # 75% masked (150 visible): dense is cheaper, and that is what runs and is counted.
  k = 150
  assert st.attention_flops(cfg, k, s)["encoder_local"] == 3 * 4.0 * d * local * (k + g)**2


def _encode_decode_grads(model, x, lead_mask, idx):
  w = jax.random.normal(jax.random.key(4), (B, L * N if idx is None else idx.shape[1], 32))

  def loss(m):
    tokens, pooled = m.encode(x, lead_mask, idx)
    recon = m.decode(tokens, idx, lead_mask, N)
    return jnp.sum(tokens * w) + jnp.sum(pooled**2) + jnp.sum(recon**2), (tokens, pooled, recon)

  (_, out), grads = nnx.jit(lambda m: nnx.value_and_grad(loss, has_aux=True)(m))(model)
  return out, nnx.to_pure_dict(grads)


@pytest.mark.parametrize("mask_ratio", [None, 0.75])
def test_splash_attention_equals_xla_in_interpret_mode(mask_ratio):
  """attention_impl='splash' (Pallas interpret mode on CPU) vs XLA: encoder (local and global
  blocks) and decoder, forward and gradients, with absent leads, full grid and MAE subset."""
  x, lead_mask, idx = _inputs(mask_ratio)
  ref_out, ref_grads = _encode_decode_grads(_model(depth=2, local_depth=1, attention_impl="xla"),
                                            x, lead_mask, idx)
  out, grads = _encode_decode_grads(_model(depth=2, local_depth=1, attention_impl="splash"),
                                    x, lead_mask, idx)
  for got, ref in zip(out, ref_out):
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
  flat = dict(jax.tree_util.tree_leaves_with_path(grads))
  for path, g in jax.tree_util.tree_leaves_with_path(ref_grads):
    np.testing.assert_allclose(flat[path], g, rtol=1e-3, atol=1e-4,
                               err_msg=jax.tree_util.keystr(path))


def test_splash_kernel_matches_a_numpy_reference_with_segments_and_blocks():
  """The wrapper itself (scaling, padding, segment ids, static block mask) vs numpy."""
  s, h, dh = 20, 2, 8
  q, k, v = (np.asarray(jax.random.normal(jax.random.key(i), (1, s, h, dh))) for i in range(3))
  seg = np.array([[0] * 5 + [1] * 5 + [2] * 10], np.int32)
  seg[0, 3] = 99  # an invalid token: its own segment.
  blocks = np.kron(np.eye(2, dtype=bool), np.ones((10, 10), bool))
  got = st.splash_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg),
                            blocks)
  allowed = (seg[0][:, None] == seg[0][None, :]) & blocks
  logits = np.einsum("qhd,khd->hqk", q[0], k[0]) / np.sqrt(dh)
  logits = np.where(allowed[None], logits, -np.inf)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(got[0], np.einsum("hqk,khd->qhd", p, v[0]), rtol=1e-5, atol=1e-5)


def test_default_attention_is_splash_on_tpu(monkeypatch):
  cfg = st.model_config("tiny", dtype="float32")
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert st.resolve_attention(cfg) == "splash"
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert st.resolve_attention(cfg) == "xla"


def test_splash_flops_count_the_blocks_it_computes(monkeypatch):
  """12 leads x 50 patches: 600 tokens pad to 640 = 5x5 blocks of 128; leads of 50 tokens
  touch 13 of them (the diagonal 5, and 8 where a lead crosses a block edge)."""
  cfg = st.model_config("base", num_leads=12, max_patches=50, attention_impl="splash")
  d, local = cfg.width, cfg.local_depth
  got = st.attention_flops(cfg, 600, 600)
  blocks = np.kron(np.eye(12, dtype=bool), np.ones((50, 50), bool))
  blocks = np.pad(blocks, ((0, 40), (0, 40))) | np.eye(640, dtype=bool)
  used = sum(blocks[i:i + 128, j:j + 128].any() for i in range(0, 640, 128)
             for j in range(0, 640, 128))
  assert used == 13
  assert got["encoder_local"] == 3 * 4.0 * d * local * (13 * 128**2 + 601)
  assert got["encoder_global"] == 3 * 4.0 * d * (cfg.depth - local) * 640**2
