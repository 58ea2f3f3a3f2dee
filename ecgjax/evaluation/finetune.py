"""Fine-tune job: encoder + linear head trained end to end, layer-wise lr decay, early stop.

  python main.py --config=configs/finetune.py --config.pretrained=RUN_OR_EXPORT_DIR \
      --config.data.path=SHARDS_DIR --workdir=DIR

The encoder is fed exactly what it was pretrained on (rate, leads, window, normalisation
from its run/export config); training windows are random R-peak-aligned crops with time
stretch, val/test windows the deterministic eval crop. Every ``eval_every`` steps the val
macro AUROC decides the best state; ``patience`` evaluations without improvement stop the
run. Test metrics (macro AUROC, macro F1 at val-chosen per-class thresholds, per-class
AUROC, bootstrap CIs) use the probe's metric code, so probe and fine-tune rows compare.
"""
from __future__ import annotations

import datetime
import functools
import logging
import re
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from ecgjax import sharding
from ecgjax import storage
from ecgjax.data import pipeline
from ecgjax.data import spec as spec_lib
from ecgjax.data import windows
from ecgjax.evaluation import embeddings as probe_data
from ecgjax.evaluation import metrics as probe_metrics
from ecgjax.evaluation import report as probe_report
from ecgjax.inference import encoder as encoder_lib
from ecgjax.inference import export
from ecgjax.models import signal_transformer as st


class Classifier(nnx.Module):
  """The pretrained encoder's ``embed`` feature followed by a linear head."""

  def __init__(self, encoder: st.SignalTransformer, num_classes: int, *, rngs: nnx.Rngs):
    self.encoder = encoder
    self.head = nnx.Linear(2 * int(encoder.cfg.width), num_classes, rngs=rngs)

  def __call__(self, x: jax.Array, lead_mask: jax.Array) -> jax.Array:
    return self.head(self.encoder.embed(x, lead_mask))


def layer_label(path: tuple, depth: int) -> str:
  """Optimizer group of a parameter: 'head', 'top', 'block<i>', 'embed' or 'frozen'."""
  name = export.param_name(path)
  if name.startswith("head/"):
    return "head"
  if re.match(r"encoder/(decoder_|mask_token|proj_)", name):
    return "frozen"  # MAE decoder and projection head: not part of the embedding.
  m = re.match(r"encoder/blocks/(\d+)/", name)
  if m:
    return f"block{int(m.group(1))}"
  if name.startswith("encoder/encoder_norm"):
    return "top"
  return "embed"  # patch/lead/position embeddings, global tokens.


def make_optimizer(cfg, depth: int) -> optax.GradientTransformation:
  """AdamW per group with lr x decay^(distance from the head): layer-wise lr decay."""
  sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup_steps,
                                             max(cfg.total_steps, cfg.warmup_steps + 1))
  scales = {"head": 1.0, "top": 1.0, "embed": cfg.layer_decay ** (depth + 1)}
  scales.update({f"block{i}": cfg.layer_decay ** (depth - i) for i in range(depth)})
  transforms = {k: optax.adamw(lambda s, f=f: sched(s) * f, weight_decay=cfg.weight_decay)
                for k, f in scales.items()}
  transforms["frozen"] = optax.set_to_zero()

  def labels(params):
    return jax.tree_util.tree_map_with_path(lambda p, _: layer_label(p, depth), params)

  return optax.chain(optax.clip_by_global_norm(1.0), optax.multi_transform(transforms, labels))


def _data_config(enc: encoder_lib.Encoder, cfg) -> ml_collections.ConfigDict:
  w = enc.window
  return ml_collections.ConfigDict({
      "path": cfg.data.path, "train_split": cfg.splits.train, "leads": list(w.leads),
      "sampling_rate": w.sampling_rate, "window_s": w.window_samples / w.sampling_rate,
      "pre_r_s": w.pre_r_s, "stretch": tuple(cfg.data.stretch), "normalize": w.normalize,
      "num_workers": int(cfg.data.num_workers), "read_threads": int(cfg.data.read_threads),
      "prefetch": 64, "skip_corrupt": bool(cfg.data.skip_corrupt)})


def _loss(logits: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
  if multilabel:
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean()
  return optax.softmax_cross_entropy(logits, labels).mean()


def _probs(logits: jax.Array, multilabel: bool) -> jax.Array:
  return jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)


