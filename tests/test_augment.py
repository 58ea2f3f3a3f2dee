"""Tests for the on-device batch ECG augmentations.

Every function is exercised under jax.jit, and each compiled program is shared between
tests (same shapes, numeric parameters passed as traced arguments) so that the file
stays fast on a small CPU machine.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ecgjax.data import augment
from ecgjax.data.records import STANDARD_LEADS

B, L, T = 64, 12, 1000
FS = 500.0

_noise = jax.jit(augment.gaussian_noise)
_powerline = jax.jit(augment.powerline_noise, static_argnames=("freqs",))
_wander = jax.jit(augment.baseline_wander, static_argnames=("num_components",))
_scale = jax.jit(augment.amplitude_scale)
_dropout = jax.jit(augment.lead_dropout)
_subset = jax.jit(augment.random_lead_subset, static_argnames=("subsets",))

# One configuration for the composed views: every augmentation on with some probability.
_CFG = augment.default_augment_config()
_CFG.lead_subset_prob = 0.5
_view = jax.jit(functools.partial(augment.augment_view, cfg=_CFG))
_two_views = jax.jit(functools.partial(augment.two_views, cfg=_CFG))
# Only white noise, on half of the samples: checks the per-sample gate and the identity.
_NOISE_ONLY = augment.default_augment_config()
for _name in ("powerline", "wander", "scale", "lead_dropout"):
  setattr(_NOISE_ONLY, f"{_name}_prob", 0.0)
_NOISE_ONLY.noise_prob = 0.5
_noise_only_view = jax.jit(functools.partial(augment.augment_view, cfg=_NOISE_ONLY))


def _key(seed: int = 0) -> jax.Array:
  return jax.random.key(seed)


def _zeros(b: int = B, t: int = T) -> jax.Array:
  return jnp.zeros((b, L, t), jnp.float32)


def _partial_mask(b: int = B, seed: int = 0) -> jax.Array:
  """Each sample misses a different set of leads; lead II is always present."""
  mask = np.random.default_rng(seed).uniform(size=(b, L)) < 0.7
  mask[:, 1] = True
  return jnp.asarray(mask)


def test_gaussian_noise_std_per_sample():
  added = np.asarray(_noise(_key(), _zeros(256), 0.5))
  stds = added.std(axis=(1, 2))
  assert stds.max() <= 0.5 * 1.05
  assert abs(stds.mean() - 0.25) < 0.04  # U(0, 0.5) has mean 0.25.
  assert np.unique(np.round(stds, 4)).size > 200  # Own std per sample.
  # One std per sample, shared by its leads.
  np.testing.assert_allclose(added.std(axis=2), np.repeat(stds[:, None], L, 1),
                             rtol=0.15, atol=2e-3)
  np.testing.assert_array_equal(_noise(_key(), _zeros(256), 0.5), added)  # Deterministic.
  assert not np.array_equal(_noise(_key(1), _zeros(256), 0.5), added)


def test_powerline_peaks_at_mains_frequency():
  amp = 0.3
  added = np.asarray(_powerline(_key(1), _zeros(), FS, amp))
  spectrum = np.abs(np.fft.rfft(added, axis=-1))
  freqs = np.fft.rfftfreq(T, 1 / FS)
  peak = freqs[spectrum.argmax(-1)]  # [B, L]
  assert set(np.unique(peak)) == {50.0, 60.0}
  assert np.all(peak == peak[:, :1])  # One frequency per sample.
  assert np.abs(added).max() <= amp + 1e-5
  amps = np.abs(added).max(axis=(1, 2))
  assert np.unique(np.round(amps, 5)).size == B  # Own amplitude per sample.
  assert np.abs(added[:, 0] - added[:, 1]).max() > 1e-3  # Own phase per lead.
  only_60 = np.asarray(_powerline(_key(2), _zeros(), FS, amp, freqs=(60.0,)))
  assert np.all(freqs[np.abs(np.fft.rfft(only_60, axis=-1)).argmax(-1)] == 60.0)


def test_baseline_wander_is_low_frequency_and_common():
  fs, t, max_freq, amp = 50.0, 1500, 0.5, 0.4  # 30 s: resolves sub-Hz content.
  added = np.asarray(_wander(_key(2), _zeros(32, t), fs, amp, max_freq))
  assert np.abs(added).max() <= amp + 1e-5
  power = np.abs(np.fft.rfft(added * np.hanning(t), axis=-1))**2
  freqs = np.fft.rfftfreq(t, 1 / fs)
  assert power[..., freqs > max_freq + 0.2].sum() / power.sum() < 1e-3
  # Common across leads with a per-lead gain: each sample's [L, T] block has rank one.
  for block in added[:8]:
    s = np.linalg.svd(block, compute_uv=False)
    assert s[1] < 1e-3 * s[0]
  assert np.unique(np.round(np.abs(added).max(axis=(1, 2)), 5)).size == 32


def test_amplitude_scale_range():
  low, high = 0.5, 2.0
  gain = np.asarray(_scale(_key(3), jnp.ones((B, L, 16)), low, high))
  assert np.all(gain == gain[..., :1])  # Constant over time.
  g = gain[..., 0]
  assert g.min() >= low * (1 - 1e-6) and g.max() <= high * (1 + 1e-6)
  assert abs(np.log(g).mean()) < 0.1  # Log-uniform: centred on 1 for this range.
  assert np.unique(g).size == B * L  # Per sample and per lead.


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
def test_lead_dropout_rate(rate):
  new = np.asarray(_dropout(_key(4), jnp.ones((4096, L), bool), rate, 1))
  assert new.sum(-1).min() >= 1
  assert abs((1 - new.mean()) - rate) < 0.02


def test_lead_dropout_never_empty_and_min_leads():
  mask = _partial_mask(4096)
  m = np.asarray(mask)
  for min_leads in (1, 3):
    new = np.asarray(_dropout(_key(5), mask, 1.0, min_leads))
    np.testing.assert_array_equal(new.sum(-1), np.minimum(min_leads, m.sum(-1)))
    assert not np.any(new & ~m)  # Never resurrects an absent lead.
  np.testing.assert_array_equal(_dropout(_key(5), mask, 0.0, 1), mask)
  new = np.asarray(_dropout(_key(6), mask, 0.5, 1))
  assert new.sum(-1).min() >= 1 and not np.any(new & ~m)
  assert np.any(new.sum(-1) == 1) and np.any(new.sum(-1) > 4)


def test_random_lead_subset_respects_subsets():
  subsets = (STANDARD_LEADS, STANDARD_LEADS[:6], ("II",), ("I",))
  table = augment.lead_subset_table(subsets)
  assert table.shape == (4, L) and table.sum() == 12 + 6 + 1 + 1
  np.testing.assert_array_equal(
      augment.lead_subset_table(([*range(12)], [*range(6)], [1], [0])), table)
  mask = _partial_mask(1024)
  m = np.asarray(mask)
  new = np.asarray(_subset(_key(7), mask, subsets))
  assert new.sum(-1).min() >= 1
  assert not np.any(new & ~m)
  seen = set()
  for row_new, row_m in zip(new, m):
    matches = {i for i, sub in enumerate(table) if np.array_equal(row_new, row_m & sub)}
    assert matches or np.array_equal(row_new, row_m)  # Fallback keeps the original.
    seen |= matches
  assert seen == {0, 1, 2, 3}
  # Lead I absent everywhere: the ("I",) subset always falls back to the original mask.
  no_i = mask.at[:, 0].set(False)
  np.testing.assert_array_equal(_subset(_key(8), no_i, (("I",),)), no_i)


def test_augment_view_masks_and_zeros_absent_leads():
  x = jax.random.normal(_key(9), (B, L, T))
  mask = _partial_mask()
  out, new_mask = _view(_key(10), x, mask)
  out, new_mask, m = np.asarray(out), np.asarray(new_mask), np.asarray(mask)
  assert out.shape == x.shape and out.dtype == np.float32 and new_mask.dtype == bool
  assert np.all(out[~new_mask] == 0.0)
  assert not np.any(new_mask & ~m)
  assert new_mask.sum(-1).min() >= 1
  assert np.any(new_mask != m)  # Lead dropout / subsets did act on some samples.
  # Per-sample parameters: the change differs in size from sample to sample.
  change = np.abs(out - np.asarray(x))[new_mask].reshape(-1, T).std(-1)
  assert np.unique(np.round(change, 5)).size > B


def test_augment_view_per_sample_gate_and_identity():
  x = jax.random.normal(_key(11), (B, L, T))
  mask = _partial_mask()
  out, new_mask = _noise_only_view(_key(12), x, mask)
  np.testing.assert_array_equal(new_mask, mask)
  expected = np.where(np.asarray(mask)[..., None], np.asarray(x), 0.0)
  untouched = np.all(np.asarray(out) == expected, axis=(1, 2))
  assert 0.25 < untouched.mean() < 0.75  # noise_prob = 0.5, drawn per sample.
  rates = [np.mean(np.all(np.asarray(_noise_only_view(_key(s), x, mask)[0]) == expected,
                          axis=(1, 2))) for s in range(13, 21)]
  assert abs(np.mean(rates) - 0.5) < 0.08


def test_augment_view_deterministic():
  x = jax.random.normal(_key(14), (B, L, T))
  mask = _partial_mask()
  a, b, c = _view(_key(15), x, mask), _view(_key(15), x, mask), _view(_key(16), x, mask)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.allclose(a[0], c[0])


def test_two_views_are_independent_views():
  x = jax.random.normal(_key(17), (B, L, T))
  mask = _partial_mask()
  (x1, m1), (x2, m2) = _two_views(_key(18), x, mask)
  assert x1.shape == x2.shape == x.shape and m1.shape == m2.shape == mask.shape
  assert not np.allclose(x1, x2)
  assert np.any(np.asarray(m1 != m2))
  for xv, mv in ((x1, m1), (x2, m2)):
    assert np.all(np.asarray(xv)[~np.asarray(mv)] == 0.0)
  # Per-sample parameters: the two views differ by a different amount in every sample.
  both = np.asarray(m1 & m2)
  gap = np.asarray(x1 - x2).std(axis=-1)[both]
  assert np.unique(np.round(gap, 5)).size > B


def test_bfloat16_keeps_dtype():
  x = jnp.ones((4, L, 64), jnp.bfloat16)
  assert _noise(_key(19), x, 0.1).dtype == jnp.bfloat16
  assert _scale(_key(19), x, 0.5, 2.0).dtype == jnp.bfloat16
