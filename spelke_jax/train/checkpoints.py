"""Training checkpoints: Orbax CheckpointManager (async, keeps the last few, resumable).

The state is saved as a flat {'path/to/leaf': array} dict of the nnx model and optimizer states
(plus the step and any JSON metadata), so restoring needs only the same model/optimizer code:
    ckpt = Checkpointer(workdir / "checkpoints", save_every=1000)
    start = ckpt.restore_latest(model, optimizer)       # 0 when there is nothing to resume
    ... ckpt.maybe_save(step, model, optimizer, meta={"loss": ...}) ...
    ckpt.close()
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx


def flat_state(*modules: nnx.Module) -> dict[str, Any]:
  """{'i/path/to/leaf': array} for the nnx state of each module (i = its position)."""
  out = {}
  for i, m in enumerate(modules):
    for path, var in nnx.to_flat_state(nnx.state(m)):
      out[f"{i}/" + "/".join(str(p) for p in path)] = var[...] if hasattr(var, "__getitem__") else var
  return out


def load_flat_state(flat: dict[str, Any], *modules: nnx.Module) -> None:
  """Writes arrays of `flat` (from flat_state) back into the modules, in place."""
  for i, m in enumerate(modules):
    state = nnx.state(m)
    for path, var in nnx.to_flat_state(state):
      key = f"{i}/" + "/".join(str(p) for p in path)
      if key not in flat:
        raise KeyError(f"checkpoint has no entry {key!r}: it was written by a different model")
      var.set_value(flat[key])
    nnx.update(m, state)


class Checkpointer:
  """Orbax CheckpointManager with async saves every `save_every` steps, keeping `max_to_keep`."""

  def __init__(self, directory: str | os.PathLike, *, save_every: int, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_interval_steps=save_every,
                                           enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def maybe_save(self, step: int, *modules: nnx.Module, meta: dict | None = None,
                 force: bool = False) -> bool:
    """Saves at the configured interval (or when forced); returns whether it saved."""
    meta = {"step": int(step), **(meta or {})}
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flat_state(*modules)), meta=ocp.args.JsonSave(meta)),
                             force=force)

  def restore(self, step: int, *modules: nnx.Module) -> dict:
    """Loads checkpoint `step` into the modules (in place, keeping their shardings); returns
    its metadata."""
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype,
                                                         sharding=getattr(x, "sharding", None)),
                          flat_state(*modules))
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    load_flat_state(dict(restored["state"]), *modules)
    return dict(restored["meta"] or {})

  def restore_latest(self, *modules: nnx.Module) -> int:
    """Restores the newest checkpoint if any; returns the step to continue from (0 if none)."""
    step = self.latest_step()
    if step is None:
      return 0
    self.restore(step, *modules)
    return int(step)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