def predict(graphdef, state, data_cfg, split: str, batch_size: int, multilabel: bool,
            mesh) -> tuple[np.ndarray, np.ndarray]:
  """(labels [N, C], probabilities [N, C]) over one split in eval mode."""
  ds, _ = pipeline.make_eval_dataset(data_cfg, split, batch_size)

  @jax.jit
  def fn(state, x, m):
    return _probs(nnx.merge(graphdef, state)(x, m), multilabel)

  ys, ps = [], []
  for b in ds:
    n = b["view1"].shape[0]
    pad = (-n) % sharding.data_parallel_size(mesh)
    x = np.pad(b["view1"], ((0, pad), (0, 0), (0, 0)))
    m = np.pad(b["lead_mask"], ((0, pad), (0, 0)), constant_values=True)
    p = fn(state, jax.device_put(x, sharding.batch_sharding(mesh, 3)),
           jax.device_put(m, sharding.batch_sharding(mesh, 2)))
    ps.append(np.asarray(jax.device_get(p))[:n])
    ys.append(b["label"])
  return np.concatenate(ys), np.concatenate(ps)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  if not workdir:
    raise ValueError("--workdir is required for the fine-tune job")
  if not config.pretrained:
    raise ValueError("config.pretrained: a training workdir, an export dir, or 'random' "
                     "(with config.random_like)")
  storage.makedirs(workdir)
  start = time.time()
  spec = spec_lib.load(config.data.path)
  labels = list(spec["label_names"])
  multilabel = spec["label_encoding"] == "multi_hot"
  for role in ("train", "val", "test"):
    name = config.splits[role]
    if name not in spec["splits"]:
      raise ValueError(f"config.splits.{role}={name!r}: {config.data.path} has splits "
                       f"{sorted(spec['splits'])}; fine-tuning needs train, val and test")
  shared = probe_data.shared_groups({role: probe_data.split_groups(
      config.data.path, config.splits[role], bool(config.data.skip_corrupt))
                                     for role in ("train", "val", "test")})
  if any(shared.values()):
    logging.warning("patients in two fine-tune splits of %s: %s (convert with a patient-wise "
                    "split; see README 'Splits that cannot leak')", config.data.path, shared)
  enc = encoder_lib.load(config.pretrained, config.random_like, seed=int(config.seed))
  depth = int(enc.model.cfg.depth)
  model = Classifier(enc.model, len(labels), rngs=nnx.Rngs(config.seed))
  tx = make_optimizer(config.optim, depth)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1}))
  graphdef, state = nnx.split((model, optimizer))
  state = jax.device_put(state, sharding.replicated(mesh))
  model_graphdef = nnx.graphdef(model)
  data_cfg = _data_config(enc, config)
  window = pipeline.WindowConfig.from_config(data_cfg, spec)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step_fn(state, segments, y):
    model, optimizer = nnx.merge(graphdef, state)
    x, m = windows.views(segments, window)["view1"], segments["lead_mask"]
    loss, grads = nnx.value_and_grad(lambda mdl: _loss(mdl(x, m), y, multilabel))(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), loss

  it = iter(pipeline.make_train_dataset(data_cfg, int(config.batch_size), int(config.seed)))
  best = {"auroc": -np.inf, "step": 0, "params": None}
  history, evals_without_gain, losses = [], 0, []
  for step in range(1, int(config.optim.total_steps) + 1):
    b = next(it)
    segments = {k: v for k, v in b.items()
                if k in ("seg1", "ratio1", "valid1", "scale", "lead_mask")}
    state, loss = step_fn(state, sharding.global_batch_from_local(segments, mesh),
                          jax.device_put(b["label"], sharding.batch_sharding(mesh, 2)))
    losses.append(loss)
    if step % int(config.eval_every) == 0 or step == int(config.optim.total_steps):
      model_state = nnx.state(nnx.merge(graphdef, state)[0])
      yv, pv = predict(model_graphdef, model_state, data_cfg, config.splits.val,
                       int(config.batch_size), multilabel, mesh)
      auc = probe_metrics.evaluate(yv, pv, np.full(len(labels), 0.5), labels)["macro_auroc"]
      auc = -np.inf if auc is None else auc
      train_loss = float(np.mean(jax.device_get(losses)))
      losses = []
      history.append({"step": step, "train_loss": train_loss, "val_macro_auroc": auc})
      logging.info("finetune step %d | loss %.4f | val macro AUROC %.4f", step, train_loss, auc)
      if auc > best["auroc"]:
        best = {"auroc": auc, "step": step, "params": jax.device_get(model_state)}
        evals_without_gain = 0
      else:
        evals_without_gain += 1
        if evals_without_gain >= int(config.patience):
          logging.info("early stop at step %d (best val AUROC %.4f at step %d)", step,
                       best["auroc"], best["step"])
          break
  best_state = jax.device_put(best["params"], sharding.replicated(mesh))
  yv, pv = predict(model_graphdef, best_state, data_cfg, config.splits.val,
                   int(config.batch_size), multilabel, mesh)
  yt, pt = predict(model_graphdef, best_state, data_cfg, config.splits.test,
                   int(config.batch_size), multilabel, mesh)
  thresholds = np.asarray([probe_metrics.best_f1_threshold(yv[:, c], pv[:, c])[0]
                           for c in range(len(labels))])
  thresholds = np.where(np.isfinite(thresholds), thresholds, 0.5)
  test = probe_metrics.evaluate(yt, pt, thresholds, labels)
  included = [labels.index(n) for n in test["included_classes"]]
  ci = probe_metrics.bootstrap(yt, pt, thresholds, included, int(config.bootstrap),
                               int(config.seed))
  test["macro_auroc_ci"], test["macro_f1_ci"] = ci["macro_auroc_ci"], ci["macro_f1_ci"]
  results = {
      "job": "finetune",
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "encoder": {"kind": enc.kind, "source": enc.meta.get("source"), "step": enc.meta.get("step"),
                  "model_size": enc.meta.get("model_size")},
      "task": {"data_path": storage.abspath(config.data.path), "label_names": labels,
               "label_encoding": spec["label_encoding"], "num_classes": len(labels)},
      "splits": {"patients_shared_between_splits": shared,
                 "grouping": "patient_id from the shards, else record_id"},
      "optim": config.optim.to_dict(), "best_step": best["step"], "history": history,
      "results": [{"label_fraction": 1.0, "num_train": int(spec["splits"][config.splits.train]),
                   "val": {"macro_auroc": probe_metrics.clean(best["auroc"])}, "test": test}],
      "timing_s": round(time.time() - start, 1),
  }
  if jax.process_index() == 0:
    probe_report.write(workdir, results, {"fraction": 1.0, "y": yt, "p": pt},
                       plots=bool(config.plots))
    print(f"fine-tune {enc.kind} encoder: best val macro AUROC {best['auroc']:.3f} at step "
          f"{best['step']}; test macro AUROC {test['macro_auroc']:.3f} {ci['macro_auroc_ci']}, "
          f"macro F1 {test['macro_f1']:.3f}", flush=True)
  return results
