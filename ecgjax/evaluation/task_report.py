"""Task-suite outputs: tasks.json, tasks.md (task x fraction -> metric [95% CI]), tasks.png."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from ecgjax import storage

JSON_FILE, MD_FILE, PNG_FILE = "tasks.json", "tasks.md", "tasks.png"


def _cell(m: dict[str, Any] | None) -> str:
  if not m or m.get("value") is None:
    return "n/a"
  ci = m.get("ci")
  return f"{m['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _f(x) -> str:
  return "n/a" if x is None else f"{x:.3f}"


def markdown(summary: dict[str, Any]) -> str:
  encs = list(summary["encoders"])
  lines = ["# Clinical task suite", "",
           f"Linear probe on frozen features; test metric with a 95% bootstrap CI "
           f"({summary['probe']['bootstrap']} resamples). Encoders: "
           + ", ".join(f"`{n}` ({e['kind']}, {e['source']})"
                       for n, e in summary["encoders"].items()) + ".", "",
           "| task | metric | fraction | n train | " + " | ".join(encs) + " |",
           "|---|---|---|---|" + "---|" * len(encs)]
  for name, task in summary["tasks"].items():
    head = task["definition"]["metrics"][0]
    first = task["encoders"][encs[0]]
    for i, row in enumerate(first):
      cells = [_cell(task["encoders"][e][i]["metrics"].get(head)) for e in encs]
      lines.append(f"| {name} | {head} | {row['label_fraction']:g} | {row['num_train']} | "
                   + " | ".join(cells) + " |")
  for name, task in summary["tasks"].items():
    s = task["splits"]
    lines += ["", f"## {name}", "",
              f"split `{s['split']}`; records train/val/test = "
              + "/".join(str(s["counts"][k]) for k in ("train", "val", "test"))
              + f"; test class counts {s['class_counts']['test']}."]
    for k, v in s["origin"].items():
      lines.append(f"- {k}: {v}")
    metrics = task["definition"]["metrics"]
    for e in encs:
      last = task["encoders"][e][-1]
      frac = f"fraction {last['label_fraction']:g}"
      others = [m for m in metrics[1:] if m != "se_ppv"]
      if others:
        lines.append(f"- `{e}` ({frac}): " + "; ".join(
            f"{m} {_cell(last['metrics'][m])}" for m in others))
      if "se_ppv" in metrics:
        per = last["metrics"]["se_ppv"]
        lines.append(f"- `{e}` ({frac}) sensitivity / positive predictivity: " + ", ".join(
            f"{c} {_f(v['se'])}/{_f(v['ppv'])}" for c, v in per.items()))
      for g, v in (last.get("groups") or {}).items():
        ci = v.get("macro_auroc_ci")
        lines.append(f"- `{e}` ({frac}) {g} (n={v['records']}): macro AUROC "
                     f"{_f(v.get('macro_auroc'))}"
                     + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
                     + f" over {v.get('included_classes')}")
  lines += ["", f"({summary['seconds']:.0f} s)"]
  return "\n".join(lines) + "\n"


def plot(path: str, summary: dict[str, Any]) -> str:
  """Headline metric at the largest label fraction: one bar per encoder, CI whiskers."""
  from ecgjax import plots  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  encs = list(summary["encoders"])
  tasks = list(summary["tasks"])
  fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(tasks)), 4))
  width = 0.8 / max(len(encs), 1)
  for j, e in enumerate(encs):
    vals, lo, hi = [], [], []
    for t in tasks:
      head = summary["tasks"][t]["definition"]["metrics"][0]
      m = summary["tasks"][t]["encoders"][e][-1]["metrics"][head]
      v = np.nan if m["value"] is None else m["value"]
      ci = m.get("ci") or [v, v]
      vals.append(v)
      lo.append(max(v - ci[0], 0) if np.isfinite(v) else 0)
      hi.append(max(ci[1] - v, 0) if np.isfinite(v) else 0)
    x = np.arange(len(tasks)) + (j - (len(encs) - 1) / 2) * width
    ax.bar(x, vals, width, yerr=[lo, hi], capsize=3, label=e)
  ax.set_xticks(np.arange(len(tasks)))
  ax.set_xticklabels([f"{t}\n({summary['tasks'][t]['definition']['metrics'][0]})"
                      for t in tasks], fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel("test metric (95% CI)")
  ax.legend(fontsize=8)
  ax.set_title("clinical task suite: linear probe, largest label fraction")
  return plots._save(fig, path, 120)  # pylint: disable=protected-access


def write(out_dir: str, summary: dict[str, Any]) -> None:
  summary["files"] = {"markdown": MD_FILE, "plot": PNG_FILE}
  storage.write_text(storage.join(out_dir, JSON_FILE),
                     json.dumps(summary, indent=1, allow_nan=False))
  storage.write_text(storage.join(out_dir, MD_FILE), markdown(summary))
  plot(storage.join(out_dir, PNG_FILE), summary)
