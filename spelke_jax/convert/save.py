"""An in-memory spelke_jax model -> a converted checkpoint directory (what load_converted reads).

    save_converted(model, "eisen", "assets/synth_eisen", store_dtype="bfloat16")
    model = load_converted("assets/synth_eisen")        # float32 again (Orbax casts on load)

Same layout as convert_checkpoint (config.json + params/ Orbax tree), written under a
temporary name and renamed when complete. `store_dtype` rounds floating-point variables for
storage only (bfloat16 halves a shipped model); loading restores the config's dtypes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from flax import nnx

from spelke_jax.convert.convert import CONFIG_FILE, FORMAT_VERSION, PARAMS_DIR, _jsonable
from spelke_jax.convert.mapping import unflatten
from spelke_jax.models import registry


def save_converted(model: nnx.Module, system: str, out: str | os.PathLike, *,
                   store_dtype: str | None = None, source: str = "",
                   overwrite: bool = False) -> Path:
  """Writes every variable of `model` (parameters and batch statistics) to `out`."""
  from orbax.checkpoint import v1 as ocp  # pylint: disable=g-import-not-at-top
  import ml_dtypes  # pylint: disable=g-import-not-at-top

  registry.spec(system)  # unknown systems fail before anything is written
  out = Path(out).absolute()
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
  dtype = None if store_dtype is None else np.dtype(getattr(ml_dtypes, store_dtype, store_dtype))
  _, state = nnx.split(model)
  leaves = []
  for path, var in nnx.to_flat_state(state):
    value = np.asarray(var[...])
    if dtype is not None and np.issubdtype(value.dtype, np.floating):
      value = value.astype(dtype)
    leaves.append(("/".join(str(p) for p in path), value))
  tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    ocp.save(tmp / PARAMS_DIR, unflatten(leaves))
    meta = {"system": system, "model_config": _jsonable(model.config.to_dict()),
            "source": source, "format_version": FORMAT_VERSION,
            "store_dtype": store_dtype or "as trained"}
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    if out.exists():
      shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out
