"""Small visualisation helpers (numpy + Pillow only): colour maps, overlays, atomic PNG writes.

Images are uint8 [H, W, 3] RGB unless stated; points are (x, y) pixels (x = column).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

# 11 anchors of matplotlib's viridis at 0, 0.1, ..., 1 (linear in between: "viridis-like").
_VIRIDIS = np.array([
    [0.267004, 0.004874, 0.329415], [0.282623, 0.140926, 0.457517],
    [0.253935, 0.265254, 0.529983], [0.206756, 0.371758, 0.553117],
    [0.163625, 0.471133, 0.558148], [0.127568, 0.566949, 0.550556],
    [0.134692, 0.658636, 0.517649], [0.266941, 0.748751, 0.440573],
    [0.477504, 0.821444, 0.318195], [0.741388, 0.873449, 0.149561],
    [0.993248, 0.906157, 0.143936]])
_VIRIDIS_X = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) / 10.0


def _colormap(t: np.ndarray, cmap: str) -> np.ndarray:
  """t in [0, 1] [...] -> [..., 3] float in [0, 1]."""
  if cmap == "viridis":
    return np.stack([np.interp(t, _VIRIDIS_X, _VIRIDIS[:, c]) for c in range(3)], -1)
  if cmap == "hot":  # matplotlib's 'hot' (the notebook's affordance colour map)
    r = np.clip(t / 0.365079, 0, 1)
    g = np.clip((t - 0.365079) / (0.746032 - 0.365079), 0, 1)
    b = np.clip((t - 0.746032) / (1 - 0.746032), 0, 1)
    return np.stack([r, g, b], -1)
  if cmap == "gray":
    return np.stack([t, t, t], -1)
  raise ValueError(f"unknown colour map {cmap!r}; known: viridis, hot, gray")


def heatmap_rgb(m, cmap: str = "viridis", vmin: float | None = None,
                vmax: float | None = None) -> np.ndarray:
  """[H, W] float map -> [H, W, 3] uint8, scaled to [vmin, vmax] (default: the map's range);
  NaNs are black."""
  m = np.asarray(m, np.float64)
  if m.ndim != 2:
    raise ValueError(f"heatmap_rgb expects an [H, W] map, got shape {m.shape}")
  finite = np.isfinite(m)
  any_finite = bool(finite.any())
  lo = float(vmin) if vmin is not None else (float(m[finite].min()) if any_finite else 0.0)
  hi = float(vmax) if vmax is not None else (float(m[finite].max()) if any_finite else 1.0)
  t = np.clip((m - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(m)
  rgb = _colormap(np.where(finite, t, 0.0), cmap)
  rgb = np.where(finite[..., None], rgb, 0.0)
  return np.round(rgb * 255).astype(np.uint8)


def _as_rgb(image) -> np.ndarray:
  a = np.asarray(image)
  if a.dtype == bool:
    a = a.astype(np.uint8) * 255
  if a.dtype != np.uint8:
    raise TypeError(f"expected a uint8 image, got {a.dtype}")
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, -1)
  if a.ndim != 3 or a.shape[-1] not in (3, 4):
    raise ValueError(f"expected [H, W], [H, W, 3] or [H, W, 4], got shape {a.shape}")
  return a[..., :3]


def _nearest(mask: np.ndarray, h: int, w: int) -> np.ndarray:
  mh, mw = mask.shape
  rows = np.minimum((np.arange(h) * mh) // h, mh - 1)
  cols = np.minimum((np.arange(w) * mw) // w, mw - 1)
  return mask[rows][:, cols]


def overlay_mask(image, mask, color: Sequence[int] = (255, 255, 0),
                 alpha: float = 0.5) -> np.ndarray:
  """Blends `color` into `image` [H, W, 3] uint8 where `mask` [h, w] is true (a coarser mask is
  nearest-upsampled) -> new [H, W, 3] uint8."""
  img = _as_rgb(image).astype(np.float64)
  m = np.asarray(mask).astype(bool)
  if m.ndim != 2:
    raise ValueError(f"mask must be [h, w], got shape {m.shape}")
  m = _nearest(m, img.shape[0], img.shape[1])[..., None]
  col = np.asarray(color, np.float64)[:3]
  out = np.where(m, (1 - alpha) * img + alpha * col, img)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def draw_point(image, xy: Sequence[float], color: Sequence[int] = (255, 255, 0),
               radius: int = 4, outline: Sequence[int] | None = (0, 0, 0)) -> np.ndarray:
  """Filled disc of `radius` px at (x, y) with a 1-px outline -> new [H, W, 3] uint8."""
  img = _as_rgb(image).copy()
  h, w = img.shape[:2]
  yy, xx = np.mgrid[0:h, 0:w]
  d2 = (xx - float(xy[0])) ** 2 + (yy - float(xy[1])) ** 2
  if outline is not None:
    img[d2 <= (radius + 1) ** 2] = np.asarray(outline, np.uint8)[:3]
  img[d2 <= radius ** 2] = np.asarray(color, np.uint8)[:3]
  return img


def side_by_side(images: Sequence, pad: int = 4, pad_value: int = 255) -> np.ndarray:
  """Images ([H, W] or [H, W, 3] uint8/bool) left to right, `pad` px apart, top-aligned on a
  `pad_value` background -> [max H, sum W + pad * (n - 1), 3] uint8."""
  ims = [_as_rgb(im) for im in images]
  if not ims:
    raise ValueError("side_by_side needs at least one image")
  h = max(im.shape[0] for im in ims)
  w = sum(im.shape[1] for im in ims) + pad * (len(ims) - 1)
  out = np.full((h, w, 3), pad_value, np.uint8)
  x = 0
  for im in ims:
    out[:im.shape[0], x:x + im.shape[1]] = im
    x += im.shape[1] + pad
  return out


def save_png(path: str | os.PathLike, image) -> Path:
  """Writes a uint8 [H, W], [H, W, 3] or [H, W, 4] (or bool) array as PNG, atomically: to
  `<stem>.tmp-<pid>.png` beside it, then os.replace. Creates missing parent folders."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = Path(path)
  a = np.asarray(image)
  if a.dtype == bool:
    a = a.astype(np.uint8) * 255
  if a.dtype != np.uint8:
    raise TypeError(f"save_png expects uint8 (or bool), got {a.dtype}")
  if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
    raise ValueError(f"save_png expects [H, W], [H, W, 3] or [H, W, 4], got shape {a.shape}")
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.png")
  try:
    Image.fromarray(np.ascontiguousarray(a)).save(tmp, format="PNG")
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def save_text(path: str | os.PathLike, text: str) -> Path:
  """Writes `text` atomically: to `.<name>.tmp-<pid>` beside `path`, then os.replace."""
  path = Path(path)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  try:
    tmp.write_text(text)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path
