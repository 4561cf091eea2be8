"""Spatial initialisation of the LRAS embeddings (ours; the architecture is unchanged).

The original LRAS learns absolute position embeddings and per-patch pointer tokens from
N(0, 0.02), separately for frame 0 and for the flow: that flow patch j lies where frame-0 patch
j lies must be learnt pair by pair, which a small CPU run never finishes (its probing maps are
blobs around the poke that ignore the object's outline). `add_spatial_codes` adds one 2-D
sin-cos code of each token's place on the code grid to the rows that name that place:

  * the position rows of frame 0 and of the flow (a pointer at its patch's centre, a code at
    its own cell: patch_size x patch_size codes per patch, row-major);
  * the frame-0 and flow pointer tokens (their patch's centre).

Shapes and the checkpoint layout stay the original's; only the starting point changes.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig


def sincos_2d(yx: np.ndarray, dim: int) -> np.ndarray:
  """[N, 2] (y, x) in code cells -> [N, dim] float32: dim/4 frequencies 1 / 10000^(k/(dim/4))
  of sin and cos for y (first half) and for x (second half)."""
  if dim % 4:
    raise ValueError(f"embedding width {dim} is not a multiple of 4")
  k = np.arange(dim // 4, dtype=np.float64)
  omega = 1.0 / 10000.0 ** (k / (dim // 4))
  parts = []
  for axis in range(2):
    a = np.asarray(yx, np.float64)[:, axis:axis + 1] * omega[None]
    parts += [np.sin(a), np.cos(a)]
  return np.concatenate(parts, axis=1).astype(np.float32)


def patch_layout(cfg: LRASConfig) -> tuple[int, np.ndarray, np.ndarray]:
  """(num_patches, pointer_yx [P, 2], token_yx [P, T, 2]) in code cells for a square grid;
  T = patch_size**2 + 1 tokens per patch (pointer first, at the patch centre)."""
  s = cfg.patch_size
  g = cfg.patch_grid
  p = g * g
  r, c = np.divmod(np.arange(p), g)
  centre = np.stack([r * s + (s - 1) / 2, c * s + (s - 1) / 2], axis=1)
  dy, dx = np.divmod(np.arange(s * s), s)
  codes = np.stack([r[:, None] * s + dy[None], c[:, None] * s + dx[None]], axis=-1)
  return p, centre, np.concatenate([centre[:, None], codes], axis=1)


def add_spatial_codes(model: lras.LRAS, amplitude: float) -> None:
  """Adds amplitude * sincos_2d(place) to the position rows of frame 0 and the flow and to the
  frame-0 and flow pointer tokens, in place. amplitude 0 leaves the model unchanged."""
  if amplitude == 0:
    return
  cfg = model.config
  p, centre, token_yx = patch_layout(cfg)
  d = cfg.n_embd
  per_token = amplitude * sincos_2d(token_yx.reshape(-1, 2), d)        # [P*T, d]
  per_patch = amplitude * sincos_2d(centre, d)                         # [P, d]
  pos = model.positional_embedding.embedding
  tok = model.token_embedding.embedding
  for start in (cfg.frame_0_rgb_pos_range[0], cfg.flow_pos_range[0]):
    pos[...] = pos[...].at[start:start + len(per_token)].add(jnp.asarray(per_token, pos.dtype))
  for start, end in (cfg.rgb_patch_0_idx_range, cfg.flow_patch_idx_range):
    if end - start != p:
      raise ValueError(f"pointer range {start}..{end} does not hold {p} patches")
    tok[...] = tok[...].at[start:end].add(jnp.asarray(per_patch, tok.dtype))
