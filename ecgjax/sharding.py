"""Mesh construction and logical-axis -> mesh-axis mapping (rules live in the config).

Params carry logical axis names ('embed', 'mlp', 'heads', ...) from
``nnx.with_partitioning``; ``config.sharding_rules`` maps them onto the mesh axes
('data', 'fsdp', 'tensor'). Batches are sharded over ('data', 'fsdp').
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Sizes for MESH_AXES; one entry may be -1 (= the devices left over)."""
  sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices are "
                       f"not divisible by the fixed axes' product {known}")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                     f"devices but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(mesh_cfg, len(devices))
  if devices == list(jax.devices()):
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
                           axis_types=(AxisType.Auto,) * len(MESH_AXES))


def rules_from_config(rules_cfg) -> tuple[tuple[str, Any], ...]:
  """[('embed', 'fsdp'), ('mlp', 'tensor'), ('batch', ['data', 'fsdp']), ...] -> tuple rules."""
  out = []
  for name, axes in rules_cfg:
    if isinstance(axes, (list, tuple)):
      axes = tuple(axes) if axes else None
    out.append((name, axes))
  return tuple(out)


def _mesh_fit(spec: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh) -> P:
  """Drops a mesh axis of size 1, or from a dim it does not divide (12 leads over tensor=8), or
  that an earlier dim already uses (e.g. an embed -> decoder_embed kernel on fsdp)."""
  dims, used = [], set()
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    names = tuple(a for a in names if mesh.shape.get(a, 1) > 1 and a not in used)
    used.update(names)
    size = math.prod(mesh.shape[a] for a in names)
    dims.append(None if not names or dim % size else (names[0] if len(names) == 1 else names))
  return P(*dims)


def state_shardings(abstract_state, mesh: jax.sharding.Mesh, rules) -> Any:
  """NamedShardings for an nnx State (model + optimizer), from logical axis metadata."""
  with nnx.logical_axis_rules(rules):
    specs = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, _mesh_fit(spec, x.shape, mesh)),
                      specs, abstract_state)


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def global_batch_from_local(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch -> global jax.Arrays sharded over the batch axes."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
          for k, v in batch.items()}
