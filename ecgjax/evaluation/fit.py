"""Linear probe on frozen features, fitted in JAX: full-batch L-BFGS, one fit per L2 value.

Multi-label tasks get one logistic regression per class (sigmoid cross-entropy summed over
classes); single-label tasks a softmax regression. The loss is the weighted mean over
records plus ``l2/2 * |W|^2`` (the bias is not penalised). Records enter through 0/1
weights, so every label fraction of a task has the same array shapes and the L2 grid (one
scan, strongest L2 first, warm-started) compiles once per feature shape. Full batch,
fixed order, float32 matmuls at highest precision: the fit is deterministic.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Fit:
  """Weights for every L2 value of the grid: w [G, D, C], b [G, C]."""

  w: np.ndarray
  b: np.ndarray
  l2: np.ndarray
  iterations: np.ndarray  # [G] L-BFGS iterations run.
  grad_norm: np.ndarray   # [G] final gradient norm (convergence check).


def standardizer(x: np.ndarray, idx: np.ndarray, eps: float = 1e-6):
  """(mean, std) of the records ``idx`` of x [N, D]: the probe sees only its train set."""
  sub = np.asarray(x[idx], np.float64)
  return sub.mean(0).astype(np.float32), (sub.std(0) + eps).astype(np.float32)


def _logits(params, x):
  return jnp.dot(x, params["w"], precision=_HIGHEST) + params["b"]


def _loss(params, x, y, weights, l2, multilabel: bool):
  logits = _logits(params, x)
  if multilabel:
    per_record = optax.sigmoid_binary_cross_entropy(logits, y).sum(-1)
  else:
    per_record = optax.softmax_cross_entropy(logits, y)
  data = jnp.sum(per_record * weights) / jnp.maximum(jnp.sum(weights), 1.0)
  return data + 0.5 * l2 * jnp.sum(jnp.square(params["w"]))


@functools.partial(jax.jit, static_argnames=("multilabel", "max_iter"))
def _fit_grid(x, y, weights, l2_grid, *, multilabel: bool, max_iter: int, tol: float):
  """Fits the grid in the given order, each fit warm-started from the previous one.

  A scan, not a vmap: vmapped L-BFGS runs every grid value in lock step through the line
  search's nested loops, ~20x slower on CPU than one after the other.
  """
  d, c = x.shape[1], y.shape[1]
  opt = optax.lbfgs()

  def fit_one(params, l2):
    fun = functools.partial(_loss, x=x, y=y, weights=weights, l2=l2, multilabel=multilabel)
    value_and_grad = optax.value_and_grad_from_state(fun)

    def step(carry):
      params, state, i = carry
      value, grad = value_and_grad(params, state=state)
      updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=fun)
      return optax.apply_updates(params, updates), state, i + 1

    def keep_going(carry):
      _, state, i = carry
      grad = optax.tree.get(state, "grad")
      return (i == 0) | ((i < max_iter) & (optax.tree.norm(grad) > tol))

    params, _, iters = jax.lax.while_loop(
        keep_going, step, (params, opt.init(params), jnp.asarray(0, jnp.int32)))
    return params, (params, iters, optax.tree.norm(jax.grad(fun)(params)))

  init = {"w": jnp.zeros((d, c), jnp.float32), "b": jnp.zeros((c,), jnp.float32)}
  _, out = jax.lax.scan(fit_one, init, l2_grid)
  return out


def fit(x: np.ndarray, y: np.ndarray, weights: np.ndarray, l2_grid: Sequence[float],
        multilabel: bool, max_iter: int = 500, tol: float = 1e-5) -> Fit:
  """Fits the probe for every value of ``l2_grid`` on standardised features x [N, D].

  Args:
    x: [N, D] float32 features (already standardised).
    y: [N, C] 0/1 targets (one-hot for single-label tasks).
    weights: [N] 0/1 (or any non-negative) record weights; 0 = not in the train set.
    l2_grid: L2 strengths, fitted in parallel.
    multilabel: sigmoid per class (True) or softmax over classes (False).
  """
  l2 = np.asarray(l2_grid, np.float64)
  order = np.argsort(-l2, kind="stable")  # strongest first: a smooth warm-start path.
  params, iters, gnorm = _fit_grid(
      jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
      jnp.asarray(weights, jnp.float32), jnp.asarray(l2[order], jnp.float32),
      multilabel=bool(multilabel), max_iter=int(max_iter), tol=float(tol))
  params, iters, gnorm = jax.device_get((params, iters, gnorm))
  back = np.argsort(order)
  return Fit(w=np.asarray(params["w"])[back], b=np.asarray(params["b"])[back], l2=l2,
             iterations=np.asarray(iters)[back], grad_norm=np.asarray(gnorm)[back])


def predict(x: np.ndarray, w: np.ndarray, b: np.ndarray, multilabel: bool) -> np.ndarray:
  """Probabilities [N, C] (float64) of one probe (w [D, C], b [C]) on standardised x."""
  logits = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + np.asarray(b, np.float64)
  if multilabel:
    return 1.0 / (1.0 + np.exp(-logits))
  logits -= logits.max(-1, keepdims=True)
  e = np.exp(logits)
  return e / e.sum(-1, keepdims=True)
