"""An in-memory spelke_jax model -> a converted checkpoint directory (what load_converted reads).

    save_converted(model, "eisen", "assets/synth_eisen", store_dtype="bfloat16")
    model = load_converted("assets/synth_eisen")        # float32 again (Orbax casts on load)

Same layout as convert_checkpoint (config.json + params/ Orbax tree), written under a
temporary name and renamed when complete. `store_dtype` rounds floating-point variables for
storage only: "bfloat16" halves a shipped model, "int8" stores kernels as int8 with per-channel
scales (int8.py, about a quarter); loading restores the config's dtypes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from spelke_jax.convert import int8
from spelke_jax.convert.convert import CONFIG_FILE, FORMAT_VERSION, PARAMS_DIR, _jsonable
from spelke_jax.convert.mapping import unflatten
from spelke_jax.models import registry


def save_converted(model: nnx.Module, system: str, out: str | os.PathLike, *,
                   store_dtype: str | None = None, source: str = "",
                   overwrite: bool = False) -> Path:
  """Writes every variable of `model` (parameters and batch statistics) to `out`.
  store_dtype: None or "" (as trained), a float dtype name ("bfloat16") or "int8"."""
  from orbax.checkpoint import v1 as ocp  # pylint: disable=g-import-not-at-top
  import ml_dtypes  # pylint: disable=g-import-not-at-top

  registry.spec(system)  # unknown systems fail before anything is written
  out = Path(out).absolute()
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
  as_int8 = store_dtype == int8.STORE_DTYPE
  dtype = (None if not store_dtype or as_int8
           else np.dtype(getattr(ml_dtypes, store_dtype, store_dtype)))
  if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"store_dtype {store_dtype!r}: use a floating-point dtype (e.g. 'bfloat16') "
                     f"or '{int8.STORE_DTYPE}' (per-channel weight quantization)")
  _, state = nnx.split(model)
  if as_int8 and any(str(path[0]) == int8.SCALES_KEY for path, _ in nnx.to_flat_state(state)):
    raise ValueError(f"the model has variables under '{int8.SCALES_KEY}', the key int8 storage "
                     "reserves for its scales")
  leaves, quantized = [], []
  for path, var in nnx.to_flat_state(state):
    name = "/".join(str(p) for p in path)
    value = np.asarray(var[...])
    if as_int8:
      leaves += int8.stored_leaves(name, value, quantized)
      continue
    if dtype is not None and jnp.issubdtype(value.dtype, jnp.floating):
      value = value.astype(dtype)
    leaves.append((name, value))
  tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    ocp.save(tmp / PARAMS_DIR, unflatten(leaves))
    meta = {"system": system, "model_config": _jsonable(model.config.to_dict()),
            "source": source, "format_version": FORMAT_VERSION,
            "store_dtype": store_dtype or "as trained"}
    if as_int8:
      meta[int8.META_KEY] = quantized
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    if out.exists():
      shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out
