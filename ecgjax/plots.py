"""PNG figures (matplotlib, Agg backend): reconstructions, ROC curves, label efficiency."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np


def _save(fig, path: str, dpi: int) -> str:
  """tight_layout, write the PNG (creating its folder), free the figure."""
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def reconstruction(path: str, original: np.ndarray, pred: np.ndarray, masked: np.ndarray,
                   leads: Sequence[str], patch_size: int, sampling_rate: float, step: int) -> str:
  """Original (black) vs reconstruction (red) per lead; masked patches shaded."""
  num_leads, t = original.shape
  n = t // patch_size
  masked = np.asarray(masked).reshape(num_leads, n)
  time = np.arange(t) / sampling_rate
  fig, axes = plt.subplots(num_leads, 1, figsize=(10, 1.1 * num_leads), sharex=True)
  axes = np.atleast_1d(axes)
  for i, ax in enumerate(axes):
    for j in np.flatnonzero(masked[i]):
      ax.axvspan(j * patch_size / sampling_rate, (j + 1) * patch_size / sampling_rate,
                 color="0.9", lw=0)
    ax.plot(time, original[i], "k", lw=0.7)
    ax.plot(time, np.where(np.repeat(masked[i], patch_size), pred[i], np.nan), "r", lw=0.7)
    ax.set_ylabel(leads[i], rotation=0, ha="right", va="center")
    ax.set_yticks([])
  axes[-1].set_xlabel("s")
  fig.suptitle(f"step {step}: original (black), reconstruction of masked patches (red)")
  return _save(fig, path, dpi=80)


def roc_curves(path: str, curves: dict[str, tuple[np.ndarray, np.ndarray, float | None]],
               title: str) -> str:
  """One small ROC panel per class: {class: (fpr, tpr, auroc or None)}."""
  names = list(curves)
  cols = min(5, max(1, len(names)))
  rows = -(-len(names) // cols) if names else 1
  fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
  for ax in axes.ravel()[len(names):]:
    ax.axis("off")
  for ax, name in zip(axes.ravel(), names):
    fpr, tpr, auc = curves[name]
    ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, ls="--")
    ax.plot(fpr, tpr, lw=1.2)
    ax.set_title(f"{name}: {'n/a' if auc is None else f'{auc:.3f}'}", fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.tick_params(labelsize=7)
  fig.supxlabel("false positive rate", fontsize=9)
  fig.supylabel("true positive rate", fontsize=9)
  fig.suptitle(title, fontsize=10)
  return _save(fig, path, dpi=90)


def label_efficiency(path: str, series: dict[str, list[dict]], title: str) -> str:
  """Test macro AUROC and F1 (95% CI bars) vs labelled fraction, one line per encoder.

  ``series``: {name: [{'fraction', 'auroc', 'auroc_ci', 'f1', 'f1_ci'}, ...]}.
  """
  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
  for name, points in series.items():
    pts = sorted(points, key=lambda p: p["fraction"])
    x = np.asarray([p["fraction"] for p in pts])
    for ax, key in zip(axes, ("auroc", "f1")):
      y = np.asarray([np.nan if p[key] is None else p[key] for p in pts], np.float64)
      ci = [p.get(f"{key}_ci") or [np.nan, np.nan] for p in pts]
      err = np.abs(np.asarray(ci, np.float64).T - y[None])
      ax.errorbar(x, y, yerr=np.nan_to_num(err), marker="o", capsize=3, label=name)
  for ax, label in zip(axes, ("test macro AUROC", "test macro F1")):
    ax.set_xscale("log")
    ax.set_xlabel("fraction of train labels")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(title, fontsize=10)
  return _save(fig, path, dpi=90)
