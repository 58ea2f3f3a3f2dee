"""Pretraining loop: one AOT-compiled, sharded, pure train step; Orbax resume; metrics.

  train_and_evaluate(config, workdir)

State is the nnx state of (model, optimizer), initialised directly sharded with
``jax.jit(init, out_shardings=...)``. The step is a pure function of
(state, batch, step); its PRNG key is fold_in(seed, step), so a resumed run repeats
exactly what an uninterrupted one would have done.
"""
from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from ecgjax import checkpoint as ckpt_lib
from ecgjax import config as config_lib
from ecgjax import config_validation
from ecgjax import demo_data
from ecgjax import input as input_lib
from ecgjax import metrics as metrics_lib
from ecgjax import preemption
from ecgjax import sharding
from ecgjax import state as state_lib
from ecgjax import storage
from ecgjax import validation
from ecgjax.data import augment
from ecgjax.data import mixture
from ecgjax.data import pipeline
from ecgjax.data import source as source_lib
from ecgjax.data import spec as spec_lib
from ecgjax.data import windows
from ecgjax.models import signal_transformer as st
from ecgjax.objectives import hybrid

# Dense bf16 peak FLOP/s per device, for MFU. Unknown devices (CPU) report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6": 918e12}


class NonFiniteError(FloatingPointError):
  pass


def _augment_cfg(config) -> ml_collections.ConfigDict:
  a = ml_collections.ConfigDict(config.augment.to_dict())
  a.sampling_rate = config.data.sampling_rate
  return a


def window_config(config) -> pipeline.WindowConfig:
  """The train windows: config.data plus the shards' spec (rates, dtype, lead stats; a
  mixture's specs merged)."""
  paths = [s.path for s in mixture.parse_sources(config.data)]
  have = paths and all(spec_lib.exists(p) for p in paths)
  return pipeline.WindowConfig.from_config(config.data,
                                           mixture.train_spec(config.data) if have else None)


def loss_and_grads(model, views: dict[str, jax.Array], key: jax.Array, config):
  """((loss, metrics), grads) of the objective; with grad_accum A > 1, the mean over A
  consecutive micro-batches (keys ``split(key, A)``), run one after another by a scan.

  Differentiates a pure function of the params (split once, merged inside), so the scan
  body never touches nnx objects from the enclosing trace.
  """
  accum = int(config.optim.grad_accum)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_on(p, v, k):
    return hybrid.loss_fn(nnx.merge(graphdef, p, rest), v, k, config.loss)

  grad_fn = jax.value_and_grad(loss_on, has_aux=True)
  if accum == 1:
    return grad_fn(params, views, key)
  micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), views)
  keys = jax.random.split(key, accum)

  def body(carry, xs):
    g_sum, l_sum, a_sum = carry
    (l, a), g = grad_fn(params, xs[0], xs[1])
    return (jax.tree.map(jnp.add, g_sum, g), l_sum + l,
            jax.tree.map(jnp.add, a_sum, a)), None

  zeros_g = jax.tree.map(jnp.zeros_like, params)
  (_, aux0), _ = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro), keys[0])
  zeros_a = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux0)
  (grads, loss, aux), _ = jax.lax.scan(body, (zeros_g, 0.0, zeros_a), (micro, keys))
  grads = jax.tree.map(lambda g: g / accum, grads)
  return (loss / accum, jax.tree.map(lambda a: a / accum, aux)), grads


