r"""Times the production pretraining step (ecgjax.train) per model size and ECG length.

Run from the project root; on a GPU, JAX first, then the PyTorch reference and the ST-MEM
peer in a second process at the batch JAX used (same device, same batch):

  python benchmarks/train_step.py --model=base --seconds=10 --batch=128
  python benchmarks/train_step.py --model=base --seconds=10 --batch=128 --no-jax --torch --stmem

  --model=tiny|small|base|large   --seconds=2.5,5,10   --rate=500 (Hz)
  --batch=N|auto (auto: doubling search until OOM, accelerators only; default 256 on an
          accelerator, 8 on CPU)   --steps=N (timed steps after warm-up)
  --objective=hl|mae|simclr   --dtype=auto|bfloat16|float32 (auto: bf16 on accelerators,
          fp32 on CPU where bf16 matmuls are emulated)   --remat=none|full|dots_saveable|...
  --attention=xla|cudnn   --torch   --stmem   --out=benchmarks/results/NAME.json
  --profile=DIR (trace 3 more steps into DIR/MODEL_SECONDSs and print the top ops by device
          time: benchmarks/profile_table.py)
  --no-jax (only --torch/--stmem, at --batch=N: on a GPU time PyTorch in its own process,
          because JAX keeps the memory it has used and PyTorch then runs out of it)

The step is exactly the one ``train.train_and_evaluate`` runs: ``state.create_state`` +
``train.compile_step`` (AOT, donated state) on random int16 segment batches placed with
the batch sharding, so the timed step includes the on-device resample and normalisation
(the PyTorch reference gets the finished windows, which favours it slightly). Step time is the median over ``--steps`` calls after two warm-up calls, each
ended by ``block_until_ready``. MFU counts model FLOPs (``train.flops_per_step``: matmuls
of both views, forward + backward) against the device's dense bf16 peak
(``train.PEAK_FLOPS``); devices without a known peak (CPU) report achieved TFLOP/s only.
``tokens_per_s`` counts the L*n patch tokens of each input ECG (both views: x2 encoder
inputs before masking).
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "benchmarks"))

import flax  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np

from ecgjax import config as config_lib  # pylint: disable=g-import-not-at-top
from ecgjax import sharding
from ecgjax import state as state_lib
from ecgjax import train
from step_inputs import bench_window, make_config, on_accelerator, random_batch, random_views

_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def _memory(compiled) -> dict[str, float | None]:
  """Peak device bytes (allocator stats where the backend has them) and XLA's analysis."""
  out: dict[str, float | None] = {"peak_bytes": None, "peak_source": None}
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out.update(peak_bytes=float(stats["peak_bytes_in_use"]), peak_source="memory_stats",
               bytes_limit=float(stats.get("bytes_limit", 0)) or None)
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    m = None
  if m is not None:
    parts = dict(argument_bytes=m.argument_size_in_bytes, output_bytes=m.output_size_in_bytes,
                 temp_bytes=m.temp_size_in_bytes, alias_bytes=m.alias_size_in_bytes)
    out.update({k: float(v) for k, v in parts.items()})
    analysed = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                - m.alias_size_in_bytes)
    out["analysis_bytes"] = float(analysed)
    if out["peak_bytes"] is None:
      out.update(peak_bytes=float(analysed), peak_source="memory_analysis")
  return out


def _xla_flops(compiled) -> float | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def _is_oom(e: BaseException) -> bool:
  return any(m in str(e) for m in _OOM_MARKERS)


def run_jax(config, steps: int, warmup: int = 2, profile_dir: str | None = None,
            profile_steps: int = 3) -> dict[str, Any]:
  """Builds, compiles and times the production step for ``config``; with ``profile_dir``,
  then traces ``profile_steps`` more steps there and tabulates the top ops by device time."""
  mesh = sharding.make_mesh(config.mesh)
  graphdef, state, shardings, _ = state_lib.create_state(config, mesh)
  t0 = time.perf_counter()
  compiled, batch_abs = train.compile_step(config, graphdef, state, shardings, mesh,
                                            bench_window(config))
  compile_s = time.perf_counter() - t0
  host = random_batch(config)
  batch = {k: jax.device_put(host[k], v.sharding) for k, v in batch_abs.items()}
  # Step counters made up front: the timed loop does no host -> device work.
  counters = [jax.device_put(jnp.asarray(i, jnp.int32), sharding.replicated(mesh))
              for i in range(warmup + steps + profile_steps)]
  times = []
  metrics = None
  for i in range(warmup + steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch, counters[i])
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t)
  profile = None
  if profile_dir:
    import profile_table  # pylint: disable=g-import-not-at-top
    with jax.profiler.trace(profile_dir, create_perfetto_trace=True):
      for i in range(warmup + steps, warmup + steps + profile_steps):
        state, metrics = compiled(state, batch, counters[i])
        jax.block_until_ready((state, metrics))
    rows, where = profile_table.top_ops(profile_table.load_trace(profile_dir), profile_steps)
    profile = {"dir": profile_dir, "steps": profile_steps, "where": where, "top_ops": rows}
    print(profile_table.markdown(rows, where), flush=True)
  loss = float(metrics["loss"])
  mem = _memory(compiled)
  xla_flops = _xla_flops(compiled)
  del state, compiled, batch
  gc.collect()
  return dict(compile_s=compile_s, step_times_s=times, loss=loss, memory=mem,
              xla_flops_per_step=xla_flops, profile=profile)


