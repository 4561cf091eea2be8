"""Pieces every trainer shares: mesh and batch placement, metric logging with ETA."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging

from spelke_jax import sharding as sharding_lib


def setup_mesh(config) -> tuple[jax.sharding.Mesh, dict]:
  """Mesh from config.mesh (e.g. {'data': -1}) and the rules named by config.sharding."""
  shape = dict(config.get("mesh", None) or {"data": -1})
  mesh = sharding_lib.make_mesh(shape)
  rules = sharding_lib.RULES[config.get("sharding", "dp")]
  return mesh, rules


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
