"""Top ops by time from a ``jax.profiler.trace(..., create_perfetto_trace=True)`` directory.

  python benchmarks/profile_table.py TRACE_DIR [--steps=N] [--top=15]

Reads the newest ``perfetto_trace.json.gz`` under TRACE_DIR and sums the duration of every
complete event ("X") on the device: the ``/device:...`` processes of a GPU/TPU trace (keyed by
the HLO op when the event names one, else the kernel name), or, on a CPU trace, the XLA
worker threads (``tf_XLA...``). Per step = total / ``--steps`` (the steps traced). The
markdown table is what ``benchmarks/README.md`` quotes.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
from typing import Any


def load_trace(trace_dir: str) -> list[dict[str, Any]]:
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir} (trace with "
                            "jax.profiler.trace(dir, create_perfetto_trace=True))")
  with gzip.open(paths[-1]) as f:
    data = json.load(f)
  return data["traceEvents"] if isinstance(data, dict) else data


def _names(events, kind: str) -> dict:
  key = (lambda e: e["pid"]) if kind == "process_name" else (lambda e: (e["pid"], e["tid"]))
  return {key(e): e.get("args", {}).get("name", "") for e in events
          if e.get("ph") == "M" and e.get("name") == kind}


def top_ops(events: list[dict[str, Any]], steps: int = 1, top: int = 15
            ) -> tuple[list[dict[str, Any]], str]:
  """([{op, ms_per_step, share, count_per_step}], where) for the device's busiest ops."""
  procs, threads = _names(events, "process_name"), _names(events, "thread_name")
  device_pids = {p for p, n in procs.items() if n.startswith("/device:")}
  if device_pids:
    where = ", ".join(sorted(procs[p] for p in device_pids))
    keep = lambda e: e["pid"] in device_pids
  else:
    where = "host XLA threads (no device process in the trace)"
    keep = lambda e: threads.get((e["pid"], e["tid"]), "").startswith("tf_XLA")
  total, count = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and keep(e):
      args = e.get("args") or {}
      op = args.get("hlo_op") or args.get("long_name") or e.get("name", "?")
      total[op] += float(e.get("dur", 0.0))
      count[op] += 1
  all_us = sum(total.values()) or 1.0
  rows = [{"op": op, "ms_per_step": us / 1e3 / steps, "share": us / all_us,
           "count_per_step": count[op] / steps} for op, us in total.most_common(top)]
  return rows, where


def markdown(rows: list[dict[str, Any]], where: str) -> str:
  lines = [f"Device time by op ({where}):", "", "| op | ms/step | share | calls/step |",
           "|---|---|---|---|"]
  lines += [f"| `{r['op'][:80]}` | {r['ms_per_step']:.3f} | {100 * r['share']:.1f}% | "
            f"{r['count_per_step']:g} |" for r in rows]
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("trace_dir")
  p.add_argument("--steps", type=int, default=1)
  p.add_argument("--top", type=int, default=15)
  a = p.parse_args()
  print(markdown(*top_ops(load_trace(a.trace_dir), a.steps, a.top)))


if __name__ == "__main__":
  main()
