"""Probe outputs: results.json, ROC / label-efficiency PNGs and the stdout tables."""
from __future__ import annotations

import json
from typing import Any

from ecgjax import storage
from ecgjax.evaluation import metrics as probe_metrics

RESULTS_FILE = "results.json"
ROC_FILE = "roc_curves.png"
EFFICIENCY_FILE = "label_efficiency.png"


def _write_json(path: str, obj: dict[str, Any]) -> None:
  storage.write_text(path, json.dumps(obj, indent=1, allow_nan=False))


def _curve_points(results: dict[str, Any]) -> list[dict[str, Any]]:
  return [{"fraction": r["label_fraction"], "auroc": r["test"]["macro_auroc"],
           "auroc_ci": r["test"]["macro_auroc_ci"], "f1": r["test"]["macro_f1"],
           "f1_ci": r["test"]["macro_f1_ci"]} for r in results["results"]]


def _roc_plot(path: str, roc: dict[str, Any], labels: list[str], title: str) -> str:
  from ecgjax import plots  # pylint: disable=g-import-not-at-top
  curves = {}
  for c, name in enumerate(labels):
    y, p = roc["y"][:, c], roc["p"][:, c]
    fpr, tpr = probe_metrics.roc_curve(y, p)
    curves[name] = (fpr, tpr, probe_metrics.clean(float(probe_metrics.auroc(y, p))))
  return plots.roc_curves(path, curves, title)


def write(out_dir: str, results: dict[str, Any], roc: dict[str, Any], plots: bool = True) -> str:
  """OUT/results.json (+ roc_curves.png, label_efficiency.png); returns the JSON path."""
  if plots:
    from ecgjax import plots as plots_lib  # pylint: disable=g-import-not-at-top
    labels = results["task"]["label_names"]
    title = (f"{results['encoder']['kind']} encoder, test set, probe trained on "
             f"{100 * roc['fraction']:g}% of train labels")
    _roc_plot(storage.join(out_dir, ROC_FILE), roc, labels, title)
    plots_lib.label_efficiency(storage.join(out_dir, EFFICIENCY_FILE),
                               {results["encoder"]["kind"]: _curve_points(results)},
                               "linear probe: label efficiency")
    results["plots"] = {"roc_curves": ROC_FILE, "label_efficiency": EFFICIENCY_FILE}
  path = storage.join(out_dir, RESULTS_FILE)
  _write_json(path, results)
  return path


def write_demo(out_dir: str, summary: dict[str, Any], roc: dict[str, Any]) -> str:
  """Demo: one results.json holding both encoders; the curve compares them."""
  from ecgjax import plots as plots_lib  # pylint: disable=g-import-not-at-top
  labels = summary["pretrained"]["task"]["label_names"]
  _roc_plot(storage.join(out_dir, ROC_FILE), roc, labels,
            f"pretrained encoder, test set, probe trained on {100 * roc['fraction']:g}% "
            "of train labels")
  plots_lib.label_efficiency(
      storage.join(out_dir, EFFICIENCY_FILE),
      {"pretrained": _curve_points(summary["pretrained"]),
       "random init": _curve_points(summary["random"])},
      "demo linear probe: pretrained vs random init")
  summary["plots"] = {"roc_curves": ROC_FILE, "label_efficiency": EFFICIENCY_FILE}
  path = storage.join(out_dir, RESULTS_FILE)
  _write_json(path, summary)
  return path


def _num(x: float | None, fmt: str = ".3f") -> str:
  return "  n/a" if x is None else format(x, fmt)


def _ci(ci: list[float] | None) -> str:
  return "" if not ci else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def table(results: dict[str, Any]) -> str:
  """Human-readable summary of one probe (stdout)."""
  enc, task, splits = results["encoder"], results["task"], results["splits"]
  lines = [
      f"Linear probe of {enc['kind']} encoder {enc['source']} (step {enc['step']}) on "
      f"{task['data_path']}",
      f"  task: {task['num_classes']} classes, {task['label_encoding']} -> {task['probe']}; "
      f"records train/val/test = " + "/".join(str(splits["counts"][k])
                                                for k in ("train", "val", "test")),
  ]
  if splits.get("partial_note"):
    lines.append(f"  note: {splits['partial_note']}")
  for k, v in splits["origin"].items():
    if not v.startswith("shards split"):
      lines.append(f"  {k}: {v}")
  lines.append(f"  {'fraction':>8} {'n_train':>7} {'l2':>7} {'val AUROC':>9}  "
               f"{'test macro AUROC [95% CI]':<27} {'test macro F1 [95% CI]':<27}")
  for r in results["results"]:
    t = r["test"]
    lines.append(f"  {r['label_fraction']:>8g} {r['num_train']:>7d} {r['l2']:>7.0e} "
                 f"{_num(r['val']['macro_auroc']):>9}  "
                 f"{(_num(t['macro_auroc']) + _ci(t['macro_auroc_ci'])):<27} "
                 f"{(_num(t['macro_f1']) + _ci(t['macro_f1_ci'])):<27}")
  last = results["results"][-1]
  lines.append(f"  per class, test, fraction {last['label_fraction']:g}:")
  width = max(len(n) for n in task["label_names"])
  lines.append(f"    {'class':<{width}} {'pos':>5} {'AUROC':>6} {'F1':>6} {'thr':>6}")
  for name, m in last["test"]["per_class"].items():
    skip = last["test"]["skipped_classes"].get(name)
    lines.append(f"    {name:<{width}} {m['positives']:>5d} {_num(m['auroc']):>6} "
                 f"{_num(m['f1']):>6} {_num(m['threshold'], '.2f'):>6}"
                 + (f"  (not in macro: {skip})" if skip else ""))
  if "accuracy" in last["test"]:
    lines.append(f"  argmax accuracy {last['test']['accuracy']:.3f}, argmax macro F1 "
                 f"{_num(last['test'].get('macro_f1_argmax'))}")
  return "\n".join(line.rstrip() for line in lines)


def demo_table(summary: dict[str, Any]) -> str:
  """Pretrained vs random init, one line per label fraction (stdout)."""
  p, r = summary["pretrained"], summary["random"]
  task = p["task"]
  lines = [f"Demo linear probe ({task['num_classes']} classes, test n="
           f"{p['splits']['counts']['test']}): test macro AUROC / macro F1",
           f"  {'fraction':>8} {'n_train':>7}  {'pretrained':>15}  {'random init':>15}"]
  for rp, rr in zip(p["results"], r["results"]):
    cell = lambda t: f"{_num(t['macro_auroc'])} / {_num(t['macro_f1'])}"
    lines.append(f"  {rp['label_fraction']:>8g} {rp['num_train']:>7d}  {cell(rp['test']):>15}"
                 f"  {cell(rr['test']):>15}")
  lines.append(f"  ({summary['seconds']:.0f}s incl. export and embedding; "
               f"details in probe/{RESULTS_FILE})")
  return "\n".join(lines)

