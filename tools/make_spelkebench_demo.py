"""Writes assets/spelkebench_demo.h5: a small procedural set in the SpelkeBench layout.

    python tools/make_spelkebench_demo.py --out=assets/spelkebench_demo.h5

Six 256x256 scenes (numpy only, deterministic for a seed): a textured background and 2-4 textured
ellipses / polygons painted back to front. Per image the groups hold `rgb` uint8 [256,256,3],
`segment` uint8 [N,256,256] (the visible part of each shape) and `centroid` int64 [N,2] (x, y):
a safe interior point per mask, the maximum of its Euclidean distance transform (first in raster
order on ties), as the original's benchmark builder picks. It is the embedded default dataset of
configs/spelkebench.py, so the SpelkeBench command runs without downloads.
"""
from __future__ import annotations

import numpy as np
from absl import app, flags
from scipy import ndimage

from spelke_jax.data.spelkebench import Example, write_spelkebench_h5

_OUT = flags.DEFINE_string("out", "assets/spelkebench_demo.h5", "Output .h5 path.")
_NUM = flags.DEFINE_integer("num_images", 6, "Number of images.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed.")
_SIZE = flags.DEFINE_integer("size", 256, "Image side in pixels.")

MIN_AREA = 500        # px of a shape left visible
MIN_DEPTH = 6.0       # px from the mask's boundary to its safe point


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, strength: float):
  """A [H,W] zero-mean pattern: stripes, a checker board, smooth waves or nothing."""
  kind = rng.integers(0, 4)
  if kind == 0:    # stripes
    th = rng.uniform(0, np.pi)
    period = rng.uniform(6, 20)
    u = xx * np.cos(th) + yy * np.sin(th)
    return strength * np.sign(np.sin(2 * np.pi * u / period))
  if kind == 1:    # checker board
    s = rng.integers(6, 16)
    return strength * (((yy // s + xx // s) % 2) * 2.0 - 1.0)
  if kind == 2:    # smooth waves
    out = np.zeros_like(yy, dtype=np.float64)
    for _ in range(3):
      fy, fx = rng.uniform(-0.08, 0.08, 2)
      out += np.sin(fy * yy + fx * xx + rng.uniform(0, 2 * np.pi))
    return strength * out / 3
  return np.zeros_like(yy, dtype=np.float64)   # plain


def _ellipse(rng, yy, xx, size):
  cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
  a, b = rng.uniform(0.1 * size, 0.24 * size, 2)
  th = rng.uniform(0, np.pi)
  u = (xx - cx) * np.cos(th) + (yy - cy) * np.sin(th)
  v = -(xx - cx) * np.sin(th) + (yy - cy) * np.cos(th)
  return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _polygon(rng, yy, xx, size):
  """A star-shaped polygon (3-7 vertices around a centre), even-odd rasterised."""
  cy, cx = rng.uniform(0.2 * size, 0.8 * size, 2)
  n = int(rng.integers(3, 8))
  ang = np.sort(rng.uniform(0, 2 * np.pi, n))
  rad = rng.uniform(0.1 * size, 0.25 * size, n)
  vx, vy = cx + rad * np.cos(ang), cy + rad * np.sin(ang)
  px, py = xx + 0.5, yy + 0.5
  inside = np.zeros(xx.shape, bool)
  for i in range(n):
    x0, y0, x1, y1 = vx[i], vy[i], vx[(i + 1) % n], vy[(i + 1) % n]
    if y0 == y1:
      continue
    crosses = (py >= min(y0, y1)) & (py < max(y0, y1))
    xint = x0 + (py - y0) * (x1 - x0) / (y1 - y0)
    inside ^= crosses & (px < xint)
  return inside


def safe_point(mask: np.ndarray) -> tuple[int, int, float]:
  """bool [H,W] -> (x, y, depth): argmax of the distance to the nearest outside pixel (the image
  border counts as outside)."""
  d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
  y, x = np.unravel_index(int(np.argmax(d)), d.shape)
  return int(x), int(y), float(d[y, x])


def make_scene(rng: np.random.Generator, key: str, size: int = 256) -> Example:
  """One scene: textured background + 2-4 textured shapes -> Example (visible masks, points)."""
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
  bg_col = rng.uniform(0.25, 0.75, 3)
  grad = rng.uniform(-0.15, 0.15, 2)
  img = (bg_col + (grad[0] * (yy / size - 0.5) + grad[1] * (xx / size - 0.5))[..., None]
         + _texture(rng, yy, xx, rng.uniform(0.03, 0.1))[..., None] * rng.uniform(0.5, 1, 3))
  while True:
    n = int(rng.integers(2, 5))
    shapes = [(_ellipse if rng.random() < 0.5 else _polygon)(rng, yy, xx, size) for _ in range(n)]
    visible = [m & ~np.any(shapes[i + 1:], axis=0) if i + 1 < n else m
               for i, m in enumerate(shapes)]
    pts = [safe_point(v) for v in visible]
    if all(v.sum() >= MIN_AREA and p[2] >= MIN_DEPTH for v, p in zip(visible, pts)):
      break
  for m in shapes:
    col = rng.uniform(0, 1, 3)
    while np.max(np.abs(col - bg_col)) < 0.35:
      col = rng.uniform(0, 1, 3)
    tex = _texture(rng, yy, xx, rng.uniform(0.04, 0.15))[..., None]
    img = np.where(m[..., None], col + tex * rng.uniform(0.5, 1, 3), img)
  img = img + rng.normal(0, 1.2 / 255, img.shape)       # a little sensor noise
  image = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
  points = np.array([(x, y) for x, y, _ in pts], np.int64)
  return Example(key=key, image=image, segments=np.stack(visible), points=points)


def make_examples(num_images: int = 6, seed: int = 0, size: int = 256) -> list[Example]:
  rng = np.random.default_rng(seed)
  return [make_scene(rng, f"demo_{i:03d}", size) for i in range(num_images)]


def main(argv):
  del argv
  exs = make_examples(_NUM.value, _SEED.value, _SIZE.value)
  write_spelkebench_h5(_OUT.value, exs)
  print(f"wrote {_OUT.value}: {len(exs)} images, "
        f"{sum(len(e.points) for e in exs)} segments")


if __name__ == "__main__":
  app.run(main)
