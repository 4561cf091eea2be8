"""The `poke` mode: one image and one point -> affordance, expected displacement, correlation
map and Spelke segment, as PNGs plus an .npz of the arrays.

Writes into the workdir: affordance.png (1 - P(no motion) over the image), displacement.png (the
expected displacement of every poke of the first stage, colour wheel: hue = direction,
saturation = magnitude), correlation.png (the final stage's mean poke-displacement correlation),
segment.png (image | segment overlay with the point) and poke.npz. A stage that probed a crop
(zoom, or the preset's point_crop) is drawn inside that crop's box over the dimmed image; the
.npz keeps its maps in the crop's frame with the box (first_box, final_box: x0, y0, x1, y1).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

from spelke_jax.evals import viz
from spelke_jax.inference import maps, spelkenet_model, zoom


def parse_point(text) -> tuple[float, float]:
  """'X,Y' (or a pair) -> (x, y) floats; clear error otherwise."""
  parts = text.split(",") if isinstance(text, str) else list(text)
  try:
    x, y = (float(v) for v in parts)
  except (TypeError, ValueError):
    raise ValueError(f"point must be 'X,Y' in pixels, got {text!r}") from None
  return x, y


def load_image(path: str, size: int, point: tuple[float, float] | None, resize: bool):
  """An RGB image file -> (uint8 [size, size, 3], point in the returned image's pixels).

  With resize, the shorter side is scaled to `size` and the centre cropped (the original's
  Resize + CenterCrop), and the point is mapped; otherwise the image must already be size^2."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  p = Path(path)
  if not p.exists():
    raise FileNotFoundError(f"image not found: {p}")
  try:
    img = Image.open(p).convert("RGB")
  except Exception as e:  # Pillow raises several kinds of errors for bad files
    raise ValueError(f"{p} is not a readable image ({e})") from e
  w, h = img.size
  if (w, h) == (size, size):
    return np.asarray(img), point
  if not resize:
    raise ValueError(f"image is {w}x{h}, the model needs {size}x{size} (set --config.resize=True "
                     "to resize and centre-crop)")
  scale = size / min(w, h)
  nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
  img = img.resize((nw, nh), Image.BILINEAR)
  left, top = (nw - size) // 2, (nh - size) // 2
  img = img.crop((left, top, left + size, top + size))
  if point is not None:
    point = (point[0] * nw / w - left, point[1] * nh / h - top)
  return np.asarray(img), point


def in_image_frame(rgb: np.ndarray, box: np.ndarray, background: np.ndarray) -> np.ndarray:
  """A stage's [h, w, 3] uint8 picture -> [S, S, 3]: resized (nearest) into box [x0, y0, x1, y1]
  of `background` [S, S, 3]."""
  size_y, size_x = background.shape[:2]
  x0, y0, x1, y1 = (int(v) for v in box)
  x1, y1 = min(x1, size_x), min(y1, size_y)
  out = background.copy()
  out[y0:y1, x0:x1] = zoom.nearest_resize(rgb, y1 - y0, x1 - x0)
  return out


def _demo_input() -> tuple[np.ndarray, tuple[float, float]]:
  from spelke_jax.data.spelkebench import SpelkeBenchReader  # pylint: disable=g-import-not-at-top
  reader = SpelkeBenchReader(Path(__file__).resolve().parents[2] / "assets" / "synth_eval96.h5")
  ex = reader[reader.keys()[0]]
  return ex.image, tuple(float(v) for v in ex.points[0])


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  net = spelkenet_model.spelkenet_factory(config).net
  point = parse_point(config.point) if config.point else None
  if config.image:
    image, point = load_image(config.image, net.image_size, point, config.resize)
    if point is None:
      raise ValueError("--config.point=X,Y is required with --config.image")
  else:
    image, demo_point = _demo_input()
    point = point or demo_point
  image01 = net.check_image(image)
  point = net.check_point(point)
  logging.info("poking (%.1f, %.1f)", *point)

  affordance, _ = net.motion_affordance(image01, seed=config.seed)
  trace: list = []
  segment = net.run_inference(image01, point, key=jax.random.key(config.seed), trace=trace)
  first, final = trace[0], trace[-1]

  size = net.image_size
  u8 = (image01 * 255).round().astype(np.uint8)
  marked = viz.draw_point(u8, point, (255, 0, 0), radius=4)
  viz.save_png(workdir / "affordance.png", viz.side_by_side(
      [marked, viz.heatmap_rgb(np.kron(affordance, np.ones((size // affordance.shape[0],) * 2)),
                               "hot", 0.0, 1.0)]))
  dimmed = (u8 * 0.3).astype(np.uint8)
  flows = [in_image_frame(maps.flow_to_rgb(d), first.box, dimmed) for d in first.displacement]
  viz.save_png(workdir / "displacement.png", viz.side_by_side([marked] + flows))
  viz.save_png(workdir / "correlation.png", viz.side_by_side(
      [marked, in_image_frame(viz.heatmap_rgb(final.mean_dot, "viridis"), final.box, dimmed)]))
  viz.save_png(workdir / "segment.png", viz.side_by_side(
      [marked, viz.draw_point(viz.overlay_mask(u8, segment, (255, 255, 0), 0.5), point,
                              (255, 0, 0), radius=4)]))
  arrays = dict(image=u8, point=np.asarray(point, np.float32), affordance=affordance,
                displacement=first.displacement, correlation=final.mean_dot, segment=segment,
                first_box=first.box, final_box=final.box)
  tmp = workdir / f".poke.tmp-{os.getpid()}.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, workdir / "poke.npz")
  summary = {"point": list(point), "segment_area": int(segment.sum()),
             "affordance_max": float(affordance.max()), "stages": len(trace),
             "outputs": ["affordance.png", "displacement.png", "correlation.png", "segment.png",
                         "poke.npz"]}
  print(json.dumps(summary))
  return summary
