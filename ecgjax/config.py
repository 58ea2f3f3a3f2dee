"""What every job derives from a training config: the error type and the patch geometry.

Kept apart from the validator so the model, export and training code can use the
derived quantities without importing the checks.
"""
from __future__ import annotations


class ConfigError(ValueError):
  pass


def _check(cond: bool, field: str, msg: str) -> None:
  if not cond:
    raise ConfigError(f"config.{field}: {msg}")


def patch_size(config) -> int:
  """Samples per patch at the model's rate; patch_ms must land on a whole sample count."""
  exact = config.patch_ms * config.data.sampling_rate / 1000.0
  _check(abs(exact - round(exact)) < 1e-6 and round(exact) >= 1, "patch_ms",
         f"{config.patch_ms} ms at {config.data.sampling_rate} Hz is {exact:g} samples; "
         "choose a patch length that is a whole number (>= 1) of samples")
  return int(round(exact))


def num_patches(config) -> int:
  window = config.data.window_s * config.data.sampling_rate
  p = patch_size(config)
  _check(abs(window - round(window)) < 1e-6 and round(window) % p == 0, "data.window_s",
         f"{config.data.window_s} s at {config.data.sampling_rate} Hz = {window:g} samples, "
         f"not a multiple of the patch ({p} samples)")
  return int(round(window)) // p
