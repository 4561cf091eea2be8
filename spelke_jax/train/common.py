"""Pieces every trainer shares: mesh and batch placement, metric logging with ETA, the
log / checkpoint block after each train step."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from flax import nnx

from spelke_jax import sharding as sharding_lib


def setup_mesh(config) -> tuple[jax.sharding.Mesh, dict]:
  """Mesh from config.mesh (e.g. {'data': -1}) and the rules named by config.sharding."""
  shape = dict(config.get("mesh", None) or {"data": -1})
  mesh = sharding_lib.make_mesh(shape)
  rules = sharding_lib.RULES[config.get("sharding", "dp")]
  return mesh, rules


def check_batch_size(config) -> None:
  """config.batch_size must split evenly over all devices (data parallel)."""
  if config.batch_size % jax.device_count():
    raise ValueError(f"batch_size {config.batch_size} must divide over {jax.device_count()} "
                     "devices")


def replicate(state, mesh: jax.sharding.Mesh):
  """Puts a (model, optimizer) state on every device of `mesh` (data-parallel training)."""
  return jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))


def floats(metrics: Mapping[str, Any]) -> dict[str, float]:
  """Device metrics -> {name: python float}."""
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def after_step(step: int, config, state, metrics, writer: "MetricWriter", ckpt,
               modules: tuple[nnx.Module, ...], end: int | None = None) -> None:
  """After train step `step` (0-based): logs every config.log_every steps and at the last step
  (`end`, default config.num_steps); at every config.checkpoint_every-th and the last step writes
  `state` back into `modules` (model, optimizer) and saves them with the step's metrics."""
  done = step + 1
  last = done == (end or config.num_steps)
  if done % config.log_every == 0 or last:
    writer.write(done, jax.device_get(metrics))
  if done % config.checkpoint_every == 0 or last:
    nnx.update(modules, state)
    ckpt.maybe_save(done, *modules, force=True, meta=floats(metrics))


def put_batch(batch: Mapping[str, np.ndarray], mesh, rules) -> dict[str, jax.Array]:
  """Host numpy batch -> global arrays split over the mesh's batch axes (dim 0).

  Multi-host: each process passes its own local batch; the global batch is their concatenation."""
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    sharding = sharding_lib.batch_sharding(mesh, rules, max(v.ndim, 1))
    if jax.process_count() > 1:
      out[k] = jax.make_array_from_process_local_data(sharding, v)
    else:
      out[k] = jax.device_put(v, sharding)
  return out


class MetricWriter:
  """Appends {'step', ...} rows to <workdir>/metrics.jsonl (process 0) and logs them with an
  ETA towards `total_steps`."""

  def __init__(self, workdir: str | os.PathLike, total_steps: int, name: str = "train"):
    self.path = Path(workdir) / f"{name}_metrics.jsonl"
    self.total = total_steps
    self.t0 = time.time()
    self.first_step: int | None = None

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    row = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    if self.first_step is None:
      self.first_step = step
    done = step - self.first_step
    rate = done / max(time.time() - self.t0, 1e-9)
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    logging.info("step %d/%d %s (%.2f steps/s, ETA %s)", step, self.total,
                 " ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"), rate,
                 time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?")
    if jax.process_index() == 0:
      with open(self.path, "a") as f:
        f.write(json.dumps(row) + "\n")
