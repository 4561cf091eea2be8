"""PyTorch checkpoint -> Orbax checkpoint, one tensor at a time.

    convert_checkpoint("SpelkeNet1B.pt", "out/spelkenet_1b", system="lras")

Output directory layout (written under a temporary name, renamed when complete):
    <out>/config.json   {"system", "model_config", "source", "format_version"[, "store_dtype",
                         "int8_variables"]}
    <out>/params/       Orbax checkpoint of the parameter tree ('blocks/0/attn/qkv', ...)

store_dtype="int8" stores every kernel as int8 with per-channel scales (int8.py): a quarter
of the float32 files, dequantized on load.

Tensors are read, transformed and written with Orbax partial saves one by one, so peak memory
stays near two to three times the largest tensor (its bytes, a transposed copy, the writer's
buffer), not the file size.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from absl import logging
from flax import nnx

from spelke_jax.convert import int8, mapping
from spelke_jax.convert.torch_reader import empty_aligned, load_checkpoint
from spelke_jax.models import registry

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


def abstract_params(system: str, config) -> dict[str, Any]:
  """{'a/b/c': ShapeDtypeStruct-like variable} of the model's parameters, from eval_shape."""
  model = registry.spec(system).get("abstract")(config)
  _, state = nnx.split(model)
  return {"/".join(str(p) for p in path): var for path, var in nnx.to_flat_state(state)}


def build_config(system: str, checkpoint_cfg: Mapping[str, Any] | None,
                 overrides: Mapping[str, Any] | None = None):
  """Model config from the checkpoint's saved `cfg` plus explicit overrides."""
  from_dict = registry.spec(system).get("config_from_dict")
  if not checkpoint_cfg and not overrides:
    raise ValueError(f"the checkpoint has no saved 'cfg' and no config was given for {system}")
  return from_dict(dict(checkpoint_cfg or {}), **dict(overrides or {}))


def convert_checkpoint(src: str | os.PathLike, out: str | os.PathLike, system: str, *,
                       config_overrides: Mapping[str, Any] | None = None,
                       overwrite: bool = False, progress: bool = True,
                       store_dtype: str | None = None) -> Path:
  """Converts `src` (.pt/.pth/.safetensors/.npz) of `system` ('lras', 'lpq') into `out`.

  Returns `out`. Raises MappingError (before writing anything) when names or shapes do not
  match, CheckpointError on unreadable or unsafe files. Nothing is left at `out` on failure.
  """
  from orbax.checkpoint import v1 as ocp  # pylint: disable=g-import-not-at-top

  out = Path(out).absolute()
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
  if store_dtype not in (None, "", int8.STORE_DTYPE):
    raise ValueError(f"store_dtype {store_dtype!r}: the converter stores the model's param_dtype "
                     f"(a config override) or '{int8.STORE_DTYPE}'")
  ckpt = load_checkpoint(src)
  config = build_config(system, ckpt.config(), config_overrides)
  spec = registry.spec(system)
  state_dict = (spec.get("state_dict_fn")(ckpt) if spec.state_dict_fn else ckpt.state_dict())
  leaves = abstract_params(system, config)
  table = spec.get("table")(config)
  steps = mapping.plan(table, {k: v.shape for k, v in state_dict.items()},
                       {k: v.shape for k, v in leaves.items()})

  tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  try:
    params_path = tmp / PARAMS_DIR
    total = sum(state_dict[s.source].nbytes for s in steps)
    done, t0, quantized = 0, time.time(), []
    bar = _progress(len(steps), f"converting {Path(src).name}") if progress else None
    # Orbax deep-copies host arrays before writing by default; ours are never touched again.
    context = ocp.Context()
    context.memory.deepcopy_host_arrays = False
    for i, step in enumerate(steps):
      leaf = leaves[step.flax_path]
      # The read array dies as soon as the transformed copy exists (no name holds it).
      array = _host_array(step.transform.fn(state_dict[step.source].read()), leaf.dtype)
      tree = (int8.stored_leaves(step.flax_path, array, quantized)
              if store_dtype == int8.STORE_DTYPE else [(step.flax_path, array)])
      with context:
        ocp.partial.save(params_path, mapping.unflatten(tree))
      del tree
      done += state_dict[step.source].nbytes
      del array
      _release_freed_memory()
      if bar is not None:
        bar.update(1)
      elif i % 20 == 0:
        logging.info("converted %d/%d tensors (%.1f%% of bytes, %.0fs)", i + 1, len(steps),
                     100 * done / max(total, 1), time.time() - t0)
    if bar is not None:
      bar.close()
    ocp.partial.finalize(params_path)
    meta = {"system": system, "model_config": _jsonable(config.to_dict()),
            "source": str(Path(src).absolute()), "format_version": FORMAT_VERSION}
    if store_dtype == int8.STORE_DTYPE:
      meta.update({"store_dtype": int8.STORE_DTYPE, int8.META_KEY: quantized})
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    if out.exists():
      shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def _host_array(x: np.ndarray, dtype) -> np.ndarray:
  """`x` as a C-contiguous array of `dtype`: itself when it already is, else one copy (in its
  own memory map when large, so that freeing it returns the memory at once)."""
  dtype = np.dtype(dtype)
  if isinstance(x, np.ndarray) and x.dtype == dtype and x.flags.c_contiguous:
    return x
  out = empty_aligned(np.shape(x), dtype)
  np.copyto(out, x, casting="unsafe")
  return out


_LIBC_TRIM = None


def _release_freed_memory() -> None:
  """Returns memory freed by the previous save to the OS (glibc only; a no-op elsewhere).

  The compressor's output buffers (one tensor's size) are malloc'd in worker threads' arenas,
  which glibc does not shrink on its own, so without this they add a tensor to the peak."""
  global _LIBC_TRIM
  if _LIBC_TRIM is None:
    try:
      _LIBC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
      _LIBC_TRIM = False
  if _LIBC_TRIM:
    _LIBC_TRIM(0)


def _progress(total: int, desc: str):
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, desc=desc, unit="tensor")


def _jsonable(obj):
  if isinstance(obj, dict):
    return {str(k): _jsonable(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_jsonable(v) for v in obj]
  return obj
