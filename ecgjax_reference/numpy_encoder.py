"""Dependency-light reference loader of an ecgjax export: numpy + safetensors, no JAX.

  import numpy_encoder                      # this single file; also copied into every export
  enc = numpy_encoder.load("EXPORT_DIR")    # params.safetensors + config.json
  emb = enc.embed(signal_mv, sampling_rate=500, leads=("I", "II", "V1"), mode="first")

It re-implements, from the export's config.json alone, what ``ecgjax.load_pretrained(DIR)
.embed`` computes: lead placement and masks, the eval window (``rpeak`` / ``first`` /
``mean``), Kaiser-windowed-sinc resampling (low-pass at the lower Nyquist of the two
rates, band-limited interpolation), per-lead normalisation, then the Signal Transformer
encoder and the pooled (+) mean-token embedding. It is the
executable form of the export's model card, and lets a colleague check or port the model
without installing JAX. It computes in float64, so for a float32-compute export it agrees
with ecgjax to ~1e-5; for a bfloat16-compute export the difference is bf16 rounding.
``rpeak`` mode takes the R peaks as an argument (use any QRS detector); the other modes
need none. One record at a time, no batching: it is a reference, not a fast path.
"""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Sequence

import numpy as np

PARAMS_FILE = "params.safetensors"
CONFIG_FILE = "config.json"
STANDARD_LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
_ALIASES = {**{n.upper(): n for n in STANDARD_LEADS},
            "MLII": "II", "MLI": "I", "MLIII": "III", "ML2": "II", "ML1": "I"}
NORM_EPS = 1e-3  # normalisation epsilon of ecgjax.data.windows.normalize.


def canonical_lead(name: str) -> str:
  return _ALIASES.get(name.strip().upper(), name.strip())


def load_params(export_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of EXPORT/params.safetensors; a damaged file raises naming it."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  path = os.path.join(export_dir, PARAMS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: not an ecgjax export directory")
  try:
    return load_file(path)
  except Exception as e:  # safetensors' errors do not name the file.
    raise ValueError(f"{path}: not a readable safetensors file (truncated or damaged? "
                     f"{type(e).__name__}: {e})") from e


