r"""PyTorch reference of the Signal Transformer + HL step, for speed comparisons only.

torch is not an ecgjax dependency: this file imports it lazily and only
``benchmarks/train_step.py --torch/--stmem`` (or this script) uses it. Standalone:

  python benchmarks/torch_reference.py --model=tiny --seconds=1 --rate=100 --steps=2

The reference mirrors what the jitted ecgjax step executes, so that a throughput ratio
compares frameworks rather than models: the same size presets (read from
``ecgjax.models.signal_transformer``), lead-major patch tokens with lead/time embeddings
and one global token, local blocks as a same-lead mask over the visible tokens and
global blocks over all of them (``F.scaled_dot_product_attention`` with a bool mask),
multi-scale span masking with a fixed K visible tokens (top-k of a span score, as in
``ecgjax.objectives.masking``), the full-grid MAE decoder with per-patch normalised
targets, the projection head and NT-Xent on the pooled global token, cheap on-device
augmentations (noise, mains hum, drift, gain, lead dropout), gradient clipping and AdamW.
bf16 autocast on CUDA, fp32 on CPU; each mode is timed eager and with ``torch.compile``.

``benchmark_stmem`` times the real ST-MEM (../shared/peers/st_mem, CC BY-NC 4.0, used
unchanged and never imported by ecgjax) at the matching encoder size.
"""
from __future__ import annotations

import math
import pathlib
import statistics
import sys
import time
from typing import Any

import numpy as np

_ROOT = pathlib.Path(__file__).resolve().parents[1]
STMEM_DIR = _ROOT.parent / "shared" / "peers" / "st_mem"


def _torch():
  import torch  # pylint: disable=g-import-not-at-top
  return torch