def train_step(graphdef, state, batch: dict[str, jax.Array], step: jax.Array, *, config,
               window: pipeline.WindowConfig):
  """One update. Pure: (state, segment batch, step) -> (state, metrics)."""
  model, optimizer = nnx.merge(graphdef, state)
  key = jax.random.fold_in(jax.random.key(config.seed), step)
  k_aug1, k_aug2, k_loss = jax.random.split(key, 3)
  aug_cfg = _augment_cfg(config)
  v = windows.views(batch, window)
  x1, m1 = augment.augment_view(k_aug1, v["view1"], batch["lead_mask"], aug_cfg)
  x2, m2 = augment.augment_view(k_aug2, v["view2"], batch["lead_mask"], aug_cfg)
  views = {"view1": x1, "view2": x2, "mask1": m1, "mask2": m2}
  if config.loss.get("target", "input") == "clean":  # MAE targets before augmentation.
    views.update(target1=v["view1"], target2=v["view2"])
  (loss, aux), grads = loss_and_grads(model, views, k_loss, config)
  grad_norm = optax.global_norm(grads)
  optimizer.update(model, grads)
  metrics = dict(aux)
  metrics.update(loss=loss, grad_norm=grad_norm, **_nonfinite_metrics(optimizer))
  return nnx.state((model, optimizer)), metrics


def _nonfinite_metrics(optimizer: nnx.Optimizer) -> dict[str, jax.Array]:
  """apply_if_finite's counters after this update, found by type rather than state paths.

  bad_step: this update was skipped; bad_streak: skipped in a row (what max_bad_steps
  limits); bad_steps_total: skipped since step 0 (checkpointed, so it survives resumes).
  """
  s = optimizer.opt_state
  if not isinstance(s, optax.ApplyIfFiniteState):
    raise TypeError("the optimizer must be wrapped in optax.apply_if_finite; its state is "
                    f"{type(s).__name__}")
  streak = jnp.asarray(s.notfinite_count[...])
  return {"bad_step": (streak > 0).astype(jnp.float32), "bad_streak": streak.astype(jnp.float32),
          "bad_steps_total": jnp.asarray(s.total_notfinite[...]).astype(jnp.float32)}


# How each metric is reduced over a logging window (default: mean).
_WINDOW_MAX = ("bad_streak",)
_WINDOW_LAST = ("bad_steps_total",)


def _accumulate(sums: dict[str, jax.Array] | None, m: dict[str, jax.Array]) -> dict[str, jax.Array]:
  if sums is None:
    return dict(m)
  out = {}
  for k, v in m.items():
    out[k] = jnp.maximum(sums[k], v) if k in _WINDOW_MAX else v if k in _WINDOW_LAST else sums[k] + v
  return out


def _peak_flops() -> float | None:
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_FLOPS.items():
    if name.lower() in kind.lower():
      return peak
  return None


def compile_step(config, graphdef, state, shardings, mesh,
                 window: pipeline.WindowConfig | None = None):
  """AOT-compiles the step for the batch shapes; logs compile time and memory analysis."""
  window = window or window_config(config)
  batch_abs = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding.batch_sharding(mesh, len(shape)))
               for k, (shape, dtype) in window.batch_struct(config.global_batch).items()}
  step_fn = jax.jit(functools.partial(train_step, graphdef, config=config, window=window),
                    in_shardings=(shardings, None, sharding.replicated(mesh)),
                    out_shardings=(shardings, sharding.replicated(mesh)),
                    donate_argnums=(0,))
  metrics_lib.log("compiling the train step…")
  start = time.time()
  state_abs = ckpt_lib.abstract_with_shardings(state, shardings)
  compiled = step_fn.lower(state_abs, batch_abs,
                           jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))).compile()
  metrics_lib.log("compiled train step in %.1fs", time.time() - start)
  try:
    mem = compiled.memory_analysis()
    if mem is not None:
      metrics_lib.log("step memory per device: args %.1f MiB, temps %.1f MiB, outputs %.1f MiB",
                      mem.argument_size_in_bytes / 2**20, mem.temp_size_in_bytes / 2**20,
                      mem.output_size_in_bytes / 2**20)
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    pass
  return compiled, batch_abs


