"""Aggregation and markdown for benchmarks/ssl_compare.py (pure functions, no JAX).

A *run* is one probe fit: {'encoder', 'seed' (pretraining seed; None for the hand-crafted
baseline), 'fraction', 'draw' (label-subset draw), 'auroc', 'f1', 'l2', ...}. Cells
average the draws of each seed first, then give mean +- sd over seeds (over draws for an
encoder without seeds), so a seed with five 1% draws weighs as much as one with a single
draw.
"""
from __future__ import annotations

import collections
from typing import Any, Sequence

import numpy as np


def mean_sd_over_seeds(runs: Sequence[dict[str, Any]], key: str) -> tuple[float, float, int]:
  """(mean, sd, n) of ``key`` over seeds, each seed's draws averaged first.

  Runs without a seed (the hand-crafted baseline) are grouped by draw instead. sd has
  ddof=1 (NaN for n = 1).
  """
  groups: dict[Any, list[float]] = collections.defaultdict(list)
  for r in runs:
    if r.get(key) is not None:
      groups[("seed", r["seed"]) if r.get("seed") is not None else ("draw", r["draw"])].append(
          float(r[key]))
  if not groups:
    return float("nan"), float("nan"), 0
  seeds = [float(np.mean(v)) for v in groups.values()]
  sd = float(np.std(seeds, ddof=1)) if len(seeds) > 1 else float("nan")
  return float(np.mean(seeds)), sd, len(seeds)


def l2_edges(runs: Sequence[dict[str, Any]], grid: Sequence[float]) -> dict[str, int]:
  """Runs whose chosen L2 is the smallest / largest of ``grid`` *and* still improving there
  (``l2_at_edge``, see ``probe.l2_at_edge``): only those say the grid is too narrow. Runs
  without that field count whenever they chose an end."""
  lo, hi = min(grid), max(grid)
  edge = lambda r, end: bool(np.isclose(r["l2"], end) and r.get("l2_at_edge", True))
  return {"runs": len(runs), "at_min": int(sum(edge(r, lo) for r in runs)),
          "at_max": int(sum(edge(r, hi) for r in runs))}


def per_seed_differences(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]],
                         key: str = "auroc") -> list[float]:
  """A minus B per pretraining seed (draw-averaged); a seedless B is compared by draw mean."""
  def by_seed(runs):
    g = collections.defaultdict(list)
    for r in runs:
      g[r.get("seed")].append(float(r[key]))
    return {s: float(np.mean(v)) for s, v in g.items()}
  sa, sb = by_seed(a), by_seed(b)
  if list(sb) == [None]:
    return [v - sb[None] for s, v in sorted(sa.items(), key=lambda kv: str(kv[0]))]
  return [sa[s] - sb[s] for s in sorted(set(sa) & set(sb), key=str)]


def _fmt(mean: float, sd: float) -> str:
  if not np.isfinite(mean):
    return "-"
  return f"{mean:.3f}" + (f" ± {sd:.3f}" if np.isfinite(sd) else "")


def table(runs: Sequence[dict[str, Any]], encoders: Sequence[str],
          fractions: Sequence[float]) -> list[str]:
  """Markdown: encoders x fractions, test macro AUROC and macro F1, mean ± sd (n)."""
  head = "| encoder | " + " | ".join(f"{100 * f:g}% labels: AUROC / F1 (n)" for f in fractions)
  md = [head + " |", "|---|" + "---|" * len(fractions)]
  for e in encoders:
    cells = []
    for f in fractions:
      sel = [r for r in runs if r["encoder"] == e and r["fraction"] == f]
      m, s, n = mean_sd_over_seeds(sel, "auroc")
      mf, sf, _ = mean_sd_over_seeds(sel, "f1")
      cells.append(f"{_fmt(m, s)} / {_fmt(mf, sf)} ({n})")
    md.append(f"| {e} | " + " | ".join(cells) + " |")
  return md