def build_model(cfg):
  """nn.Module twin of ecgjax's SignalTransformer for the ml_collections model ``cfg``."""
  torch = _torch()
  nn = torch.nn
  F = torch.nn.functional

  class Block(nn.Module):
    """Pre-LN block; separate q/k/v/out projections like ecgjax."""

    def __init__(self, d: int, heads: int, mlp: int, eps: float):
      super().__init__()
      self.heads = heads
      self.ln_attn = nn.LayerNorm(d, eps=eps)
      self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
      self.ln_mlp = nn.LayerNorm(d, eps=eps)
      self.mlp_in, self.mlp_out = nn.Linear(d, mlp), nn.Linear(mlp, d)

    def forward(self, x, mask):
      b, s, d = x.shape
      y = self.ln_attn(x)
      split = lambda t: t.view(b, s, self.heads, d // self.heads).transpose(1, 2)
      a = F.scaled_dot_product_attention(split(self.q(y)), split(self.k(y)), split(self.v(y)),
                                         attn_mask=mask)
      x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
      return x + self.mlp_out(F.gelu(self.mlp_in(self.ln_mlp(x)), approximate="tanh"))

  def attention_mask(valid, group=None, sees_all=None):
    m = valid[:, :, None] & valid[:, None, :]
    if group is not None:
      same = group[:, :, None] == group[:, None, :]
      if sees_all is not None:
        same = same | sees_all[:, :, None]
      m = m & same
    eye = torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
    return (m | eye)[:, None]

  class SignalTransformer(nn.Module):
    """Encoder (local + global) + full-grid MAE decoder + projection head."""

    def __init__(self):
      super().__init__()
      d, dd, eps = cfg.width, cfg.decoder_width, cfg.layernorm_eps
      self.cfg = cfg
      self.patch_embed = nn.Linear(cfg.patch_size, d)
      self.lead_embed = nn.Parameter(0.02 * torch.randn(cfg.num_leads, d))
      self.pos_embed = nn.Parameter(0.02 * torch.randn(cfg.max_patches, d))
      self.global_tokens = nn.Parameter(0.02 * torch.randn(cfg.num_global_tokens, d))
      self.blocks = nn.ModuleList(Block(d, cfg.num_heads, cfg.mlp_dim, eps)
                                  for _ in range(cfg.depth))
      self.encoder_norm = nn.LayerNorm(d, eps=eps)
      self.decoder_in = nn.Linear(d, dd)
      self.mask_token = nn.Parameter(0.02 * torch.randn(dd))
      self.decoder_lead_embed = nn.Parameter(0.02 * torch.randn(cfg.num_leads, dd))
      self.decoder_pos_embed = nn.Parameter(0.02 * torch.randn(cfg.max_patches, dd))
      self.decoder_blocks = nn.ModuleList(
          Block(dd, cfg.decoder_heads, cfg.decoder_mlp_dim, eps)
          for _ in range(cfg.decoder_depth))
      self.decoder_norm = nn.LayerNorm(dd, eps=eps)
      self.decoder_out = nn.Linear(dd, cfg.patch_size)
      self.proj_in = nn.Linear(d, cfg.proj_hidden)
      self.proj_out = nn.Linear(cfg.proj_hidden, cfg.proj_dim)

    def encode(self, x, lead_mask, visible_idx):
      b, l, t = x.shape
      n, g = t // self.cfg.patch_size, self.cfg.num_global_tokens
      x = torch.where(lead_mask[:, :, None], x, torch.zeros_like(x))
      h = self.patch_embed(x.reshape(b, l, n, self.cfg.patch_size))
      h = (h + self.lead_embed[:, None] + self.pos_embed[:n]).reshape(b, l * n, -1)
      valid = lead_mask.repeat_interleave(n, dim=1)
      h = torch.gather(h, 1, visible_idx[:, :, None].expand(-1, -1, h.shape[-1]))
      valid = torch.gather(valid, 1, visible_idx)
      lead_id = torch.div(visible_idx, n, rounding_mode="floor")
      k = h.shape[1]
      h = torch.cat([self.global_tokens.expand(b, g, -1), h], dim=1)
      valid = torch.cat([torch.ones(b, g, dtype=torch.bool, device=x.device), valid], dim=1)
      group = torch.cat([torch.full((b, g), -1, dtype=lead_id.dtype, device=x.device),
                         lead_id], dim=1)
      is_global = (torch.arange(g + k, device=x.device) < g).expand(b, g + k)
      local, full = attention_mask(valid, group, is_global), attention_mask(valid)
      for i, block in enumerate(self.blocks):
        h = block(h, local if i < self.cfg.local_depth else full)
      h = self.encoder_norm(h)
      return h[:, g:], h[:, :g].float().mean(1)

    def decode(self, tokens, visible_idx, lead_mask, n):
      b, l = lead_mask.shape
      h = self.decoder_in(tokens)
      dd = h.shape[-1]
      grid = self.mask_token.to(h.dtype).expand(b, l * n, dd)
      h = grid.scatter(1, visible_idx[:, :, None].expand(-1, -1, dd), h)
      h = (h.view(b, l, n, dd) + self.decoder_lead_embed[:, None]
           + self.decoder_pos_embed[:n]).reshape(b, l * n, dd)
      mask = attention_mask(lead_mask.repeat_interleave(n, dim=1))
      for block in self.decoder_blocks:
        h = block(h, mask)
      return self.decoder_out(self.decoder_norm(h)).float()

    def project(self, pooled):
      return self.proj_out(F.gelu(self.proj_in(pooled), approximate="tanh")).float()

  return SignalTransformer()


def multiscale_mask(b: int, l: int, n: int, lead_mask, ratio: float, scales, whole_prob: float):
  """Span masking with a fixed K visible tokens (the ecgjax algorithm, torch ops)."""
  torch = _torch()
  dev = lead_mask.device
  k = max(1, int(round((1.0 - ratio) * l * n)))
  scales = [min(int(s), n) for s in scales]
  total = 2.0 * -math.log(1.0 - min(ratio, 0.95)) * n / len(scales)
  score = torch.zeros(b * l, n, device=dev)
  for s in scales:
    c = max(1, math.ceil(total / s))
    start = torch.clamp((torch.rand(b * l, c, device=dev) * (n - s + 1)).long(), max=n - s)
    pos = (start[:, :, None] + torch.arange(s, device=dev)).reshape(b * l, c * s)
    prio = (1.0 + torch.rand(b * l, c, device=dev)).repeat_interleave(s, dim=1)
    score = score.scatter_reduce(1, pos, prio, reduce="amax")
  score = score.view(b, l, n)
  score = score + torch.where(torch.rand(b, l, 1, device=dev) < whole_prob, 1e4, 0.0)
  score = score + 1e-3 * torch.rand(b, l, n, device=dev)
  score = torch.where(lead_mask[:, :, None], score, math.inf).reshape(b, l * n)
  idx = torch.topk(-score, k, dim=1).indices.sort(dim=1).values
  visible = torch.zeros(b, l * n, dtype=torch.bool, device=dev).scatter(1, idx, True)
  return idx, ~visible


def augment(x, lead_mask, rate: float):
  """Elementwise augmentations of the same cost class as ecgjax.data.augment."""
  torch = _torch()
  b, l, t = x.shape
  dev = x.device
  u = torch.rand(b, 8 + 2 * l, device=dev)
  tt = torch.arange(t, device=dev) / rate
  x = x + 0.05 * u[:, :1, None] * torch.randn_like(x)
  freq = torch.where(u[:, 1:2] < 0.5, 50.0, 60.0)[:, :, None]
  x = x + 0.05 * u[:, 2:3, None] * torch.sin(2 * math.pi * freq * tt
                                             + 2 * math.pi * u[:, 8:8 + l, None])
  drift = torch.sin(2 * math.pi * 0.5 * u[:, 3:4] * tt + 2 * math.pi * u[:, 4:5])
  x = x + 0.2 * (2 * u[:, 8 + l:, None] - 1) * drift[:, None, :]
  x = x * torch.exp(math.log(1.25) * (2 * u[:, 5:6, None] - 1))
  keep = lead_mask & ((torch.rand(b, l, device=dev) > 0.2) | (u[:, 6:7] > 0.5))
  keep = torch.cat([lead_mask[:, :1], keep[:, 1:]], dim=1)  # never drop every lead
  return torch.where(keep[:, :, None], x, torch.zeros_like(x)), keep


def hl_loss(model, view1, view2, lead_mask, lcfg, rate: float):
  """HL loss: MAE on both masked views + lambda * NT-Xent, one encoder pass on [2B]."""
  torch = _torch()
  F = torch.nn.functional
  x1, m1 = augment(view1, lead_mask, rate)
  x2, m2 = augment(view2, lead_mask, rate)
  b, l, t = x1.shape
  n = t // model.cfg.patch_size
  x = torch.stack([x1, x2], 1).reshape(2 * b, l, t)
  mask = torch.stack([m1, m2], 1).reshape(2 * b, l)
  idx, masked = multiscale_mask(2 * b, l, n, mask, float(lcfg.mask_ratio),
                                tuple(lcfg.span_scales), float(lcfg.whole_lead_prob))
  tokens, pooled = model.encode(x, mask, idx)
  loss = torch.zeros((), device=x.device)
  if lcfg.mae_weight > 0:
    pred = model.decode(tokens, idx, mask, n)
    target = x.reshape(2 * b, l * n, -1).float()
    if lcfg.norm_target:
      target = (target - target.mean(-1, keepdim=True)) / torch.sqrt(
          target.var(-1, keepdim=True, unbiased=False) + 1e-6)
    per_token = (pred - target).square().mean(-1).view(b, 2, -1)
    w = (masked & mask.repeat_interleave(n, dim=1)).float().view(b, 2, -1)
    mae = ((per_token * w).sum((0, 2)) / w.sum((0, 2)).clamp(min=1.0)).mean()
    loss = loss + lcfg.mae_weight * mae
  if lcfg.contrastive_weight > 0:
    z = model.project(pooled).view(b, 2, -1)
    z = F.normalize(torch.cat([z[:, 0], z[:, 1]], 0), dim=-1)
    logits = z @ z.T / lcfg.temperature
    eye = torch.eye(2 * b, dtype=torch.bool, device=x.device)
    logits = logits.masked_fill(eye, -1e9)
    positives = (torch.arange(2 * b, device=x.device) + b) % (2 * b)
    loss = loss + lcfg.contrastive_weight * F.cross_entropy(logits, positives)
  return loss


def _device():
  torch = _torch()
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(dev) -> None:
  if dev.type == "cuda":
    _torch().cuda.synchronize()


def _optimizer(model, optim_cfg, dev):
  torch = _torch()
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  kw = dict(fused=True) if dev.type == "cuda" else dict(foreach=True)
  return torch.optim.AdamW(
      [{"params": decay, "weight_decay": optim_cfg.weight_decay},
       {"params": no_decay, "weight_decay": 0.0}],
      lr=optim_cfg.lr, betas=(optim_cfg.b1, optim_cfg.b2), **kw)


def _time_steps(step, steps: int, warmup: int, dev) -> dict[str, Any]:
  t0 = time.perf_counter()
  step()
  _sync(dev)
  first = time.perf_counter() - t0
  for _ in range(warmup - 1):
    step()
  _sync(dev)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    step()
    _sync(dev)
    times.append(time.perf_counter() - t)
  return dict(first_step_s=first, step_times_s=times, step_time_s=statistics.median(times))


def _run_modes(make_loss, optim_cfg, clip: float | None, batch_size: int,
               steps: int, compile_modes, dev) -> dict[str, Any]:
  """Times forward + backward + (clip) + AdamW for each mode in ``compile_modes``."""
  torch = _torch()
  out: dict[str, Any] = {}
  for mode in compile_modes:
    torch.manual_seed(0)
    model, loss_fn = make_loss()
    opt = _optimizer(model, optim_cfg, dev)
    fn = torch.compile(loss_fn) if mode == "compile" else loss_fn
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                else torch.autocast("cpu", enabled=False))

    def step():
      opt.zero_grad(set_to_none=True)
      with autocast:
        loss = fn()
      loss.backward()
      if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
      opt.step()
      return loss

    try:
      if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
      r = _time_steps(step, steps, 2, dev)
      r["samples_per_s"] = batch_size / r["step_time_s"]
      if dev.type == "cuda":
        r["peak_bytes"] = float(torch.cuda.max_memory_allocated())
    except Exception as e:  # pylint: disable=broad-except  (OOM or a compile failure)
      r = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    out[mode] = r
    del model, opt, fn
    if dev.type == "cuda":
      torch.cuda.empty_cache()
  best = [r["samples_per_s"] for r in out.values() if "samples_per_s" in r]
  out["best_samples_per_s"] = max(best) if best else None
  return out


