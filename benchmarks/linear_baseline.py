"""Cross-lead linear baseline for the MAE term: what one instant of the other leads predicts.

Each masked sample of lead l at time t is predicted from the leads visible at the same
instant, as the conditional mean of a zero-mean Gaussian with the L x L lead covariance C
fitted on train records: x_l = C[l, V] C[V, V]^-1 x_V (0 when no lead is visible). Each
predicted patch is normalised by its own mean/std (a shape, like the model's output) and
scored like ``val_mae`` (MSE against the per-patch normalised target, floor
``mae.REFERENCE_EPS``) on exactly the validator's windows and masks
(``ecgjax.validation``), so its number sits beside a run's ``val_mae``.

  cov = fit_covariance(config, window, space="model")
  score(config, window, cov, space="model")   # -> {'mae', 'num_tokens', ...}

``space``: 'model' fits and predicts the windows the model sees (``data.normalize``);
'mV' the same windows before normalisation. The metric normalises every patch by its own
target mean/std, so both are scored on the same scale; 'mV' keeps the fixed between-lead
relations (III = II - I) that per-lead z-scoring breaks.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ecgjax import validation
from ecgjax.data import windows
from ecgjax.objectives import mae
from ecgjax.objectives import masking

SPACES = ("model", "mV")


def _views(batch: dict[str, np.ndarray], window, space: str) -> np.ndarray:
  """[B, L, T] view 1 of a segment batch in ``space``."""
  if space not in SPACES:
    raise ValueError(f"space={space!r}; choose from {SPACES}")
  if space == "mV":
    window = dataclasses.replace(window, normalize="none")
  return np.asarray(windows.on_host(batch, window)["view1"], np.float64)


def fit_covariance(config, window, num_batches: int = 24, space: str = "model") -> np.ndarray:
  """Second-moment matrix [L, L] over present-lead pairs of train-split windows."""
  batches = validation.eval_batches(config, window, num_batches, split=config.data.train_split)
  num_leads = len(window.leads)
  s = np.zeros((num_leads, num_leads))
  cnt = np.zeros((num_leads, num_leads))
  for batch in batches:
    x = _views(batch, window, space)
    m = batch["lead_mask"].astype(np.float64)
    s += np.einsum("blt,bkt->lk", x, x)
    cnt += np.einsum("bl,bk->lk", m, m) * x.shape[-1]
  return s / np.maximum(cnt, 1.0)


def predict(x: np.ndarray, visible: np.ndarray, present: np.ndarray, cov: np.ndarray,
            ridge: float = 1e-6) -> np.ndarray:
  """Conditional-mean prediction of every lead from the visible ones.

  Args:
    x: [L, P] one patch column (all leads, the same P instants).
    visible: [L] bool, leads whose patch is visible here; present: [L] bool.
    cov: [L, L] lead covariance.

  Returns:
    [L, P]: x for visible leads, C[l, V] C[V, V]^-1 x_V for the others (0 if V is empty).
  """
  v = np.flatnonzero(visible & present)
  out = np.zeros_like(x)
  if v.size == 0:
    return out
  cvv = cov[np.ix_(v, v)] + ridge * np.trace(cov) / len(cov) * np.eye(v.size)
  w = np.linalg.solve(cvv, cov[v, :])  # [|V|, L]
  return w.T @ x[v]


def eval_masks(config, index: int, b: int, l: int, n: int, present: np.ndarray) -> np.ndarray:
  """[B, L*n] bool: the masks ``hybrid.reconstruct`` draws for eval batch ``index``."""
  loss = config.loss
  tm = masking.multiscale_mask(
      validation.mask_key(config.seed, index), b, l, n, present, float(loss.mask_ratio),
      tuple(loss.span_scales), float(loss.whole_lead_prob))
  return np.asarray(tm.masked)


def score(config, window, cov: np.ndarray, space: str = "model",
          num_batches: int | None = None) -> dict[str, float]:
  """The linear predictor's normalised MSE on the validator's batches and masks."""
  num_batches = int(num_batches or config.get("eval_batches", 4))
  batches = validation.eval_batches(config, window, num_batches)
  patch = int(round(config.patch_ms * window.sampling_rate / 1000.0))
  per_batch, tokens = [], 0
  for i, batch in enumerate(batches):
    x = _views(batch, window, space)
    b, l, t = x.shape
    n = t // patch
    present = np.asarray(batch["lead_mask"], bool)
    masked = eval_masks(config, i, b, l, n, present).reshape(b, l, n)
    patches = x.reshape(b, l, n, patch)
    pred = np.zeros_like(patches)
    for s in range(b):
      for p in range(n):
        pred[s, :, p] = predict(patches[s, :, p], ~masked[s, :, p], present[s], cov)
    valid = np.repeat(present, n, axis=1)
    # The prediction is a shape, like the model's output: normalised by its own patch
    # stats (normalising it by the target's would blow up on near-flat target patches).
    mean, std = mae.patch_stats(pred.reshape(b, l * n, patch))
    pred_norm = (pred.reshape(b, l * n, patch) - np.asarray(mean)) / np.asarray(std)
    per_batch.append(float(mae.mae_loss(pred_norm, patches.reshape(b, l * n, patch),
                                        masked.reshape(b, l * n), valid)))
    tokens += int((masked.reshape(b, l * n) & valid).sum())
  return {"mae": float(np.mean(per_batch)), "num_tokens": tokens, "space": space,
          "num_batches": num_batches}


def run(config, window) -> dict[str, dict[str, float]]:
  """Both spaces, each fitted on the train split and scored on the eval split."""
  return {space: score(config, window, fit_covariance(config, window, space=space), space)
          for space in SPACES}