def find_max_batch(make, steps: int, start: int) -> tuple[int, dict[str, Any]]:
  """Doubles the global batch from ``start`` until OOM; returns (largest fit, its result)."""
  best, result, b = None, None, start
  while b <= 1 << 16:
    try:
      r = run_jax(make(b), steps)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_oom(e):
        raise
      print(f"  batch {b}: out of memory", flush=True)
      break
    print(f"  batch {b}: fits ({statistics.median(r['step_times_s']) * 1e3:.1f} ms/step)",
          flush=True)
    best, result = b, r
    b *= 2
    gc.collect()
  if best is None:
    raise RuntimeError(f"even batch {start} does not fit")
  return best, result


def summarise(config, r: dict[str, Any]) -> dict[str, Any]:
  """Throughput, FLOP rate and MFU from a run_jax result."""
  step_s = statistics.median(r["step_times_s"])
  b = config.global_batch
  tokens = len(config.data.leads) * config_lib.num_patches(config)
  flops = train.flops_per_step(config)
  peak = train._peak_flops()  # pylint: disable=protected-access
  achieved = flops / step_s
  return dict(
      step_time_s=step_s, step_time_mean_s=statistics.fmean(r["step_times_s"]),
      step_time_min_s=min(r["step_times_s"]), samples_per_s=b / step_s,
      tokens_per_sample=tokens, tokens_per_s=b * tokens / step_s,
      model_flops_per_step=flops, xla_flops_per_step=r["xla_flops_per_step"],
      achieved_tflops=achieved / 1e12,
      mfu=(achieved / (peak * jax.device_count())) if peak else None,
      compile_s=r["compile_s"], loss=r["loss"], memory=r["memory"],
      step_times_s=r["step_times_s"], profile=r.get("profile"))


def _torch_results(config, args, which: str = "benchmark_config") -> dict[str, Any]:
  """PyTorch timings on the same batch: the reference ('benchmark_config') or ST-MEM."""
  try:
    import torch_reference  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {"skipped": f"torch not importable: {e}"}
  return getattr(torch_reference, which)(config, random_views(config), args.steps,
                                         compile_modes=args.torch_compile.split(","))


def _fmt(x: float | None, spec: str) -> str:
  return "-" if x is None else format(x, spec)