def difference_table(diffs: Sequence[dict[str, Any]]) -> list[str]:
  """Markdown of the paired differences and a plain list of which exclude 0."""
  md = ["| difference | labels | mean Δ macro AUROC | 95% paired CI | per-seed Δ mean ± sd "
        "(A wins) | excludes 0 |", "|---|---|---|---|---|---|"]
  for d in diffs:
    ci = d["ci"] or [float("nan")] * 2
    ps = d["per_seed"]
    wins = sum(v > 0 for v in ps)
    sd = float(np.std(ps, ddof=1)) if len(ps) > 1 else float("nan")
    scope = "" if d.get("scope", "macro") == "macro" else f" [{d['scope']} AUROC]"
    md.append(f"| {d['a']} − {d['b']}{scope} | {100 * d['fraction']:g}% | {d['difference']:+.3f} | "
              f"[{ci[0]:+.3f}, {ci[1]:+.3f}] | {_fmt(float(np.mean(ps)), sd)} "
              f"({wins}/{len(ps)}) | {'**yes**' if d['excludes_zero'] else 'no'} |")
  yes = [d for d in diffs if d["excludes_zero"]]
  md.append("")
  if yes:
    md.append("Differences whose 95% paired CI excludes 0: " + "; ".join(
        f"{d['a']} − {d['b']}"
        f"{'' if d.get('scope', 'macro') == 'macro' else ' (' + d['scope'] + ' AUROC)'} at "
        f"{100 * d['fraction']:g}% labels "
        f"({'A better' if d['difference'] > 0 else 'B better'}, {d['difference']:+.3f})"
        for d in yes) + ".")
  else:
    md.append("No difference's 95% paired CI excludes 0.")
  if len(yes) < len(diffs):
    md.append(f"The other {len(diffs) - len(yes)} differences are not resolved: their CI "
              "contains 0.")
  return md


def markdown(meta: dict[str, Any], runs: Sequence[dict[str, Any]], encoders: Sequence[str],
             fractions: Sequence[float], diffs: Sequence[dict[str, Any]],
             edges: dict[str, dict[str, int]]) -> str:
  """The results page: command, seeds, data, the table, paired differences, L2 edges."""
  md = [f"# SSL comparison on {meta['name']} ({meta['date']})", "",
        f"Command: `{meta['command']}`", "",
        f"- Pretraining seeds: {meta['seeds']} (seed sets init, data order and augmentation "
        "keys); every objective at the same steps, batch and data: "
        f"{meta['steps']} steps x batch {meta['batch']}, model {meta['size']}, "
        f"{meta['rate']:g} Hz, {meta['window_s']:g} s windows, {meta['patch_ms']:g} ms patches.",
        f"- Pretraining data: `{meta['pretrain_data']}` (split `train`).",
        f"- Probe data: `{meta['data']}`, splits {meta['split_counts']} (test is never "
        "pretrained on or tuned on; val selects L2 and F1 thresholds).",
        f"- Encoders: {', '.join(encoders)}. random_init is the HL architecture at each "
        "pretraining seed's initialisation; handcrafted is per-lead FFT band magnitudes + "
        "amplitude percentiles (ecgjax/evaluation/handcrafted.py) through the same probe.",
        f"- Label fractions {[f'{100 * f:g}%' for f in fractions]}; label-subset draws "
        f"{meta['draws']} at {[f'{100 * f:g}%' for f in meta['draws_at']]}, 1 elsewhere "
        "(draw d uses subset seed d for every encoder; every class keeps a positive).",
        f"- L2 grid {meta['l2_grid']}; runs whose chosen L2 sits at the grid's edge: "
        + ", ".join(f"{e} {v['at_min'] + v['at_max']}/{v['runs']}" for e, v in edges.items())
        + ".", "",
        "## Test macro AUROC / macro F1, mean ± sd over seeds", "",
        "Each seed's label draws are averaged first; n = seeds (draws for handcrafted). "
        "F1 uses per-class thresholds chosen on val.", ""]
  md += table(runs, encoders, fractions)
  md += ["", "## Paired differences of test macro AUROC", "",
         f"{meta['resamples']} bootstrap resamples of the test records (seed "
         f"{meta['bootstrap_seed']}), the same resample indices for both encoders. Within "
         "each resample the macro AUROCs of all runs of an encoder (seeds x draws) are "
         "averaged, then differenced; the CI is the 2.5/97.5 percentile of that difference. "
         "It is conditional on these seeds: the per-seed column shows the seed-to-seed "
         "spread and how many seeds A won.", ""]
  md += difference_table(diffs)
  return "\n".join(md) + "\n"