def benchmark_config(config, batch: dict[str, np.ndarray], steps: int,
                     compile_modes=("eager", "compile")) -> dict[str, Any]:
  """Times the reference HL step for an ecgjax training ``config`` on ``batch``."""
  torch = _torch()
  from ecgjax import state as state_lib  # pylint: disable=g-import-not-at-top
  dev = _device()
  mcfg = state_lib.model_config(config)
  lcfg, rate = config.loss, float(config.data.sampling_rate)
  v1 = torch.from_numpy(batch["view1"]).to(dev)
  v2 = torch.from_numpy(batch["view2"]).to(dev)
  lm = torch.from_numpy(batch["lead_mask"]).to(dev)

  def make_loss():
    model = build_model(mcfg).to(dev)
    return model, lambda: hl_loss(model, v1, v2, lm, lcfg, rate)

  out = _run_modes(make_loss, config.optim, config.optim.clip_norm,
                   config.global_batch, steps, compile_modes, dev)
  out.update(torch=torch.__version__, device=str(dev),
             dtype="bfloat16 autocast" if dev.type == "cuda" else "float32",
             threads=torch.get_num_threads())
  return out


def benchmark_stmem(config, batch: dict[str, np.ndarray], steps: int,
                    compile_modes=("eager", "compile")) -> dict[str, Any]:
  """Times ST-MEM (its own MAE loss, one view) at the config's encoder size and patch grid."""
  if not (STMEM_DIR / "models" / "st_mem.py").exists():
    return {"skipped": f"ST-MEM peer not found at {STMEM_DIR}"}
  try:
    import einops  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return {"skipped": "einops not installed (pip install einops)"}
  torch = _torch()
  from ecgjax import state as state_lib  # pylint: disable=g-import-not-at-top
  if str(STMEM_DIR) not in sys.path:
    sys.path.insert(0, str(STMEM_DIR))
  from models import st_mem  # pylint: disable=g-import-not-at-top
  mcfg = state_lib.model_config(config)
  dev = _device()
  x = torch.from_numpy(batch["view1"]).to(dev)
  seq_len = x.shape[-1]

  def make_loss():
    model = st_mem.ST_MEM(
        seq_len=seq_len, patch_size=mcfg.patch_size, num_leads=mcfg.num_leads,
        embed_dim=mcfg.width, depth=mcfg.depth, num_heads=mcfg.num_heads,
        decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=4, mlp_ratio=4,
        norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6)).to(dev)
    return model, lambda: model(x, mask_ratio=float(config.loss.mask_ratio))["loss"]

  out = _run_modes(make_loss, config.optim, None, config.global_batch, steps,
                   compile_modes, dev)
  out.update(note="ST-MEM: one view per sample, per-lead random masking, lead-wise "
                  "decoder (its own recipe); samples/s is per ECG",
             encoder=dict(width=mcfg.width, depth=mcfg.depth, heads=mcfg.num_heads),
             seq_len=seq_len, patch_size=mcfg.patch_size)
  return out


def main() -> None:
  import argparse  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(_ROOT))
  sys.path.insert(0, str(_ROOT / "benchmarks"))
  import step_inputs  # pylint: disable=g-import-not-at-top
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="tiny")
  p.add_argument("--seconds", type=float, default=5.0)
  p.add_argument("--rate", type=float, default=500.0)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--objective", default="hl")
  p.add_argument("--modes", default="eager,compile")
  p.add_argument("--stmem", action="store_true")
  a = p.parse_args()
  config = step_inputs.make_config(a.model, a.seconds, a.rate, a.batch, a.objective,
                                   dtype="float32")
  batch = step_inputs.random_views(config)
  out = {"reference": benchmark_config(config, batch, a.steps, a.modes.split(","))}
  if a.stmem:
    out["stmem"] = benchmark_stmem(config, batch, a.steps, a.modes.split(","))
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
