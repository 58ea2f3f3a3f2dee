"""Hand-crafted baseline features, embedded through the same path as a neural encoder.

Per lead of the encoder's eval window (same leads, rate, length and R-peak alignment, but
in raw mV: no normalisation, so amplitude survives): FFT magnitudes averaged in
``NUM_BANDS`` equal-width bands from 0 Hz to Nyquist, and the amplitude percentiles
``PERCENTILES``. Absent leads are zeros. The result is a plain feature vector, so the
probe (fit.py) and the embedding cache (embeddings.py) treat it like any encoder's output.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ecgjax.inference import encoder as encoder_lib

NUM_BANDS = 16
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
VERSION = 1


def features(x: np.ndarray, mask: np.ndarray, num_bands: int = NUM_BANDS) -> np.ndarray:
  """x [B, L, T] mV windows, mask [B, L] -> [B, L * (num_bands + len(PERCENTILES))]."""
  x = np.asarray(x, np.float64)
  b, l, t = x.shape
  mag = np.abs(np.fft.rfft(x, axis=-1)) / t                      # [B, L, F]
  edges = np.linspace(0, mag.shape[-1], num_bands + 1).round().astype(int)
  bands = np.stack([mag[..., lo:max(hi, lo + 1)].mean(-1)
                    for lo, hi in zip(edges[:-1], edges[1:])], -1)  # [B, L, K]
  pct = np.moveaxis(np.percentile(x, PERCENTILES, axis=-1), 0, -1)  # [B, L, P]
  f = np.concatenate([bands, pct], -1) * np.asarray(mask, bool)[..., None]
  return f.reshape(b, -1).astype(np.float32)


class Embedder:
  """Stands in for encoder.BatchEmbedder in embeddings.embed_split."""

  def __init__(self, batch_size: int):
    self.batch_size = int(batch_size)

  def __call__(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return features(x, mask)


def make_encoder(like: dict[str, Any]) -> encoder_lib.Encoder:
  """An Encoder record with ``like``'s window (an export's meta), normalize='none'."""
  meta = {k: like[k] for k in ("leads", "sampling_rate", "window_s")}
  meta.update(pre_r_s=float(like.get("pre_r_s", encoder_lib.DEFAULT_PRE_R_S)),
              normalize="none", source="handcrafted", step=0, model_size="fft+percentiles",
              embedding_dim=len(meta["leads"]) * (NUM_BANDS + len(PERCENTILES)))
  identity = {"kind": "handcrafted", "version": VERSION, "bands": NUM_BANDS,
              "percentiles": list(PERCENTILES)}
  return encoder_lib.Encoder(model=None, meta=meta, kind="handcrafted", identity=identity)