def flops_per_step(config) -> float:
  mcfg = state_lib.model_config(config)
  total = len(config.data.leads) * mcfg.max_patches
  visible = max(1, int(round((1 - config.loss.mask_ratio) * total)))
  per_view = st.flops_per_sample(mcfg, visible, total, with_decoder=config.loss.mae_weight > 0)
  return 2 * per_view * config.global_batch


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (resuming from workdir if possible); returns the final metrics.

  ``result["preempted"]``: a SIGTERM stopped the job (after saving); callers skip any
  end-of-run work.
  """
  preemption.install()  # before anything slow: notices arrive during startup too.
  config_validation.validate(config)
  ckpt_lib.check_workdir(workdir)
  demo_data.resolve_data_path(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  metrics_lib.log("mesh %s over %d devices (%s), %d processes", dict(mesh.shape),
                  jax.device_count(), jax.devices()[0].device_kind, jax.process_count())
  if jax.process_index() == 0:
    storage.write_text(storage.join(workdir, "config.json"), config.to_json_best_effort(indent=1))

  graphdef, state, shardings, schedule = state_lib.create_state(config, mesh)
  params = nnx.state(nnx.merge(graphdef, state)[0], nnx.Param)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  # Room for one more (uncompressed) checkpoint, checked before anything compiles.
  ckpt_lib.check_free_space(workdir, sum(x.nbytes for x in jax.tree.leaves(state)) + (16 << 20))
  # No global jax.set_mesh: every array and the step carry explicit NamedShardings, and a
  # process-wide mesh would leak into callers (probe/fine-tune jobs in the same process).
  metrics_lib.log("model %s: %.2fM params", config.model_size, n_params / 1e6)

  local_batch = config.global_batch // jax.process_count()
  host_iter = iter(pipeline.make_train_dataset(
      config.data, local_batch, config.seed, jax.process_index(), jax.process_count()))
  window = window_config(config)
  train_keys = tuple(window.batch_struct(1))
  data_iter = input_lib.DevicePrefetcher(host_iter, mesh, config.data.device_prefetch,
                                         train_keys)

  manager = ckpt_lib.make_manager(storage.join(workdir, "checkpoints"), config)
  step = start_step = 0
  last, preempted, writer = {}, False, None
  t_final = None  # when the last checkpoint save began (logged with its duration).
  preempt = preemption.Watcher()
  try:  # SIGTERM: restore and compile are abandoned; a step in flight ends, then is saved.
    restored = preemption.interruptible(lambda: ckpt_lib.restore(
        manager, ckpt_lib.abstract_with_shardings(state, shardings), data_iter,
        quarantine=True), "restore")
    if restored is not None:
      start_step, state, iter_restored = restored
      step = start_step
      metrics_lib.log("resumed from step %d in %s", start_step, manager.directory)
      if not iter_restored:
        # Grain iterator states are per process: with another process count the input
        # order restarts, re-seeded with (seed, step) so it does not replay epoch 1.
        data_iter.close()
        data_iter = input_lib.DevicePrefetcher(iter(pipeline.make_train_dataset(
            config.data, local_batch, config.seed + start_step, jax.process_index(),
            jax.process_count())), mesh, config.data.device_prefetch, train_keys)
    compiled, _ = preemption.interruptible(
        lambda: compile_step(config, graphdef, state, shardings, mesh, window), "compile")
    writer = metrics_lib.MetricWriter(workdir)
    flops = flops_per_step(config)
    peak = _peak_flops()
    plotter = _make_plotter(config, workdir, graphdef, mesh, writer)
    validator = validation.make_validator(config, workdir, graphdef, shardings, mesh, window)

    sums, n_summed = None, 0
    t_log, step_log = time.time(), step
    with preempt:
      while step < config.total_steps:
        batch = next(data_iter)
        state, m = compiled(state, batch, jnp.asarray(step, jnp.int32))
        step += 1
        sums = _accumulate(sums, m)
        n_summed += 1
        if step % config.log_every == 0 or step == config.total_steps:
          host = {k: float(v) if k in _WINDOW_MAX + _WINDOW_LAST else float(v) / n_summed
                  for k, v in jax.device_get(sums).items()}
          host["bad_steps"] = host.pop("bad_step") * n_summed
          if config.data.get("skip_corrupt", False):
            host["skipped_records"] = float(source_lib.skipped_records())
          sums, n_summed = None, 0
          dt = (time.time() - t_log) / max(step - step_log, 1)
          t_log, step_log = time.time(), step
          host.update(lr=float(schedule(step)), step_time_s=dt,
                      samples_per_s=config.global_batch / dt)
          if peak:
            host["mfu"] = flops / dt / (peak * jax.device_count())
          writer.scalars(step, host)
          metrics_lib.log(metrics_lib.progress_line(step, config.total_steps, host,
                                                     dt * (config.total_steps - step)))
          last = host
          if host["bad_streak"] >= config.max_bad_steps:
            # Skipped updates leave the params as they were: this saves the last good state.
            ckpt_lib.save(manager, step, state, data_iter, force=True)
            manager.wait_until_finished()
            raise NonFiniteError(
                f"{int(host['bad_streak'])} consecutive steps with non-finite loss/gradients by "
                f"step {step} (config.max_bad_steps={config.max_bad_steps}); their updates were "
                f"skipped and the last good state is saved in {ckpt_lib.step_dir(manager, step)}")
        if plotter and (step % config.plot_every == 0 or step == config.total_steps):
          plotter(step, state)
        if validator.due(step):
          last.update(validator(step, state, writer))
        save_now = step % config.checkpoint_every == 0 or step == config.total_steps
        stop = preempt.should_stop(step, config.log_every)
        if save_now or stop:
          if step == config.total_steps or stop:
            t_final = time.time()
            metrics_lib.log("saving the final checkpoint (step %d)…", step)
          loss = float(last.get("loss", np.inf))  # a NaN would confuse the best-N policy.
          ckpt_lib.save(manager, step, state, data_iter,
                        metrics={"loss": loss if np.isfinite(loss) else np.inf}, force=True)
        if stop:
          metrics_lib.log("SIGTERM: saved step %d, exiting", step)
          preempted = True
          break
    if not preempted:
      validator.plot()
  except preemption.Preempted as e:
    # Before the first step: the newest checkpoint (if any) already holds everything.
    metrics_lib.log("%s: stopping; nothing new to save", e)
    preempted = True
  finally:
    manager.wait_until_finished()
    if t_final is not None:
      metrics_lib.log("final checkpoint saved in %.1fs", time.time() - t_final)
    manager.close()
    data_iter.close()
    if writer is not None:
      writer.close()
  return {"step": step, "preempted": preempted, **last}


def _make_plotter(config, workdir, graphdef, mesh, writer):
  """Every plot_every steps: original vs reconstructed leads for a fixed validation batch."""
  if config.loss.mae_weight <= 0:
    return None
  from ecgjax import plots  # pylint: disable=g-import-not-at-top
  split = config.data.eval_split
  data_mv = ml_collections.ConfigDict(config.data.to_dict())
  data_mv.normalize = "none"  # the same windows in mV, for the figure's amplitude scale.
  try:
    ds, _ = pipeline.make_eval_dataset(data_mv, split, batch_size=4)
  except ValueError:
    ds, _ = pipeline.make_eval_dataset(data_mv, config.data.train_split, batch_size=4)
  batch = ds[0]
  mask = jnp.asarray(batch["lead_mask"])
  x = windows.normalize(jnp.asarray(batch["view1"]), mask, config.data.normalize,
                        window_config(config).lead_stats)

  @jax.jit
  def recon(state):
    model, _ = nnx.merge(graphdef, state)
    return hybrid.reconstruct(model, x, mask, jax.random.key(config.seed + 1), config.loss)

  def plot(step, state):
    pred, masked = jax.device_get(recon(state))
    if jax.process_index() == 0:
      path = storage.join(workdir, "plots", f"recon_{step:07d}.png")
      x_mv = np.asarray(batch["view1"][0])
      pred_mv = plots.to_units(np.asarray(pred[0]), np.asarray(x[0]), x_mv)
      plots.reconstruction(path, x_mv, pred_mv, np.asarray(masked[0]), list(config.data.leads),
                           config_lib.patch_size(config), config.data.sampling_rate, step)
      writer.image(step, "reconstruction", path)
  return plot
