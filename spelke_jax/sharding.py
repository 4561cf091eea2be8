"""Meshes and logical-axis sharding rules.

Every model parameter carries `logical_axes` metadata (e.g. ('embed', 'mlp')). A rule set maps
logical names to mesh axes, so one model runs data-parallel, FSDP or tensor-parallel by config:

  dp:   everything replicated, batch over 'data'
  fsdp: parameters split along 'embed' over 'fsdp', batch over ('data', 'fsdp')
  tp:   heads / mlp / vocab split over 'model', batch over 'data'

A dimension whose size the mesh axis does not divide stays replicated (logged once).
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

Rules = Mapping[str, str | tuple[str, ...] | None]

RULES: dict[str, dict[str, str | tuple[str, ...] | None]] = {
    "dp": {"batch": "data"},
    "fsdp": {"batch": ("data", "fsdp"), "embed": "fsdp"},
    "tp": {"batch": "data", "heads": "model", "mlp": "model", "vocab": "model"},
}


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with named axes, e.g. {'data': -1} or {'data': 2, 'model': 4} (-1 = the rest).

  Axes are `Auto` (GSPMD propagation), which logical-axis rules assume.
  """
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(shape)
  sizes = [int(s) for s in shape.values()]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(shape)}")
  known = int(np.prod([s for s in sizes if s != -1])) if sizes else 1
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide into mesh {dict(shape)}")
    sizes[sizes.index(-1)] = len(devices) // known
  total = int(np.prod(sizes))
  if total != len(devices):
    raise ValueError(f"mesh {dict(zip(names, sizes))} needs {total} devices, have {len(devices)}")
  grid = np.asarray(devices).reshape(sizes)
  return Mesh(grid, names, axis_types=(AxisType.Auto,) * len(names))


def spec_for(logical_axes: Iterable[str | None] | None, shape: Sequence[int], mesh: Mesh,
             rules: Rules) -> P:
  """PartitionSpec for an array of `shape` whose dims have `logical_axes` names."""
  if logical_axes is None:
    return P()
  out, used = [], set()
  for name, dim in zip(logical_axes, shape):
    target = rules.get(name) if name is not None else None
    axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    axes = tuple(a for a in axes if a in mesh.shape and a not in used)
    size = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    if axes and dim % size:
      logging.log_first_n(logging.WARNING, "dim %s (%d) not divisible by mesh axes %s (%d); "
                          "replicating it", 4, name, dim, axes, size)
      axes = ()
    used.update(axes)
    out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
  return P(*out)


def param_shardings(state: nnx.State, mesh: Mesh, rules: Rules) -> dict[tuple, NamedSharding]:
  """{state path: NamedSharding} for every variable of an (abstract) nnx state."""
  out = {}
  for path, var in nnx.to_flat_state(state):
    axes = var.get_metadata().get("logical_axes")
    out[path] = NamedSharding(mesh, spec_for(axes, var.shape, mesh, rules))
  return out


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules) -> nnx.Module:
  """Places every parameter of `model` according to its logical axes (in place; returns it)."""
  graphdef, state = nnx.split(model)
  shardings = param_shardings(state, mesh, rules)
  flat = [(path, jax.device_put(var[...], shardings[path])) for path, var in nnx.to_flat_state(state)]
  for path, value in flat:
    _variable_at(state, path).set_value(value)
  nnx.update(model, state)
  return model


def _variable_at(state: nnx.State, path: tuple):
  node = state
  for p in path:
    node = node[p]
  return node


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int) -> NamedSharding:
  """Sharding of a batch-major array with `ndim` dims: dim 0 over the rules' 'batch' axes."""
  return NamedSharding(mesh, _batch_spec(mesh, rules, ndim))


def _batch_spec(mesh: Mesh, rules: Rules, ndim: int) -> P:
  target = rules.get("batch")
  axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
  axes = tuple(a for a in axes if a in mesh.shape)
  first = None if not axes else (axes[0] if len(axes) == 1 else axes)
  return P(first, *([None] * (ndim - 1)))
