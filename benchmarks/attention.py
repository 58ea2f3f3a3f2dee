r"""Local attention before/after: dense [S, S] + lead mask vs per-lead attention.

  python benchmarks/attention.py --model=small --seconds=10 --rate=250 --batch=4 \
      --out=benchmarks/results/attention_cpu_small.json

For each path that runs local blocks, the same model and inputs are compiled twice: with
``use_lead_slots`` forced off (the dense masked form, what ran before) and as chosen now.
Paths: ``embed`` (full grid, forward: the embed/probe/fine-tune case) and ``encode_masked``
(MAE's visible tokens at each --mask_ratios, forward + backward: the train step's encoder).
Reports per path: attention FLOPs as counted (``st.attention_flops``, scaled to the
forward-only embed), XLA's ``cost_analysis()`` FLOPs of the whole compiled function, and the
min (and median) wall time over --steps calls after one warm-up, the two variants timed
alternately (``block_until_ready``). fp32 on CPU.
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import platform
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
from flax import nnx

from ecgjax.models import signal_transformer as st
from ecgjax.objectives import masking


def _compile(make_fn, model, args, force):
  """(compiled fn, its state arg) with ``use_lead_slots`` forced (None: as chosen)."""
  chosen = st.use_lead_slots
  st.use_lead_slots = chosen if force is None else (lambda *a: force)
  try:
    graphdef, state = nnx.split(model)
    inner = make_fn()
    fn = lambda state, *xs: inner(nnx.merge(graphdef, state), *xs)
    return jax.jit(fn).lower(state, *args).compile(), state
  finally:
    st.use_lead_slots = chosen


def _measure(name, make_fn, model, args, cfg, visible, total, forward_only, steps):
  """Both variants compiled, then timed alternately (min and median of ``steps`` each), so
  load from other processes on a shared machine hits both alike."""
  variants = {"before_dense_mask": False, "after": None}
  compiled = {k: _compile(make_fn, model, args, f) for k, f in variants.items()}
  times = {k: [] for k in variants}
  for k, (fn, state) in compiled.items():
    jax.block_until_ready(fn(state, *args))  # warm-up
  for _ in range(steps):
    for k, (fn, state) in compiled.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(state, *args))
      times[k].append(time.perf_counter() - start)
  out = {}
  for k, force in variants.items():
    cost = compiled[k][0].cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    chosen = st.use_lead_slots
    st.use_lead_slots = chosen if force is None else (lambda *a: force)
    try:
      attn = st.attention_flops(cfg, visible, total)
      per_lead = bool(st.use_lead_slots(cfg.num_leads, total // cfg.num_leads, visible))
    finally:
      st.use_lead_slots = chosen
    scale = (1 / 3 if forward_only else 1.0) * args[0].shape[0]
    out[k] = {"per_lead": per_lead,
              "attention_flops_local": attn["encoder_local"] * scale,
              "attention_flops_encoder": (attn["encoder_local"] + attn["encoder_global"]) * scale,
              "xla_flops": float(cost.get("flops", 0.0)) if cost else None,
              "time_s_min": min(times[k]), "time_s_median": statistics.median(times[k])}
  b, a = out["before_dense_mask"], out["after"]
  out["local_attention_flops_ratio"] = b["attention_flops_local"] / a["attention_flops_local"]
  out["xla_flops_ratio"] = b["xla_flops"] / a["xla_flops"] if a["xla_flops"] else None
  out["speedup_min"] = b["time_s_min"] / a["time_s_min"]
  print(f"{name}: local attention FLOPs x{out['local_attention_flops_ratio']:.2f} fewer, "
        f"XLA FLOPs x{out['xla_flops_ratio']:.3f}, min time {b['time_s_min'] * 1e3:.1f} -> "
        f"{a['time_s_min'] * 1e3:.1f} ms (x{out['speedup_min']:.2f})", flush=True)
  return out


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="small")
  p.add_argument("--seconds", type=float, default=10.0)
  p.add_argument("--rate", type=float, default=250.0)
  p.add_argument("--patch", type=int, default=50)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--mask_ratios", default="0.75,0.5")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--out", default=None)
  a = p.parse_args()
  n = int(round(a.seconds * a.rate)) // a.patch
  cfg = st.model_config(a.model, num_leads=12, patch_size=a.patch, max_patches=n,
                        dtype="float32")
  with nnx.use_eager_sharding(False):
    model = st.SignalTransformer(cfg, rngs=nnx.Rngs(0))
  l, total = cfg.num_leads, cfg.num_leads * n
  x = jax.random.normal(jax.random.key(0), (a.batch, l, n * a.patch))
  lead_mask = jnp.ones((a.batch, l), bool).at[0, 3:6].set(False)  # some absent leads.
  results = {"embed": _measure("embed", lambda: lambda m, x, lm: m.embed(x, lm), model,
                               (x, lead_mask), cfg, total, total, True, a.steps)}
  for ratio in (float(r) for r in a.mask_ratios.split(",")):
    idx = masking.multiscale_mask(jax.random.key(1), a.batch, l, n, lead_mask, ratio).visible_idx
    k = idx.shape[1]

    def make(idx=idx):
      def fwd_bwd(m, x, lm):
        loss = lambda m: jnp.sum(m.encode(x, lm, idx)[0].astype(jnp.float32) ** 2)
        return nnx.grad(loss)(m)
      return fwd_bwd
    results[f"encode_masked_{ratio}"] = _measure(f"encode_masked (mask {ratio}, K={k})", make,
                                                 model, (x, lead_mask), cfg, k, total, False,
                                                 a.steps)
  record = {"benchmark": "attention", "date": datetime.date.today().isoformat(),
            "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "jax": jax.__version__, "python": platform.python_version(),
            "config": {"model": a.model, "seconds": a.seconds, "rate": a.rate,
                       "patch": a.patch, "leads": l, "patches_per_lead": n,
                       "batch": a.batch, "dtype": "float32", "absent_leads": "3 in sample 0",
                       "steps": a.steps},
            "results": results}
  if a.out:
    pathlib.Path(a.out).write_text(json.dumps(record, indent=1))
  print(json.dumps(record, indent=1))


if __name__ == "__main__":
  main()