def sincos_table(num: int, width: int) -> np.ndarray:
  """The fixed position table of ``pos_embed='sincos'`` [num, width]."""
  pos = np.arange(num, dtype=np.float64)[:, None]
  freqs = 1.0 / (10000.0 ** (np.arange(width // 2, dtype=np.float64) / (width // 2)))
  table = np.concatenate([np.sin(pos * freqs), np.cos(pos * freqs)], axis=1)
  return np.pad(table, ((0, 0), (0, width - table.shape[1]))).astype(np.float32)


def gelu(x: np.ndarray) -> np.ndarray:
  """tanh-approximate GELU (flax's ``nnx.gelu`` default)."""
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
  mean = x.mean(-1, keepdims=True)
  var = np.square(x - mean).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


# The resampling kernel of ecgjax.data.windows (preprocess.RESAMPLE_HALF_WIDTH, _KAISER_BETA):
# a Kaiser-windowed sinc with 8 zero crossings a side, in periods of the lower of the two rates.
RESAMPLE_HALF_WIDTH = 8
KAISER_BETA = 5.0


def resample_context(ratio: float) -> int:
  """Source samples the kernel reaches past an output at ``ratio`` source samples per output."""
  return int(math.ceil(RESAMPLE_HALF_WIDTH * max(ratio, 1.0))) + 1


def kernel(x: np.ndarray) -> np.ndarray:
  """Kaiser-windowed sinc at ``x`` cutoff half-periods (zero for |x| >= the half width)."""
  z = RESAMPLE_HALF_WIDTH
  arg = np.sqrt(np.maximum(1.0 - np.square(x / z), 0.0))
  window = np.i0(KAISER_BETA * arg) / np.i0(KAISER_BETA)
  return np.where(np.abs(x) < z, np.sinc(x) * window, 0.0)


def resample(seg: np.ndarray, ratio: float, valid: int, out_len: int, context: int
             ) -> np.ndarray:
  """Raw segment [L, S] (mV) -> [L, out_len]: windowed-sinc low-pass + interpolation.

  ``seg`` starts ``context`` samples before the window's first sample (zeros where that
  is before the record's start) and holds the record up to index ``valid``. Output t sits
  at source position ``context + t * ratio``; its value is the kernel-weighted sum of the
  ``2 * context + 2`` source samples around it, the kernel stretched to the lower Nyquist
  of the two rates (``max(ratio, 1)`` source samples per cutoff half-period), so tones
  above the new Nyquist are removed rather than aliased. Weights on samples past the
  record's end are dropped and the rest renormalised to sum 1 (DC stays exact there);
  outputs past the record's end are 0. Positions are float32 as in ecgjax, where XLA
  fuses ``context + t * r`` into one multiply-add: the exact value (float64 holds it)
  rounded once. A 1-ulp position error would move a noisy window by ~1e-4. Weights and
  sums are float64.
  """
  taps = 2 * context + 2
  r = np.float32(ratio)
  pos = (context + np.arange(out_len, dtype=np.float64) * r).astype(np.float32)  # [T]
  j = np.floor(pos).astype(np.int64)[:, None] + np.arange(1 - taps // 2, taps // 2 + 1)
  w = kernel((pos[:, None].astype(np.float64) - j) / max(float(r), 1.0))   # [T, taps]
  w = np.where((j >= 0) & (j < valid), w, 0.0)
  w = w / np.maximum(w.sum(-1, keepdims=True), 1e-6)
  x = seg.astype(np.float64)[:, np.clip(j, 0, seg.shape[1] - 1)]           # [L, T, taps]
  y = np.einsum("ltk,tk->lt", x, w)
  return np.where(pos <= np.float32(valid) - 1, y, 0.0)


class NumpyEncoder:
  """An export's encoder and preprocessing in numpy (see the module docstring)."""

  def __init__(self, config: dict, params: dict[str, np.ndarray], source: str = ""):
    self.config = config
    self.m = config["model"]
    self.leads = tuple(config["leads"])
    self.sampling_rate = float(config["sampling_rate"])
    self.window_samples = int(round(float(config["window_s"]) * self.sampling_rate))
    self.pre_r_s = float(config.get("pre_r_s", 0.25))
    self.normalize = config["normalize"]
    self.p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    missing = [n for n in self._required() if n not in self.p]
    if missing:
      raise ValueError(f"{source}/{PARAMS_FILE} lacks encoder tensors {missing[:5]} "
                       f"({len(missing)} in all) for the model in {CONFIG_FILE}")
    if self.normalize == "dataset":
      stats = config.get("lead_stats") or {}
      self.stats = np.asarray([[stats.get(l, {}).get("mean", 0.0) for l in self.leads],
                               [stats.get(l, {}).get("std", 1.0) for l in self.leads]],
                              np.float32).astype(np.float64)
    elif self.normalize not in ("record", "record_joint", "none"):
      raise ValueError(f"{source}/{CONFIG_FILE}: unknown normalize={self.normalize!r}")

  def _required(self) -> list[str]:
    names = ["patch_embed/kernel", "patch_embed/bias", "lead_embed", "global_tokens",
             "encoder_norm/scale", "encoder_norm/bias"]
    if self.m["pos_embed"] == "learned":
      names.append("pos_embed")
    for i in range(self.m["depth"]):
      for sub in ("ln_attn", "ln_mlp"):
        names += [f"blocks/{i}/{sub}/scale", f"blocks/{i}/{sub}/bias"]
      for sub in ("attn/query", "attn/key", "attn/value", "attn/out", "mlp_in", "mlp_out"):
        names += [f"blocks/{i}/{sub}/kernel", f"blocks/{i}/{sub}/bias"]
    return names

  @property
  def embedding_dim(self) -> int:
    return 2 * int(self.m["width"])

  # ------------------------------------------------------------------------ windows
  def source_length(self, fs: float) -> int:
    return int(math.ceil(self.window_samples * fs / self.sampling_rate))

  def windows(self, signal: np.ndarray, sampling_rate: float, leads: Sequence[str],
              mode: str = "rpeak", r_peaks: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """(normalised windows [K, L, T] float64 in the model's lead order, lead mask [L])."""
    names = [canonical_lead(str(l)) for l in leads]
    bad = [l for l, c in zip(leads, names) if c not in STANDARD_LEADS or names.count(c) > 1]
    if bad:
      raise ValueError(f"unknown or duplicate lead name(s) {bad}; expected {STANDARD_LEADS}")
    x = np.asarray(signal).astype(np.float32)  # the precision ecgjax reads input at.
    if x.ndim != 2 or x.shape[0] != len(names):
      raise ValueError(f"expected [{len(names)} leads, samples], got shape {x.shape}")
    fs = float(sampling_rate)
    if not fs > 0:
      raise ValueError(f"sampling_rate must be > 0, got {sampling_rate}")
    if not np.isfinite(x).all():
      raise ValueError("the signal has NaN/inf values")
    need = self.source_length(fs)
    n = x.shape[1]
    if n < need:
      raise ValueError(f"{n} samples at {fs:g} Hz are shorter than the model's window "
                       f"({need} samples at this rate)")
    if mode == "mean":
      starts = list(range(0, n - need + 1, need))
    elif mode == "first":
      starts = [0]
    elif mode == "rpeak":
      if r_peaks is None:
        raise ValueError("mode='rpeak' needs r_peaks (sample indices at the record's rate); "
                         "use mode='first' or 'mean' without a QRS detector")
      r = np.asarray(r_peaks, np.int64) - int(round(self.pre_r_s * fs))
      ok = r[(r >= 0) & (r + need <= n)]
      starts = [int(ok[0]) if ok.size else 0]
    else:
      raise ValueError(f"mode={mode!r}; expected 'rpeak', 'first' or 'mean'")
    where = {c: i for i, c in enumerate(names)}
    rows = np.asarray([where.get(l, -1) for l in self.leads])
    present = rows >= 0
    ratio = fs / self.sampling_rate
    # Each window is cut with `context` samples of margin on both sides for the kernel.
    context = resample_context(ratio)
    seg_len = 2 * context + int(math.ceil(self.window_samples * ratio)) + 1
    out = []
    for s in starts:
      first = s - context  # < 0 for a window at the record's start: zeros before it.
      lead_in = max(0, -first)
      valid = max(0, min(seg_len, n - first))
      seg = np.zeros((len(self.leads), seg_len), np.float32)
      seg[present, lead_in:valid] = x[rows[present], first + lead_in:first + valid]
      y = resample(seg, ratio, valid, self.window_samples, context)
      out.append(self._normalise(y, present))
    return np.stack(out), present

  def _normalise(self, x: np.ndarray, present: np.ndarray) -> np.ndarray:
    if self.normalize in ("record", "record_joint"):
      x = x - x.mean(-1, keepdims=True)
      ms = np.mean(x * x, -1, keepdims=True)
      if self.normalize == "record_joint":  # one RMS over the present leads.
        ms = np.full_like(ms, ms[present > 0].mean() if present.any() else 0.0)
      x = x / (np.sqrt(ms) + NORM_EPS)
    elif self.normalize == "dataset":
      x = (x - self.stats[0][:, None]) / (self.stats[1][:, None] + NORM_EPS)
    return x * present[:, None]

  # ------------------------------------------------------------------------ encoder
  def _dense(self, name: str, x: np.ndarray) -> np.ndarray:
    return x @ self.p[f"{name}/kernel"] + self.p[f"{name}/bias"]

  def _ln(self, name: str, x: np.ndarray) -> np.ndarray:
    return layer_norm(x, self.p[f"{name}/scale"], self.p[f"{name}/bias"],
                      float(self.m["layernorm_eps"]))

  def _block(self, i: int, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    b = f"blocks/{i}"
    s, d = x.shape
    h = int(self.m["num_heads"])
    y = self._ln(f"{b}/ln_attn", x)
    q, k, v = (self._dense(f"{b}/attn/{n}", y).reshape(s, h, d // h)
               for n in ("query", "key", "value"))
    logits = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(d // h)
    logits = np.where(mask[None], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    x = x + self._dense(f"{b}/attn/out", np.einsum("hqk,khd->qhd", w, v).reshape(s, d))
    return x + self._dense(f"{b}/mlp_out", gelu(self._dense(f"{b}/mlp_in",
                                                           self._ln(f"{b}/ln_mlp", x))))

  def encode_window(self, x: np.ndarray, present: np.ndarray) -> np.ndarray:
    """One normalised window [L, T] + lead mask [L] -> embedding [2D] (pooled (+) mean)."""
    num_leads, t = x.shape
    p = int(self.m["patch_size"])
    if num_leads != int(self.m["num_leads"]) or t % p:
      raise ValueError(f"window {x.shape} does not fit num_leads={self.m['num_leads']}, "
                       f"patch_size={p}")
    n = t // p
    d = int(self.m["width"])
    x = np.where(present[:, None], x, 0.0)
    h = self._dense("patch_embed", x.reshape(num_leads * n, p)).reshape(num_leads, n, d)
    pos = (self.p["pos_embed"][:n] if self.m["pos_embed"] == "learned"
           else sincos_table(n, d).astype(np.float64))
    h = (h + self.p["lead_embed"][:, None] + pos[None]).reshape(num_leads * n, d)
    g = self.p["global_tokens"].shape[0]
    h = np.concatenate([self.p["global_tokens"], h])
    valid = np.concatenate([np.ones(g, bool), np.repeat(present, n)])
    group = np.concatenate([np.full(g, -1), np.arange(num_leads * n) // n])
    both = valid[:, None] & valid[None, :]
    eye = np.eye(g + num_leads * n, dtype=bool)
    # Local blocks: a patch sees its own lead's valid patches; the global token sees all.
    local = both & ((group[:, None] == group[None, :]) | (np.arange(g + num_leads * n) < g)[:, None])
    masks = [local | eye] * int(self.m["local_depth"])
    masks += [both | eye] * (int(self.m["depth"]) - int(self.m["local_depth"]))
    for i, mask in enumerate(masks):
      h = self._block(i, h, mask)
    h = self._ln("encoder_norm", h)
    w = np.repeat(present, n).astype(np.float64)[:, None]
    mean = (h[g:] * w).sum(0) / max(w.sum(), 1.0)
    return np.concatenate([h[:g].mean(0), mean])

  def embed(self, signal: np.ndarray, sampling_rate: float, leads: Sequence[str] = STANDARD_LEADS,
            mode: str = "rpeak", r_peaks: np.ndarray | None = None) -> np.ndarray:
    """Embedding [2D] float32 of one record [leads, samples] in mV (mean over its windows)."""
    wins, present = self.windows(signal, sampling_rate, leads, mode, r_peaks)
    return np.mean([self.encode_window(w, present) for w in wins], axis=0).astype(np.float32)


def load(export_dir: str) -> NumpyEncoder:
  path = os.path.join(export_dir, CONFIG_FILE)
  with open(path) as f:
    config = json.load(f)
  return NumpyEncoder(config, load_params(export_dir), source=export_dir)


def main(argv: Sequence[str]) -> None:
  """``python numpy_encoder.py EXPORT_DIR``: loads the export and embeds a test sine."""
  enc = load(argv[1])
  fs = enc.sampling_rate
  t = np.arange(enc.source_length(fs)) / fs
  sig = np.stack([np.sin(2 * np.pi * (1 + i / 12) * t) for i in range(len(enc.leads))])
  emb = enc.embed(sig, fs, enc.leads, mode="first")
  print(f"{argv[1]}: {len(enc.p)} tensors, {len(enc.leads)} leads @ {fs:g} Hz, window "
        f"{enc.window_samples} samples, embedding {emb.shape} (norm {np.linalg.norm(emb):.4f})")


if __name__ == "__main__":
  main(sys.argv)
