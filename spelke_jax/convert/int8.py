"""Weight-only int8 storage of converted checkpoints (save_converted(store_dtype="int8")).

Every floating-point variable with at least two dims (dense, conv and embedding kernels) is
stored as int8 `q` with one float32 scale per index of its last axis (the output channel of
dense and conv kernels):

    scale[c] = max |w[..., c]| / 127        (1 where the slice is all zero)
    q = round(w / scale)  in [-127, 127]     w ~= q * scale, |error| <= scale / 2

Biases, norms and other 0/1-dim variables are stored as trained. Loading dequantizes to the
model's dtype, so only the files shrink (to about a quarter of float32). The scales live in
the Orbax tree under SCALES_KEY, at the same paths as their variables.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

STORE_DTYPE = "int8"
SCALES_KEY = "int8_scales"   # top-level key of the scales subtree
META_KEY = "int8_variables"  # config.json: the quantized variables' paths ("a/b/kernel")


def is_quantized(value: Any) -> bool:
  """Whether int8 storage quantizes this variable: floating point with ndim >= 2."""
  return jnp.issubdtype(value.dtype, jnp.floating) and len(value.shape) >= 2


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[..., C] float -> (q int8 [..., C], scale float32 [C]), symmetric per last-axis slice."""
  w = np.asarray(w, np.float32)
  if w.ndim < 2:
    raise ValueError(f"int8 storage quantizes variables with >= 2 dims, got shape {w.shape}")
  if not np.all(np.isfinite(w)):
    raise ValueError("int8 storage needs finite weights; this variable holds inf or nan")
  scale = np.abs(w).reshape(-1, w.shape[-1]).max(axis=0) / np.float32(127.0)
  scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
  q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
  return q, scale


def dequantize(q: jax.Array | np.ndarray, scale: jax.Array | np.ndarray, dtype) -> jax.Array:
  """int8 [..., C] * float32 [C] -> `dtype` [..., C] (the product is taken in float32)."""
  return (jnp.asarray(q).astype(jnp.float32) * jnp.asarray(scale, jnp.float32)).astype(dtype)


def stored_leaves(name: str, value: np.ndarray,
                  quantized: list[str]) -> list[tuple[str, np.ndarray]]:
  """What int8 storage writes for variable `name`: itself (not quantized), or its int8 values
  and their scales under SCALES_KEY, `name` then appended to `quantized`."""
  if not is_quantized(value):
    return [(name, value)]
  q, scale = quantize(value)
  quantized.append(name)
  return [(name, q), (f"{SCALES_KEY}/{name}", scale)]


def check_variables(listed: Any, known: set[str], where: str) -> set[str]:
  """The META_KEY list of config.json, validated against the model's variable paths."""
  if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
    raise ValueError(f"{where}: store_dtype is int8 but config.json has no list '{META_KEY}' "
                     "of quantized variables; the checkpoint is incomplete or corrupted")
  unknown = sorted(set(listed) - known)
  if unknown:
    raise ValueError(f"{where}: int8 variables {unknown[:5]} are not variables of this model "
                     f"({len(unknown)} unknown); the checkpoint belongs to another architecture")
  return set(listed)
