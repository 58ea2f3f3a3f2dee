"""Signal Transformer: a ViT over per-lead ECG patches with a local-then-global encoder.

A [B, L, T] signal is cut into per-lead patches of ``patch_size`` samples and flattened
lead-major into L*n tokens. The first ``local_depth`` encoder blocks only attend within a
lead (beat morphology); the remaining blocks attend across all leads and time (rhythm and
inter-lead axis). Missing leads are removed through the attention mask, so their tokens can
never leak into real ones. A small MAE decoder and a SimCLR projection head hang off the
encoder; the objectives in ``ecgjax.objectives`` decide which of them run.

Every parameter carries logical sharding axes from ``LOGICAL_AXES``; the training code maps
them to mesh axes with ``nnx.logical_axis_rules``. Constructing the model with eager sharding
(flax's default) needs an active mesh and rules that cover every name in ``LOGICAL_AXES``;
on a single device use ``with nnx.use_eager_sharding(False):``.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from ecgjax.models.attention import _SPLASH_BLOCK
from ecgjax.models.attention import dense as _dense
from ecgjax.models.attention import Attention
from ecgjax.models.attention import LeadLocal
from ecgjax.models.attention import segment_ids  # noqa: F401  (re-exported)
from ecgjax.models.attention import splash_attention  # noqa: F401  (re-exported)
from ecgjax.models.attention import use_lead_slots

# The logical axis vocabulary used on parameters. Sharding rules must map each of these
# (to a mesh axis or None) because flax leaves unmapped names as literal mesh axis names.
LOGICAL_AXES: tuple[str, ...] = (
    "embed", "mlp", "heads", "patch", "leads", "positions", "proj", "decoder_embed",
    "decoder_mlp", "norm")

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable",
                   "nothing_saveable")

_COMMON = dict(
    num_global_tokens=1,
    num_leads=12,
    patch_size=50,       # 0.2 s at 250 Hz.
    max_patches=25,      # 5 s at 250 Hz.
    pos_embed="learned",  # 'learned' | 'sincos'.
    dtype="bfloat16",
    param_dtype="float32",
    remat="none",         # 'none' | 'full' | 'dots_saveable' | ... (bools accepted).
    attention_impl=None,
    layernorm_eps=1e-6,
    # Decoder options (ablated in benchmarks/mae_ablation.py):
    decoder_leadwise=False,   # each lead's patches attend only to that lead (ST-MEM style),
                              # so cross-lead inference must happen in the encoder.
    decoder_zero_init=False,  # zero output layer: the first prediction is the patch mean.
    # The first decoder_time_local decoder blocks attend only across leads at the same time
    # patch (axial attention over leads): a masked patch reads the other leads at its own
    # instant, which is what the cross-lead linear baseline predicts from, without first
    # having to learn position matching. configs/common.py turns it on (1); 0 here is how
    # models exported before the option existed were trained.
    decoder_time_local=0,
    # Init std of the learned lead and time embeddings (encoder and decoder). 0.02 (ViT's)
    # makes them ~2% of a patch token; 0.2 and 1.0 did not shorten the MAE plateau with a
    # global decoder (benchmarks/results/mae_ablation_ptbxl_subset_time_local.md).
    embed_std=0.02,
)

SIZES: dict[str, dict[str, Any]] = {
    # CPU demo / tests.
    "tiny": dict(width=128, depth=4, num_heads=4, mlp_dim=512, local_depth=1,
                 decoder_width=64, decoder_depth=2, decoder_heads=4, decoder_mlp_dim=256,
                 proj_hidden=128, proj_dim=64),
    # ViT-S encoder (~22M).
    "small": dict(width=384, depth=12, num_heads=6, mlp_dim=1536, local_depth=4,
                  decoder_width=256, decoder_depth=4, decoder_heads=8, decoder_mlp_dim=1024,
                  proj_hidden=1024, proj_dim=128),
    # ViT-B encoder (~86M), the ST-MEM / HL scale.
    "base": dict(width=768, depth=12, num_heads=12, mlp_dim=3072, local_depth=4,
                 decoder_width=256, decoder_depth=4, decoder_heads=8, decoder_mlp_dim=1024,
                 proj_hidden=2048, proj_dim=128),
    # ViT-L encoder (~300M).
    "large": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096, local_depth=8,
                  decoder_width=256, decoder_depth=4, decoder_heads=8, decoder_mlp_dim=1024,
                  proj_hidden=2048, proj_dim=128),
}


def model_config(size: str, **overrides: Any) -> ml_collections.ConfigDict:
  """Returns the preset ``size`` with ``overrides`` applied; raises on unknown fields."""
  if size not in SIZES:
    raise ValueError(f"Unknown model size {size!r}; choose from {sorted(SIZES)}.")
  cfg = ml_collections.ConfigDict({**_COMMON, **SIZES[size], "size": size})
  unknown = sorted(set(overrides) - set(cfg.keys()))
  if unknown:
    raise KeyError(f"Unknown model config fields: {unknown}.")
  if isinstance(overrides.get("remat"), bool):  # The field is typed str; accept bools too.
    overrides["remat"] = "full" if overrides["remat"] else "none"
  cfg.update(overrides)
  validate_config(cfg)
  return cfg


def validate_config(cfg: ml_collections.ConfigDict) -> None:
  """Fails fast, before anything compiles, on inconsistent model settings."""
  if cfg.width % cfg.num_heads:
    raise ValueError(f"width {cfg.width} not divisible by num_heads {cfg.num_heads}.")
  if cfg.decoder_width % cfg.decoder_heads:
    raise ValueError(f"decoder_width {cfg.decoder_width} not divisible by "
                     f"decoder_heads {cfg.decoder_heads}.")
  if not 0 <= cfg.local_depth <= cfg.depth:
    raise ValueError(f"local_depth {cfg.local_depth} must be in [0, depth={cfg.depth}].")
  if cfg.num_global_tokens < 1:
    raise ValueError("num_global_tokens must be >= 1 (the pooled output reads them).")
  if not 0 <= cfg.decoder_time_local <= cfg.decoder_depth:
    raise ValueError(f"decoder_time_local {cfg.decoder_time_local} must be in "
                     f"[0, decoder_depth={cfg.decoder_depth}].")
  if not cfg.embed_std > 0:
    raise ValueError(f"embed_std must be > 0, got {cfg.embed_std!r}.")
  if cfg.pos_embed not in ("learned", "sincos"):
    raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {cfg.pos_embed!r}.")
  _remat_policy(cfg.remat)  # Raises on unknown names.
  if cfg.attention_impl not in (None, "xla", "cudnn", "splash"):
    raise ValueError("attention_impl must be None, 'xla', 'cudnn' or 'splash': "
                     f"{cfg.attention_impl!r}")
  if cfg.attention_impl == "cudnn":
    problem = _cudnn_problem(cfg)
    if problem:
      raise ValueError(f"attention_impl='cudnn': {problem}")


def _cudnn_problem(cfg: ml_collections.ConfigDict) -> str | None:
  """Why cuDNN fused attention cannot run this config, or None when it can.

  It takes only fp16/bf16 inputs and head dims <= 128, multiple of 8; the bool masks reach
  it as an additive bias (one per batch row, shared by heads).
  """
  if cfg.dtype not in ("bfloat16", "float16"):
    return f"needs dtype bfloat16/float16, got {cfg.dtype}."
  for name, w, h in (("encoder", cfg.width, cfg.num_heads),
                     ("decoder", cfg.decoder_width, cfg.decoder_heads)):
    if (w // h) % 8 or w // h > 128:
      return f"{name} head dim {w // h} must be a multiple of 8 and <= 128."
  return None


def resolve_attention(cfg: ml_collections.ConfigDict) -> str:
  """``attention_impl`` as run: None picks cuDNN on GPUs where it applies, Pallas splash
  attention on TPUs, else XLA.

  On one H100 (base, 10 s ECGs, HL step) cuDNN's fused kernel ran 2.2x the samples/s of
  XLA's and fit twice the batch (benchmarks/README.md), since XLA keeps every [S, S] score;
  splash is the TPU counterpart (flash attention with block-sparse masks).
  """
  if cfg.attention_impl:
    return cfg.attention_impl
  if jax.default_backend() == "gpu" and _cudnn_problem(cfg) is None:
    return "cudnn"
  if jax.default_backend() == "tpu":
    return "splash"
  return "xla"


def _remat_policy(remat: bool | str) -> tuple[bool, Any]:
  """Maps cfg.remat to (enabled, jax checkpoint policy); 'full' saves nothing."""
  if remat is True:
    remat = "full"
  if remat is False or remat is None:
    remat = "none"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be a bool or one of {REMAT_POLICIES}, got {remat!r}.")
  if remat == "none":
    return False, None
  if remat in ("full", "nothing_saveable"):
    return True, None
  return True, getattr(jax.checkpoint_policies, remat)


def _sincos_table(num: int, width: int) -> np.ndarray:
  """Fixed 1-D sin-cos position table [num, width] (transformer style)."""
  pos = np.arange(num, dtype=np.float64)[:, None]
  freqs = 1.0 / (10000.0 ** (np.arange(width // 2, dtype=np.float64) / (width // 2)))
  ang = pos * freqs[None]
  table = np.concatenate([np.sin(ang), np.cos(ang)], axis=1)
  return np.pad(table, ((0, 0), (0, width - table.shape[1]))).astype(np.float32)


def _layernorm(width: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      width, epsilon=eps, dtype=dtype, param_dtype=param_dtype,
      scale_init=nnx.with_partitioning(nnx.initializers.ones_init(), ("norm",)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("norm",)),
      rngs=rngs)


def _embedding(shape: tuple[int, ...], axes: tuple[str | None, ...], param_dtype,
               rngs: nnx.Rngs, std: float = 0.02) -> nnx.Param:
  init = nnx.with_partitioning(nnx.initializers.normal(stddev=std), axes)
  return nnx.Param(init(rngs.params(), shape, param_dtype))


class Block(nnx.Module):
  """Pre-LN transformer block: x + MHA(LN(x)); x + MLP(LN(x))."""

  def __init__(self, width: int, num_heads: int, mlp_dim: int, *, embed_axis: str,
               mlp_axis: str, eps: float, dtype, param_dtype, attention_impl: str | None,
               rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ln_attn = _layernorm(width, eps, **kw)
    self.attn = Attention(width, num_heads, embed_axis=embed_axis,
                          attention_impl=attention_impl, **kw)
    self.ln_mlp = _layernorm(width, eps, **kw)
    self.mlp_in = _dense(width, mlp_dim, (embed_axis, mlp_axis), **kw)
    self.mlp_out = _dense(mlp_dim, width, (mlp_axis, embed_axis), **kw)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attn(self.ln_attn(x), mask)
    return x + self.mlp_out(nnx.gelu(self.mlp_in(self.ln_mlp(x))))


def _apply_block(block: Block, x: jax.Array, mask: jax.Array) -> jax.Array:
  return block(x, mask)


def _attention_mask(valid: jax.Array, group: jax.Array | None = None,
                    sees_all: jax.Array | None = None) -> jax.Array:
  """Builds a [B, 1, S, S] bool mask from token validity and optional grouping.

  Query i may attend key j when both are valid and (no grouping, or same group, or i
  ``sees_all``). The diagonal is always on so that invalid (padding) queries still have one
  key and never produce NaNs; they never act as keys for valid queries.
  """
  mask = valid[:, :, None] & valid[:, None, :]
  if group is not None:
    same = group[:, :, None] == group[:, None, :]
    if sees_all is not None:
      same = same | sees_all[:, :, None]
    mask = mask & same
  mask = mask | jnp.eye(valid.shape[1], dtype=bool)[None]
  return mask[:, None]


def _lead_local_pattern(valid: jax.Array, global_mask: jax.Array, num_leads: int, n: int,
                        visible_idx: jax.Array | None) -> LeadLocal:
  """LeadLocal for patch tokens of validity ``valid`` [B, K]: the L*n grid, or its
  ``visible_idx`` cells (the other cells are empty: invalid)."""
  b = valid.shape[0]
  cell = valid
  if visible_idx is not None:
    rows = jnp.arange(b)[:, None]
    cell = jnp.zeros((b, num_leads * n), bool).at[rows, visible_idx].set(valid)
  cell = cell.reshape(b * num_leads, n)
  mask = (cell[:, :, None] & cell[:, None, :]) | jnp.eye(n, dtype=bool)[None]
  return LeadLocal(global_mask, mask[:, None], visible_idx)


class SignalTransformer(nnx.Module):
  """Encoder (local + global blocks) with an MAE decoder and a contrastive projection head."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    # Configs saved before a field existed (exports, run dirs) get its neutral default.
    cfg = ml_collections.ConfigDict({**_COMMON, **cfg.to_dict()})
    validate_config(cfg)
    self.cfg = ml_collections.FrozenConfigDict(cfg)
    dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    d, dd = cfg.width, cfg.decoder_width
    self.dtype = dtype

    # Tokeniser.
    self.patch_embed = _dense(cfg.patch_size, d, ("patch", "embed"), **kw)
    std = cfg.embed_std
    self.lead_embed = _embedding((cfg.num_leads, d), ("leads", "embed"), param_dtype, rngs,
                                 std)
    if cfg.pos_embed == "learned":
      self.pos_embed = _embedding((cfg.max_patches, d), ("positions", "embed"), param_dtype,
                                  rngs, std)
    self.global_tokens = _embedding((cfg.num_global_tokens, d), (None, "embed"), param_dtype,
                                    rngs)

    # Encoder.
    block_kw = dict(eps=cfg.layernorm_eps, attention_impl=resolve_attention(cfg), **kw)
    self.blocks = nnx.List([
        Block(d, cfg.num_heads, cfg.mlp_dim, embed_axis="embed", mlp_axis="mlp", **block_kw)
        for _ in range(cfg.depth)])
    self.encoder_norm = _layernorm(d, cfg.layernorm_eps, **kw)

    # MAE decoder.
    # Output side unnamed: 'embed' and 'decoder_embed' usually map to the same mesh axis
    # (fsdp), and one spec may not name a mesh axis twice.
    self.decoder_in = _dense(d, dd, ("embed", None), **kw)
    self.mask_token = _embedding((dd,), ("decoder_embed",), param_dtype, rngs)
    self.decoder_lead_embed = _embedding((cfg.num_leads, dd), ("leads", "decoder_embed"),
                                         param_dtype, rngs, std)
    if cfg.pos_embed == "learned":
      self.decoder_pos_embed = _embedding((cfg.max_patches, dd),
                                          ("positions", "decoder_embed"), param_dtype, rngs,
                                          std)
    self.decoder_blocks = nnx.List([
        Block(dd, cfg.decoder_heads, cfg.decoder_mlp_dim, embed_axis="decoder_embed",
              mlp_axis="decoder_mlp", **block_kw)
        for _ in range(cfg.decoder_depth)])
    self.decoder_norm = _layernorm(dd, cfg.layernorm_eps, **kw)
    out_init = nnx.initializers.zeros_init() if cfg.decoder_zero_init else None
    self.decoder_out = _dense(dd, cfg.patch_size, ("decoder_embed", "patch"),
                              kernel_init=out_init, **kw)

    # Projection head for NT-Xent.
    self.proj_in = _dense(d, cfg.proj_hidden, ("embed", "proj"), **kw)
    self.proj_out = _dense(cfg.proj_hidden, cfg.proj_dim, ("proj", None), **kw)

  # ----------------------------------------------------------------------------- tokens
  def num_patches(self, num_samples: int) -> int:
    """Patches per lead for a signal of ``num_samples``; static, checked against the config."""
    p = self.cfg.patch_size
    if num_samples % p:
      raise ValueError(f"Signal length {num_samples} is not a multiple of patch_size {p}.")
    n = num_samples // p
    if n > self.cfg.max_patches:
      raise ValueError(f"{n} patches per lead exceed max_patches={self.cfg.max_patches}.")
    return n

  def patchify(self, x: jax.Array) -> jax.Array:
    """[B, L, T] -> [B, L*n, P], lead-major (token l*n + t is lead l, patch t)."""
    b, l, t = x.shape
    n = self.num_patches(t)
    return x.reshape(b, l * n, self.cfg.patch_size)

  def unpatchify(self, patches: jax.Array, num_leads: int | None = None) -> jax.Array:
    """Inverse of ``patchify``: [B, L*n, P] -> [B, L, n*P]."""
    b, ln, p = patches.shape
    num_leads = num_leads or self.cfg.num_leads
    return patches.reshape(b, num_leads, (ln // num_leads) * p)

  def _positions(self, n: int, learned: nnx.Param | None, width: int) -> jax.Array:
    if learned is None:
      return jnp.asarray(_sincos_table(n, width))
    return learned[...][:n]

  def _token_grid(self, x: jax.Array, lead_mask: jax.Array) -> jax.Array:
    """Embedded tokens [B, L*n, D] (compute dtype) with lead and time embeddings added."""
    b, l, t = x.shape
    if l != self.cfg.num_leads:
      raise ValueError(f"Got {l} leads, model expects num_leads={self.cfg.num_leads}.")
    n = self.num_patches(t)
    # Absent leads are zeroed only so that NaN/inf garbage cannot reach 0 * NaN inside the
    # attention matmul; masking (not this) is what keeps them out of real tokens.
    x = jnp.where(lead_mask[:, :, None], x, 0.0)
    h = self.patch_embed(self.patchify(x).astype(self.dtype)).reshape(b, l, n, -1)
    pos = self._positions(n, getattr(self, "pos_embed", None), self.cfg.width)
    h = h + self.lead_embed[...][:, None].astype(self.dtype) + pos[None].astype(self.dtype)
    return h.reshape(b, l * n, -1)

  # ---------------------------------------------------------------------------- encoder
  def _run_blocks(self, blocks, h: jax.Array, masks: list[jax.Array]) -> jax.Array:
    enabled, policy = _remat_policy(self.cfg.remat)
    apply = nnx.remat(_apply_block, policy=policy) if enabled else _apply_block
    for block, mask in zip(blocks, masks):
      h = apply(block, h, mask)
    return h

  def encode(self, x: jax.Array, lead_mask: jax.Array, visible_idx: jax.Array | None = None,
             visible_valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Encodes a signal, optionally only the ``visible_idx`` tokens (MAE).

    Args:
      x: [B, L, T] float signal, T a multiple of patch_size.
      lead_mask: [B, L] bool, False for absent leads.
      visible_idx: optional [B, K] int32 indices into the L*n token grid.
      visible_valid: optional [B, K] bool; False marks padding slots (a sample with fewer
        visible tokens than K), which are kept out of attention like absent leads, so
        their contents cannot change any real token or the pooled output.

    Returns:
      tokens [B, K, D] (compute dtype, after the final LayerNorm; K = L*n when
      ``visible_idx`` is None) and pooled [B, D] float32 = mean of the global tokens.
    """
    b, l, t = x.shape
    n = self.num_patches(t)
    g = self.cfg.num_global_tokens
    h = self._token_grid(x, lead_mask)
    valid = jnp.repeat(lead_mask, n, axis=1)
    lead_id = jnp.broadcast_to(jnp.arange(l * n, dtype=jnp.int32) // n, (b, l * n))
    if visible_idx is not None:
      h = jnp.take_along_axis(h, visible_idx[:, :, None], axis=1)
      valid = jnp.take_along_axis(valid, visible_idx, axis=1)
      if visible_valid is not None:
        valid = valid & visible_valid
      lead_id = visible_idx.astype(jnp.int32) // n
    k = h.shape[1]

    glob = jnp.broadcast_to(self.global_tokens[...].astype(self.dtype)[None], (b, g, h.shape[-1]))
    h = jnp.concatenate([glob, h], axis=1)
    valid = jnp.concatenate([jnp.ones((b, g), bool), valid], axis=1)
    group = jnp.concatenate([jnp.full((b, g), -1, jnp.int32), lead_id], axis=1)
    is_global = jnp.broadcast_to(jnp.arange(g + k) < g, (b, g + k))

    # Local blocks: a patch token sees valid tokens of its own lead only (not the global
    # tokens, which would leak other leads); global tokens see every valid token.
    global_mask = _attention_mask(valid)
    if use_lead_slots(l, n, k) or resolve_attention(self.cfg) == "splash":
      local_mask = _lead_local_pattern(valid[:, g:], global_mask[:, :, :g], l, n, visible_idx)
    else:
      local_mask = _attention_mask(valid, group, is_global)
    depth, local = self.cfg.depth, self.cfg.local_depth
    masks = [local_mask] * local + [global_mask] * (depth - local)
    h = self._run_blocks(self.blocks, h, masks)
    h = self.encoder_norm(h)
    pooled = h[:, :g].astype(jnp.float32).mean(axis=1)
    return h[:, g:], pooled

  # ---------------------------------------------------------------------------- decoder
  def decode(self, tokens: jax.Array, visible_idx: jax.Array | None, lead_mask: jax.Array,
             num_patches: int, visible_valid: jax.Array | None = None) -> jax.Array:
    """Predicts every patch [B, L*n, P] (float32) from the encoded visible tokens.

    Visible tokens are scattered back into a full grid of learned mask tokens (fixed
    shape; padding slots, ``visible_valid`` False, are dropped and leave a mask token),
    decoder lead and time embeddings are added and ``decoder_depth`` global blocks run
    with absent leads masked out (and, with ``decoder_leadwise``, every lead apart from
    the token's own).
    """
    b, l = lead_mask.shape
    n = num_patches
    h = self.decoder_in(tokens)
    dd = h.shape[-1]
    if visible_idx is not None:
      grid = jnp.broadcast_to(self.mask_token[...].astype(self.dtype), (b, l * n, dd))
      if visible_valid is not None:  # Out-of-range index: the scatter drops the slot.
        visible_idx = jnp.where(visible_valid, visible_idx, l * n)
      h = grid.at[jnp.arange(b)[:, None], visible_idx].set(h, mode="drop")
    pos = self._positions(n, getattr(self, "decoder_pos_embed", None), dd)
    h = (h.reshape(b, l, n, dd) + self.decoder_lead_embed[...][:, None].astype(self.dtype)
         + pos[None].astype(self.dtype)).reshape(b, l * n, dd)
    lead_id = None
    token = jnp.broadcast_to(jnp.arange(l * n, dtype=jnp.int32), (b, l * n))
    if self.cfg.decoder_leadwise:
      lead_id = token // n
    valid = jnp.repeat(lead_mask, n, axis=1)
    mask = _attention_mask(valid, lead_id)
    masks = [mask] * len(self.decoder_blocks)
    if self.cfg.decoder_time_local:
      same_instant = _attention_mask(valid, token % n)
      if lead_id is not None:  # Lead-wise and time-local: a token sees only itself.
        same_instant = same_instant & mask
      masks[:self.cfg.decoder_time_local] = [same_instant] * self.cfg.decoder_time_local
    h = self._run_blocks(self.decoder_blocks, h, masks)
    return self.decoder_out(self.decoder_norm(h)).astype(jnp.float32)

  # ------------------------------------------------------------------------------ heads
  def project(self, pooled: jax.Array) -> jax.Array:
    """Projection head (Linear-GELU-Linear) for NT-Xent: [B, D] -> [B, proj_dim] float32."""
    return self.proj_out(nnx.gelu(self.proj_in(pooled))).astype(jnp.float32)

  def embed(self, x: jax.Array, lead_mask: jax.Array) -> jax.Array:
    """Frozen-encoder feature [B, 2D] float32: concat(pooled, mean of valid patch tokens)."""
    tokens, pooled = self.encode(x, lead_mask)
    valid = jnp.repeat(lead_mask, tokens.shape[1] // lead_mask.shape[1], axis=1)
    w = valid.astype(jnp.float32)[:, :, None]
    mean = (tokens.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
    return jnp.concatenate([pooled, mean], axis=-1)


# ------------------------------------------------------------------------------ accounting
def count_params(model: nnx.Module) -> int:
  """Number of trainable parameters (every ``nnx.Param``)."""
  return int(sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _block_matmul_params(width: int, mlp_dim: int) -> int:
  return 4 * width * width + 2 * width * mlp_dim


def attention_flops(cfg: ml_collections.ConfigDict, num_tokens_visible: int,
                    num_tokens_total: int) -> dict[str, float]:
  """Training (3x forward) FLOPs of the attention scores and mixing (QK^T, AV), per sample.

  Counts what runs: the local blocks per lead (L*n^2, plus g*S for the global-token
  queries) when :func:`use_lead_slots` picks it, else the dense S^2; global blocks S^2;
  the decoder (all ``num_tokens_total`` tokens) S_d^2. With splash, every computed
  128x128 block: the local grid's non-empty blocks, the others padded to 128.
  """
  d, g, l = cfg.width, cfg.num_global_tokens, cfg.num_leads
  n = num_tokens_total // l
  s_e = num_tokens_visible + g
  s_g, s_d = s_e**2, num_tokens_total**2
  if resolve_attention(cfg) == "splash":  # 128-token blocks; the local grid's non-empty ones.
    up = lambda t: -(-t // _SPLASH_BLOCK) * _SPLASH_BLOCK
    blocks = np.kron(np.eye(l, dtype=bool), np.ones((n, n), bool))
    pad = up(l * n) - l * n
    blocks = np.pad(blocks, ((0, pad), (0, pad))) | np.eye(l * n + pad, dtype=bool)
    nb = blocks.shape[0] // _SPLASH_BLOCK
    used = blocks.reshape(nb, _SPLASH_BLOCK, nb, _SPLASH_BLOCK).any(axis=(1, 3)).sum()
    local = int(used) * _SPLASH_BLOCK**2 + g * s_e
    s_g, s_d = up(s_e)**2, up(num_tokens_total)**2
  elif use_lead_slots(l, n, num_tokens_visible):
    local = l * n**2 + g * s_e
  else:
    local = s_e**2
  return {"encoder_local": 3 * 4.0 * d * cfg.local_depth * local,
          "encoder_global": 3 * 4.0 * d * (cfg.depth - cfg.local_depth) * s_g,
          "decoder": 3 * 4.0 * cfg.decoder_width * cfg.decoder_depth * s_d}


def flops_per_sample(cfg: ml_collections.ConfigDict, num_tokens_visible: int,
                     num_tokens_total: int, with_decoder: bool) -> float:
  """Training (forward + backward) matmul FLOPs for ONE view of one sample.

  Formula (backward = 2x forward, so training = 3x forward):
    dense:      6 * W * S for a weight matrix with W entries applied to S tokens;
    attention:  what :func:`attention_flops` counts (12 * S^2 * D per dense block).
  Encoder: S_e = num_tokens_visible + num_global_tokens through ``depth`` blocks; the patch
  embedding runs on all ``num_tokens_total`` grid tokens. Decoder (when ``with_decoder``):
  the input projection on the visible tokens, ``decoder_depth`` blocks and the output
  projection on all ``num_tokens_total`` tokens. The projection head (one token) is always
  included. Embedding lookups, norms and softmax are ignored. Multiply by the number of
  views (2 for HL) per training sample. For small/base with 75 of 300 tokens visible this
  is within 1% of XLA's ``cost_analysis()`` of the same forward + backward.
  """
  d, s_e = cfg.width, num_tokens_visible + cfg.num_global_tokens
  attn = attention_flops(cfg, num_tokens_visible, num_tokens_total)
  fwd = 2.0 * cfg.patch_size * d * num_tokens_total
  fwd += 2.0 * cfg.depth * _block_matmul_params(d, cfg.mlp_dim) * s_e
  fwd += 2.0 * (d * cfg.proj_hidden + cfg.proj_hidden * cfg.proj_dim)
  train = 3.0 * fwd + attn["encoder_local"] + attn["encoder_global"]
  if with_decoder:
    dd, s_d = cfg.decoder_width, num_tokens_total
    fwd = 2.0 * d * dd * num_tokens_visible
    fwd += 2.0 * cfg.decoder_depth * _block_matmul_params(dd, cfg.decoder_mlp_dim) * s_d
    fwd += 2.0 * dd * cfg.patch_size * s_d
    train += 3.0 * fwd + attn["decoder"]
  return train
