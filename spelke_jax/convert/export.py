"""spelke_jax model -> a checkpoint in the original PyTorch layout (no torch needed).

    export_torch(model, "lras", "my_lras.pt")   # loads with the original ModelFactory

The same mapping tables as the converter, run backwards: every parameter goes through its
transform's inverse; the model config is saved as the original's `cfg` dict.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import nnx

from spelke_jax.convert.torch_writer import write_torch_checkpoint
from spelke_jax.models import registry


def export_torch(model: nnx.Module, system: str, path: str | os.PathLike, *,
                 cfg: Mapping[str, Any] | None = None) -> Path:
  """Writes `{'model': state_dict, 'cfg': cfg}` like the original's WrappedModel.save.

  cfg defaults to the model config's fields (the original's names), plus `config_class`.
  Written to a temporary name and renamed."""
  config = model.config
  table = registry.spec(system).get("table")(config)
  _, state = nnx.split(model)
  values = {"/".join(str(p) for p in path_): np.asarray(var[...])
            for path_, var in nnx.to_flat_state(state)}
  state_dict = {e.torch_name: np.ascontiguousarray(e.transform.inverse(values[e.flax_path]))
                for e in table.entries}
  cfg = dict(cfg if cfg is not None else config.to_dict())
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    write_torch_checkpoint(tmp, state_dict, cfg=cfg)
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  return path
