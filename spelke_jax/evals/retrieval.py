"""Bi-modal retrieval with the NSI score, and slot-mask pictures.

Score matrix S [N_img, N_prog] (rows images, columns schemas/programs; pair i <-> i is correct),
e.g. NSI's logits sum_t mask[j, t] max_n <slot_i,n, prog_j,t> computed over a whole split
(`score_matrix`). Then
  image -> schema   for image i, candidates = row S[i, :], the correct one is column i
  schema -> image   for schema j, candidates = column S[:, j], the correct one is row j
  Recall@k          fraction of queries whose correct candidate is among the first k.
Ties are broken deterministically by candidate index: candidates are ordered by descending score,
equal scores in ascending index (a stable sort), i.e. rank(i) = #{j: s_j > s_i} + #{j < i: s_j
= s_i}. So a constant score matrix gives exactly chance (Recall@k = k / N). NaN scores raise.
Chance level of Recall@k is min(k, N) / N.

Pictures (`slot_mask_figure`): one row per image: the image, the argmax slot segmentation, then
per slot the image blended into white by that slot's mask (the original's attns_vis =
x * alpha + (1 - alpha)), masks nearest-upsampled from the patch grid.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spelke_jax.evals import viz

KS = (1, 5, 10)


def ranks(scores: np.ndarray) -> np.ndarray:
  """scores [Q, C] (query q's correct candidate is column q; Q <= C) -> 0-based rank [Q] of the
  correct candidate under the tie rule above."""
  s = np.asarray(scores, np.float64)
  if s.ndim != 2 or s.shape[0] > s.shape[1]:
    raise ValueError(f"scores must be [Q, C] with Q <= C, got shape {s.shape}")
  if np.isnan(s).any():
    raise ValueError("the score matrix holds NaNs; retrieval ranks would be undefined")
  q = np.arange(s.shape[0])
  true = s[q, q][:, None]
  cols = np.arange(s.shape[1])[None, :]
  return (np.sum(s > true, axis=1) + np.sum((s == true) & (cols < q[:, None]), axis=1)).astype(
      np.int64)


def recall_at(scores: np.ndarray, ks: Sequence[int] = KS) -> dict[int, float]:
  """{k: Recall@k} of the rows of scores [Q, C] (correct = the diagonal)."""
  r = ranks(scores)
  return {int(k): float(np.mean(r < k)) for k in ks}


def retrieval_metrics(scores: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
  """score matrix [N, N] (rows images, columns schemas) -> {'img2schema_R@k', 'schema2img_R@k',
  'chance_R@k', 'img2schema_mean_rank', 'schema2img_mean_rank' (1-based), 'num': N}."""
  s = np.asarray(scores)
  if s.ndim != 2 or s.shape[0] != s.shape[1]:
    raise ValueError(f"retrieval needs a square score matrix (image i <-> schema i), got {s.shape}")
  n = s.shape[0]
  out: dict[str, float] = {"num": n}
  for name, m in (("img2schema", s), ("schema2img", s.T)):
    r = ranks(m)
    for k in ks:
      out[f"{name}_R@{k}"] = float(np.mean(r < k))
    out[f"{name}_mean_rank"] = float(np.mean(r) + 1)
  for k in ks:
    out[f"chance_R@{k}"] = min(k, n) / n
  return out


@jax.jit
def _score_block(slots, progs, mask):
  """slots [b, K, E], progs [N, T, E], mask [N, T] -> [b, N]."""
  s = jnp.einsum("ind,jtd->ijnt", slots, progs, precision=jax.lax.Precision.HIGHEST).max(axis=2)
  return jnp.sum(s * mask[None].astype(s.dtype), axis=-1)


def score_matrix(slots_proj: np.ndarray, prog_proj: np.ndarray, mask: np.ndarray, *,
                 block: int = 32) -> np.ndarray:
  """NSI's slot_program_score over a whole split, `block` images at a time (memory b x N x K x
  T): slots_proj [N_img, K, E], prog_proj [N_prog, T, E], mask [N_prog, T] -> [N_img, N_prog]."""
  slots_proj = np.asarray(slots_proj, np.float32)
  n = slots_proj.shape[0]
  progs, m = jnp.asarray(prog_proj, jnp.float32), jnp.asarray(mask)
  rows = []
  for s in range(0, n, block):
    chunk = slots_proj[s:s + block]
    pad = block - len(chunk)
    if pad:  # one compiled shape
      chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
    rows.append(np.asarray(_score_block(jnp.asarray(chunk), progs, m))[:block - pad])
  return np.concatenate(rows) if rows else np.zeros((0, prog_proj.shape[0]), np.float32)


def _to_uint8(image: np.ndarray) -> np.ndarray:
  a = np.asarray(image)
  if a.dtype == np.uint8:
    return a
  return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)


def _nearest_up(mask: np.ndarray, h: int, w: int) -> np.ndarray:
  rows = np.minimum((np.arange(h) * mask.shape[0]) // h, mask.shape[0] - 1)
  cols = np.minimum((np.arange(w) * mask.shape[1]) // w, mask.shape[1] - 1)
  return mask[rows][:, cols]


def slot_mask_figure(images: np.ndarray, masks: np.ndarray, pad: int = 2) -> np.ndarray:
  """images [B, H, W, 3] (float [0, 1] or uint8), masks [B, K, h, w] in [0, 1] (decoder alpha,
  summing to 1 over K) -> uint8 picture, one row per image: image | argmax segmentation | K
  per-slot views (image * mask + white * (1 - mask))."""
  images, masks = np.asarray(images), np.asarray(masks, np.float32)
  if images.ndim != 4 or masks.ndim != 4 or images.shape[0] != masks.shape[0]:
    raise ValueError(f"images [B, H, W, 3] and masks [B, K, h, w], got {images.shape}, "
                     f"{masks.shape}")
  k = masks.shape[1]
  palette = np.round(viz._colormap(np.linspace(0, 1, max(k, 2)), "viridis")  # pylint: disable=protected-access
                     * 255).astype(np.uint8)
  rows = []
  for img, m in zip(images, masks):
    h, w = img.shape[:2]
    img_f = _to_uint8(img).astype(np.float32) / 255
    up = np.stack([_nearest_up(mk, h, w) for mk in m])                     # [K, H, W]
    seg = palette[np.argmax(up, axis=0)]
    views = [_to_uint8(img_f * a[..., None] + (1 - a[..., None])) for a in up]
    rows.append(viz.side_by_side([_to_uint8(img), seg] + views, pad=pad))
  width = max(r.shape[1] for r in rows)
  out = np.full((sum(r.shape[0] for r in rows) + pad * (len(rows) - 1), width, 3), 255, np.uint8)
  y = 0
  for r in rows:
    out[y:y + r.shape[0], :r.shape[1]] = r
    y += r.shape[0] + pad
  return out


def save_slot_masks(path: str | os.PathLike, images: np.ndarray, masks: np.ndarray) -> Path:
  """slot_mask_figure -> PNG at `path` (atomic write)."""
  return viz.save_png(path, slot_mask_figure(images, masks))
