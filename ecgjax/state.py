"""Model and optimizer construction, shared by training and export.

  graphdef, state, shardings, schedule = create_state(config, mesh)

Export and the evaluation jobs rebuild a run's model from its config with these
functions, so they never import the training loop.
"""
from __future__ import annotations

import jax
import ml_collections
import optax
from flax import nnx

from ecgjax import config as config_lib
from ecgjax import sharding
from ecgjax.models import signal_transformer as st


def model_config(config) -> ml_collections.ConfigDict:
  """The size preset with the config's overrides and the data-derived patch geometry."""
  overrides = dict(config.model)
  overrides.update(num_leads=len(config.data.leads),
                   patch_size=config_lib.patch_size(config),
                   max_patches=config_lib.num_patches(config))
  return st.model_config(config.model_size, **overrides)


def make_optimizer(o, total_steps: int) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.lr, int(o.warmup_steps), max(int(total_steps), int(o.warmup_steps) + 1),
      end_value=o.lr * o.min_lr_ratio)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  tx = optax.chain(
      optax.clip_by_global_norm(o.clip_norm),
      optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask))
  # Skips (and counts) updates whose gradients are not finite; the loop stops the run
  # after max_bad_steps in a row. Its counters live in the optimizer state (checkpointed)
  # and come back from the step as metrics (see _nonfinite_metrics).
  return optax.apply_if_finite(tx, max_consecutive_errors=2**30), schedule


def create_state(config, mesh):
  """(graphdef, sharded state, state shardings, schedule) for model + optimizer."""
  mcfg = model_config(config)
  tx, schedule = make_optimizer(config.optim, config.total_steps)

  def init():
    model = st.SignalTransformer(mcfg, rngs=nnx.Rngs(config.seed))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)

  rules = sharding.rules_from_config(config.sharding_rules)
  with nnx.use_eager_sharding(False), nnx.logical_axis_rules(rules):
    graphdef, abstract_state = nnx.split(nnx.eval_shape(init))
    shardings = sharding.state_shardings(abstract_state, mesh, rules)
    state = jax.jit(lambda: nnx.split(init())[1], out_shardings=shardings)()
  return graphdef, state, shardings, schedule
