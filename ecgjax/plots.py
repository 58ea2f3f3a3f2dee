"""PNG figures (matplotlib, Agg backend): reconstructions, ROC curves, label efficiency."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np


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
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path