def print_table(rows: list[dict[str, Any]]) -> None:
  head = (f"{'model':6} {'sec':>5} {'tok':>5} {'batch':>5} {'step ms':>9} {'samp/s':>8} "
          f"{'tok/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'mem MiB':>9} {'compile s':>9} "
          f"{'torch samp/s':>12} {'jax/torch':>9} {'st-mem samp/s':>13}")
  print(head)
  print("-" * len(head))
  for r in rows:
    j = r["jax"]
    t = r.get("torch") or {}
    best_t = t.get("best_samples_per_s")
    s = (r.get("stmem") or {}).get("best_samples_per_s")
    mfu = None if j["mfu"] is None else 100 * j["mfu"]
    print(f"{r['model']:6} {r['seconds']:>5g} {j['tokens_per_sample']:>5d} {r['batch']:>5d} "
          f"{1e3 * j['step_time_s']:>9.1f} {j['samples_per_s']:>8.1f} {j['tokens_per_s']:>9.0f} "
          f"{j['achieved_tflops']:>8.3f} {_fmt(mfu, '>5.1f')}% "
          f"{_fmt(j['memory']['peak_bytes'] and j['memory']['peak_bytes'] / 2**20, '>9.0f')} "
          f"{j['compile_s']:>9.1f} {_fmt(best_t, '>12.2f')} "
          f"{_fmt(best_t and j['samples_per_s'] / best_t, '>9.2f')} {_fmt(s, '>13.2f')}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="tiny", choices=("tiny", "small", "base", "large"))
  p.add_argument("--seconds", default="2.5,5,10", help="comma-separated window lengths")
  p.add_argument("--rate", type=float, default=500.0, help="sampling rate (Hz)")
  p.add_argument("--batch", default=None, help="global batch, or 'auto'")
  p.add_argument("--steps", type=int, default=10, help="timed steps after 2 warm-up steps")
  p.add_argument("--objective", default="hl", choices=("hl", "mae", "simclr"))
  p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32"))
  p.add_argument("--remat", default="none")
  p.add_argument("--attention", default=None, choices=(None, "xla", "cudnn"))
  p.add_argument("--jax", action=argparse.BooleanOptionalAction, default=True,
                 help="time the JAX step (--no-jax: only --torch/--stmem, at --batch=N; on a "
                      "GPU run them so, in their own process, since JAX keeps its memory)")
  p.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
  p.add_argument("--stmem", action="store_true", help="also time the ST-MEM peer")
  p.add_argument("--torch_compile", default="eager,compile",
                 help="PyTorch modes to time: eager and/or compile")
  p.add_argument("--out", default=None, help="JSON path (default: print only)")
  p.add_argument("--profile", default=None,
                 help="trace dir: after timing, trace 3 steps and print the top ops "
                      "(benchmarks/profile_table.py); at a fixed --batch only")
  args = p.parse_args(argv)
  if not args.jax:  # Read when JAX first makes its GPU client (just below): leave PyTorch room.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

  default_batch = 256 if on_accelerator() else 8
  rows = []
  for seconds in [float(s) for s in args.seconds.split(",")]:
    make = lambda b, s=seconds: make_config(args.model, s, args.rate, b, args.objective,
                                            args.dtype, args.remat, args.attention)
    if not args.jax:
      if args.batch in (None, "auto"):
        p.error("--no-jax needs --batch=N (the batch the JAX run used)")
      batch, r, max_batch = int(args.batch), None, None
    elif args.batch == "auto":
      if on_accelerator():
        print(f"[{args.model} {seconds:g}s] batch search", flush=True)
        batch, r = find_max_batch(make, args.steps, start=16 * jax.device_count())
      else:
        print("--batch=auto needs an accelerator; using the CPU default", flush=True)
        batch = default_batch
        r = run_jax(make(batch), args.steps)
      max_batch = batch if on_accelerator() else None
    else:
      batch = int(args.batch) if args.batch else default_batch
      trace = args.profile and os.path.join(args.profile, f"{args.model}_{seconds:g}s")
      r, max_batch = run_jax(make(batch), args.steps, profile_dir=trace), None
    config = make(batch)
    row = dict(model=args.model, seconds=seconds, batch=batch, max_batch_pow2=max_batch,
               patch_size=config_lib.patch_size(config),
               patches_per_lead=config_lib.num_patches(config),
               dtype=config.model.dtype, jax=r and summarise(config, r))
    if r:
      print(f"[{args.model} {seconds:g}s b={batch}] jax {row['jax']['samples_per_s']:.2f} "
            f"samples/s, {1e3 * row['jax']['step_time_s']:.1f} ms/step", flush=True)
    if args.torch:
      row["torch"] = _torch_results(config, args)
      best = row["torch"].get("best_samples_per_s")
      if best and r:
        row["jax_over_torch"] = row["jax"]["samples_per_s"] / best
        print(f"  torch {best:.2f} samples/s -> jax/torch {row['jax_over_torch']:.2f}",
              flush=True)
    if args.stmem:
      row["stmem"] = _torch_results(config, args, "benchmark_stmem")
      print(f"  st-mem: {row['stmem'].get('best_samples_per_s', row['stmem'].get('skipped'))}",
            flush=True)
    rows.append(row)
    _write(args, rows)  # After every row: a long sweep keeps what it measured.

  report = _write(args, rows)
  print_table([r for r in rows if r["jax"]])
  return report


def _write(args, rows: list[dict[str, Any]]) -> dict[str, Any]:
  """The JSON report so far; written to --out when given."""
  dev = jax.devices()[0]
  report = dict(
      benchmark="train_step", date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
      device=dict(platform=dev.platform, kind=dev.device_kind, count=jax.device_count(),
                  host=platform.node(), cpu=platform.processor() or platform.machine(),
                  peak_bf16_flops=train._peak_flops()),  # pylint: disable=protected-access
      versions=dict(python=platform.python_version(), jax=jax.__version__,
                    jaxlib=getattr(jax.lib, "__version__", None) or jax.__version__,
                    flax=flax.__version__),
      args=vars(args), results=rows)
  if args.out:
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
  return report


if __name__ == "__main__":
  main()
