"""ECG augmentations that run jitted on the device, on whole batches.

Everything here is a pure JAX function of a key and a batch ``x: [B, L, T]`` of per-lead
normalised ECG (amplitudes in units of the per-lead standard deviation) with
``lead_mask: [B, L]`` (True = lead present). Shapes are static and all parameters are
drawn per batch element, so one jitted call augments a whole batch with no host work.

Absent leads are handled by masking, never by zero-filling a real lead: ``lead_dropout``
and ``random_lead_subset`` return a new mask that the model uses to hide those leads
from attention, and ``augment_view`` zeroes masked leads at the end so that no noise
leaks into them.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ecgjax.data.records import STANDARD_LEADS

# Lead configurations seen in practice: full 12-lead, limb leads only (6-lead devices),
# and the single leads of patches and smartwatches.
DEFAULT_LEAD_SUBSETS: tuple[tuple[str, ...], ...] = (
    STANDARD_LEADS,
    ("I", "II", "III", "aVR", "aVL", "aVF"),
    ("II",),
    ("I",),
)


def _uniforms(key: jax.Array, batch: int, sizes: Sequence[int]) -> list[jax.Array]:
  """Per-sample U(0, 1) blocks [batch, size] for each size, from one draw.

  Every jax.random call inlines a full Threefry hash into the program; drawing all
  per-sample parameters at once keeps the compiled augmentation small and quick to build.
  """
  u = jax.random.uniform(key, (batch, sum(sizes)), jnp.float32)
  return jnp.split(u, np.cumsum(sizes)[:-1], axis=1)


def _time_axis(x: jax.Array, sampling_rate: float) -> jax.Array:
  return jnp.arange(x.shape[-1], dtype=jnp.float32) / sampling_rate


def gaussian_noise(key: jax.Array, x: jax.Array, std: float) -> jax.Array:
  """Adds white noise whose std is drawn per sample from U(0, std)."""
  k_std, k_noise = jax.random.split(key)
  sigma = std * jax.random.uniform(k_std, (x.shape[0], 1, 1), jnp.float32)
  return x + sigma.astype(x.dtype) * jax.random.normal(k_noise, x.shape, x.dtype)


def powerline_noise(key: jax.Array, x: jax.Array, sampling_rate: float, amplitude: float,
                    freqs: Sequence[float] = (50.0, 60.0)) -> jax.Array:
  """Adds mains hum: one of ``freqs`` per sample, amplitude ~ U(0, amplitude).

  The phase differs per lead because each lead sees the interference through different
  electrode impedances.
  """
  b, l, _ = x.shape
  u_f, u_amp, u_phase = _uniforms(key, b, (1, 1, l))
  index = jnp.minimum((u_f * len(freqs)).astype(jnp.int32), len(freqs) - 1)
  freq = jnp.asarray(freqs, jnp.float32)[index][..., None]  # [B, 1, 1]
  phase = 2 * jnp.pi * u_phase[..., None]  # [B, L, 1]
  t = _time_axis(x, sampling_rate)
  hum = amplitude * u_amp[..., None] * jnp.sin(2 * jnp.pi * freq * t + phase)
  return x + hum.astype(x.dtype)


def baseline_wander(key: jax.Array, x: jax.Array, sampling_rate: float, amplitude: float,
                    max_freq: float = 0.5, num_components: int = 3) -> jax.Array:
  """Adds slow drift (respiration, electrode motion) below ``max_freq`` Hz.

  A sum of ``num_components`` sinusoids with random frequencies and phases forms one
  drift signal per sample; each lead sees it with its own gain in [-1, 1]. The convex
  component weights keep the drift within +-U(0, amplitude).
  """
  b, l, _ = x.shape
  c = num_components
  u_f, u_phase, u_w, u_amp, u_gain = _uniforms(key, b, (c, c, c, 1, l))
  freq = max_freq * u_f[..., None]  # [B, C, 1]
  phase = 2 * jnp.pi * u_phase[..., None]
  weights = 0.05 + u_w[..., None]
  weights = weights / jnp.sum(weights, axis=1, keepdims=True)
  t = _time_axis(x, sampling_rate)
  drift = jnp.sum(weights * jnp.sin(2 * jnp.pi * freq * t + phase), axis=1)  # [B, T]
  gain = amplitude * u_amp * (2 * u_gain - 1)  # [B, L]
  return x + (gain[..., None] * drift[:, None, :]).astype(x.dtype)


def amplitude_scale(key: jax.Array, x: jax.Array, low: float, high: float) -> jax.Array:
  """Multiplies each (sample, lead) by a log-uniform gain in [low, high].

  Per-lead gains mimic electrode contact and body habitus, and stop the encoder from
  relying on absolute amplitude left over after per-lead normalisation.
  """
  log_gain = jax.random.uniform(key, x.shape[:2] + (1,), jnp.float32,
                                jnp.log(low), jnp.log(high))
  return x * jnp.exp(log_gain).astype(x.dtype)


def _keep_top_ranked(keep: jax.Array, lead_mask: jax.Array, score: jax.Array,
                     min_leads: int) -> jax.Array:
  """Forces the ``min_leads`` present leads with the highest score to stay present."""
  score = jnp.where(lead_mask, score, -jnp.inf)
  rank = jnp.argsort(jnp.argsort(-score, axis=-1), axis=-1)
  return keep | (lead_mask & (rank < min_leads))


def lead_dropout(key: jax.Array, lead_mask: jax.Array, rate: float,
                 min_leads: int = 1) -> jax.Array:
  """Drops each present lead with probability ``rate``; keeps >= ``min_leads`` present.

  One uniform per lead decides both the drop (u < rate) and, when too few survive,
  which leads are restored (highest u first). Those are the survivors themselves
  whenever enough survive, so the guarantee only adds leads when it has to. A sample
  with fewer than ``min_leads`` present leads keeps all of them.
  """
  u = jax.random.uniform(key, lead_mask.shape)
  keep = lead_mask & (u >= rate)
  return _keep_top_ranked(keep, lead_mask, u, min_leads)


def lead_subset_table(subsets: Sequence[Sequence[str | int]] | np.ndarray,
                      num_leads: int = len(STANDARD_LEADS),
                      lead_names: Sequence[str] = STANDARD_LEADS) -> np.ndarray:
  """Static [S, num_leads] bool table from subsets given as lead names or indices."""
  if isinstance(subsets, np.ndarray) and subsets.dtype == bool:
    if subsets.ndim != 2 or subsets.shape[1] != num_leads:
      raise ValueError(f"subset table must be [S, {num_leads}], got {subsets.shape}")
    return subsets
  index = {name: i for i, name in enumerate(lead_names)}
  table = np.zeros((len(subsets), num_leads), bool)
  for row, subset in enumerate(subsets):
    for lead in subset:
      i = index[lead] if isinstance(lead, str) else int(lead)
      if not 0 <= i < num_leads:
        raise ValueError(f"lead {lead!r} outside the {num_leads} model leads")
      table[row, i] = True
  return table


def random_lead_subset(key: jax.Array, lead_mask: jax.Array,
                       subsets: Sequence[Sequence[str | int]] | np.ndarray = DEFAULT_LEAD_SUBSETS
                       ) -> jax.Array:
  """Restricts each sample to one allowed lead configuration, drawn uniformly.

  ``subsets`` is static: lead names (STANDARD_LEADS order) or indices, or a bool table.
  When a sample has none of the drawn subset's leads, its original mask is kept, so no
  sample ever ends up with zero leads because of this function.
  """
  table = jnp.asarray(lead_subset_table(subsets, lead_mask.shape[-1]))
  choice = jax.random.randint(key, lead_mask.shape[:1], 0, table.shape[0])
  new_mask = lead_mask & table[choice]
  return jnp.where(jnp.any(new_mask, axis=-1, keepdims=True), new_mask, lead_mask)


def default_augment_config() -> ml_collections.ConfigDict:
  """Default strengths, in units of the per-lead normalised signal (std ~ 1).

  Fields:
    sampling_rate: Hz of the batches, needed for the powerline and wander frequencies.
    noise_std, noise_prob: white noise std ~ U(0, noise_std), applied w.p. noise_prob.
    powerline_amplitude, powerline_prob, powerline_freqs: mains hum.
    wander_amplitude, wander_max_freq, wander_prob: baseline drift.
    scale_low, scale_high, scale_prob: per-lead log-uniform gain.
    lead_dropout_rate, lead_dropout_min_leads, lead_dropout_prob: random lead masking.
    lead_subset_prob, lead_subsets: restriction to a device lead configuration
      (off by default; the lead subsets are names from STANDARD_LEADS).
  """
  cfg = ml_collections.ConfigDict()
  cfg.sampling_rate = 250.0  # The model input rate (configs: data.sampling_rate).
  cfg.noise_std = 0.05
  cfg.noise_prob = 0.8
  cfg.powerline_amplitude = 0.1
  cfg.powerline_freqs = (50.0, 60.0)
  cfg.powerline_prob = 0.3
  cfg.wander_amplitude = 0.2
  cfg.wander_max_freq = 0.5
  cfg.wander_prob = 0.5
  cfg.scale_low = 0.7
  cfg.scale_high = 1.4
  cfg.scale_prob = 0.8
  cfg.lead_dropout_rate = 0.3
  cfg.lead_dropout_min_leads = 1
  cfg.lead_dropout_prob = 0.5
  cfg.lead_subset_prob = 0.0
  cfg.lead_subsets = DEFAULT_LEAD_SUBSETS
  return cfg


def _select(take: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
  """Per batch element, ``new`` where ``take`` [B] is True, else ``old``."""
  return jnp.where(take.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)


def augment_view(key: jax.Array, x: jax.Array, lead_mask: jax.Array,
                 cfg: Any) -> tuple[jax.Array, jax.Array]:
  """One random view of a batch: each augmentation is applied per sample w.p. its prob.

  Order: amplitude scale, baseline wander, powerline, white noise, lead subset, lead
  dropout. ``cfg`` is read by attribute (a ConfigDict or any object); the optional fields
  of ``default_augment_config`` fall back to their defaults. Its values are static, so
  close over it (e.g. ``functools.partial``) when jitting.

  Returns:
    (x, lead_mask) with absent leads exactly zero in x.
  """
  get = lambda name, default: getattr(cfg, name, default)
  k_gate, k_scale, k_wander, k_line, k_noise, k_subset, k_drop = jax.random.split(key, 7)
  subset_prob = get("lead_subset_prob", 0.0)
  probs = jnp.asarray([cfg.scale_prob, cfg.wander_prob, cfg.powerline_prob, cfg.noise_prob,
                       subset_prob, cfg.lead_dropout_prob], jnp.float32)
  take = jax.random.uniform(k_gate, (x.shape[0], probs.size)) < probs  # [B, 6]
  x = _select(take[:, 0], amplitude_scale(k_scale, x, cfg.scale_low, cfg.scale_high), x)
  x = _select(take[:, 1], baseline_wander(k_wander, x, cfg.sampling_rate,
                                          cfg.wander_amplitude,
                                          get("wander_max_freq", 0.5)), x)
  x = _select(take[:, 2], powerline_noise(k_line, x, cfg.sampling_rate,
                                          cfg.powerline_amplitude,
                                          tuple(get("powerline_freqs", (50.0, 60.0)))), x)
  x = _select(take[:, 3], gaussian_noise(k_noise, x, cfg.noise_std), x)
  if subset_prob > 0:  # Static: skipped entirely when off.
    subsets = get("lead_subsets", DEFAULT_LEAD_SUBSETS)
    lead_mask = _select(take[:, 4], random_lead_subset(k_subset, lead_mask, subsets),
                        lead_mask)
  lead_mask = _select(take[:, 5], lead_dropout(k_drop, lead_mask, cfg.lead_dropout_rate,
                                               get("lead_dropout_min_leads", 1)), lead_mask)
  return jnp.where(lead_mask[..., None], x, jnp.zeros((), x.dtype)), lead_mask


def two_views(key: jax.Array, x: jax.Array, lead_mask: jax.Array, cfg: Any
              ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
  """Two independent views of the same batch, the positive pairs of NT-Xent.

  Augments the batch stacked twice in one call: every element draws its own parameters,
  so the halves are independent, and only one copy of the augmentation graph is compiled.
  """
  b = x.shape[0]
  xs, masks = augment_view(key, jnp.concatenate([x, x]),
                           jnp.concatenate([lead_mask, lead_mask]), cfg)
  return (xs[:b], masks[:b]), (xs[b:], masks[b:])
