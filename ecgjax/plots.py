"""PNG figures (matplotlib, Agg backend): reconstructions, loss curves, ROC curves,
label efficiency."""
from __future__ import annotations

import io
import json
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.ticker  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from ecgjax import storage


def _save(fig, path: str, dpi: int) -> str:
  """tight_layout, write the PNG (a local file or an object), free the figure."""
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, dpi=dpi, format="png")
  plt.close(fig)
  storage.write_bytes(path, buf.getvalue())
  return path


def to_units(values: np.ndarray, model_x: np.ndarray, units_x: np.ndarray) -> np.ndarray:
  """Maps ``values`` [L, T] from the model's input space back to the units of ``units_x``.

  Normalisation is affine per lead (x_model = a * x_units + c), so a and c are recovered
  from the two versions of the same window; leads that are flat or absent map with a = 1.
  """
  a = model_x.std(axis=-1, keepdims=True) / np.maximum(units_x.std(axis=-1, keepdims=True),
                                                       1e-12)
  a = np.where(a > 1e-9, a, 1.0)
  c = model_x.mean(axis=-1, keepdims=True) - a * units_x.mean(axis=-1, keepdims=True)
  return (values - c) / a


def reconstruction(path: str, original: np.ndarray, pred: np.ndarray, masked: np.ndarray,
                   leads: Sequence[str], patch_size: int, sampling_rate: float, step: int,
                   units: str = "mV") -> str:
  """Original (black) vs reconstruction (red) per lead in ``units``; masked patches shaded.

  Each lead has its own amplitude axis (ticks in ``units``) and a grey bar of 1 unit at
  the left, so amplitudes read off the figure as on ECG paper.
  """
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
    lo = float(np.nanmin(original[i])) if original[i].size else 0.0
    ax.plot([time[0] - 0.02 * time[-1]] * 2, [lo, lo + 1.0], color="0.5", lw=2.5,
            solid_capstyle="butt")
    ax.set_ylabel(leads[i], rotation=0, ha="right", va="center")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(3))
    ax.tick_params(axis="y", labelsize=6)
  axes[-1].set_xlabel("s")
  fig.suptitle(f"step {step}: original (black), reconstruction of masked patches (red); "
               f"amplitude in {units}, grey bar = 1 {units}")
  return _save(fig, path, dpi=80)


def read_metrics(path: str) -> list[dict]:
  """The rows of a metrics.jsonl (later rows for a step replace earlier ones on resume)."""
  return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


# (train key, val key, title) of each loss-curve panel.
_CURVES = (("mae", "val_mae", "MAE (normalised patches)"),
           ("nt_xent", "val_nt_xent", "NT-Xent"),
           ("contrastive_acc", "val_contrastive_acc", "contrastive accuracy"))


def loss_curves(path: str, rows: Sequence[dict],
                references: dict[str, dict[str, float]] | None = None) -> str:
  """Train and val curves per loss term; a term that is absent or all zero is left out.

  ``references``: {panel train key: {label: value}} horizontal lines (e.g. a baseline's MAE); the
  MAE panel always shows 1.0, what predicting each patch's mean scores.
  """
  panels = [p for p in _CURVES
            if any(r.get(p[0]) or r.get(p[1]) for r in rows)] or list(_CURVES[:1])
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
  for ax, (train_key, val_key, title) in zip(axes[0], panels):
    for key, style, label in ((train_key, "-", "train"), (val_key, "o-", "val")):
      pts = sorted({r["step"]: r[key] for r in rows if key in r}.items())
      if pts:
        ax.plot(*zip(*pts), style, ms=3, lw=1, label=label)
    if train_key == "mae":
      ax.axhline(1.0, color="0.6", ls=":", lw=1, label="patch mean (1.0)")
    for ref_name, ref in (references or {}).get(train_key, {}).items():
      ax.axhline(ref, color="tab:red", ls="--", lw=1, label=ref_name)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  return _save(fig, path, dpi=90)


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
