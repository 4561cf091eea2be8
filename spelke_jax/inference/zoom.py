"""Host-side geometry of SpelkeNet's zoom-in refinement (numpy, no cv2).

The original (spelke_net/utils/segment_zoom.py) crops a square around the current segment with
25 px padding, resizes it to 256 with cv2 INTER_AREA, probes again inside the crop, and finally
pastes the segment back with INTER_NEAREST. Coordinates are (x, y) pixels, x horizontal.
"""
from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Crop:
  """A square crop [y_start:y_end, x_start:x_end] of the previous image, resized to `out_size`.

  ratio = out_size / crop height (the original's `ratio`)."""
  x_start: int
  y_start: int
  x_end: int
  y_end: int
  ratio: float


def segment_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
  """(x_min, y_min, x_max, y_max) inclusive of a [H, W] mask, or None when it is empty."""
  ys, xs = np.nonzero(mask)
  if len(xs) == 0:
    return None
  return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def square_crop_box(mask: np.ndarray, padding: int = 25, out_size: int = 256) -> Crop:
  """The original's square_crop_with_padding box around a non-empty [H, W] segment.

  Centre of the bbox, half side max(w, h) // 2 + padding, shifted inside the image, then the
  shorter side grown to make it square where the image allows. Raises ValueError on an empty
  segment (the caller decides the fallback)."""
  box = segment_bbox(mask)
  if box is None:
    raise ValueError("segmentation mask is empty")
  h, w = mask.shape
  x_min, y_min, x_max, y_max = box
  cx, cy = (x_min + x_max) // 2, (y_min + y_max) // 2
  half = max(x_max - x_min, y_max - y_min) // 2 + padding
  x0, x1 = _shift_inside(cx - half, cx + half + 1, w)
  y0, y1 = _shift_inside(cy - half, cy + half + 1, h)
  cw, ch = x1 - x0, y1 - y0
  diff = abs(ch - cw)
  if cw < ch and x1 + diff <= w:
    x1 += diff
  elif cw < ch:
    x0 = max(0, x0 - diff)
  elif ch < cw and y1 + diff <= h:
    y1 += diff
  elif ch < cw:
    y0 = max(0, y0 - diff)
  crop_h = min(y1, h) - y0  # numpy slicing clips the end
  return Crop(int(x0), int(y0), int(x1), int(y1), out_size / crop_h)


def point_crop_box(point: tuple[float, float], side: int, image_size: int) -> Crop:
  """A square of `side` px centred on point (x, y), shifted inside an [S, S] image, resized to S.

  Raises ValueError unless 0 < side <= image_size."""
  if not 0 < side <= image_size:
    raise ValueError(f"crop side {side} px must lie in (0, {image_size}]")
  x0 = int(np.clip(round(point[0] - side / 2), 0, image_size - side))
  y0 = int(np.clip(round(point[1] - side / 2), 0, image_size - side))
  return Crop(x0, y0, x0 + side, y0 + side, image_size / side)


def _shift_inside(start: int, end: int, limit: int) -> tuple[int, int]:
  length = end - start
  if start < 0:
    end = min(end - start, limit)
    start = 0
  if end > limit:
    start = max(0, start - (end - limit))
    end = limit
  return start, start + length


def crop_point(point: tuple[float, float], crop: Crop) -> tuple[int, int]:
  """A point of the previous image in the resized crop: int((p - start) * ratio) (truncation)."""
  x, y = point
  return int((x - crop.x_start) * crop.ratio), int((y - crop.y_start) * crop.ratio)


def area_resize(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """Area-weighted resize of [H, W, C] (or [H, W]) float to [out_h, out_w, ...].

  Each output pixel averages the input over its footprint, weighting partial pixels by their
  overlap (cv2 INTER_AREA's rule when shrinking; when enlarging it gives blocky pixels with
  blended borders, close to cv2's enlarging INTER_AREA). Separable: rows, then columns."""
  x = np.asarray(image, np.float64)
  y = _area_matrix(x.shape[0], out_h) @ x.reshape(x.shape[0], -1)
  y = y.reshape((out_h,) + x.shape[1:])
  y = np.moveaxis(y, 1, 0)
  z = _area_matrix(x.shape[1], out_w) @ y.reshape(y.shape[0], -1)
  z = np.moveaxis(z.reshape((out_w, out_h) + x.shape[2:]), 0, 1)
  return z.astype(np.float32)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights: overlap of output cell [i, i+1)*s with input cell [j, j+1)."""
  s = n_in / n_out
  lo = np.arange(n_out)[:, None] * s
  hi = lo + s
  j = np.arange(n_in)[None, :]
  overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
  return overlap / overlap.sum(axis=1, keepdims=True)


def nearest_resize(mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  """cv2 INTER_NEAREST: out[i, j] = in[floor(i * H / out_h), floor(j * W / out_w)]."""
  h, w = mask.shape[:2]
  rows = np.minimum((np.arange(out_h) * (h / out_h)).astype(np.int64), h - 1)
  cols = np.minimum((np.arange(out_w) * (w / out_w)).astype(np.int64), w - 1)
  return mask[rows][:, cols]


def crop_image(image: np.ndarray, crop: Crop, out_size: int = 256) -> np.ndarray:
  """[H, W, 3] float image -> the crop resized to [out_size, out_size, 3] (area)."""
  return area_resize(image[crop.y_start:crop.y_end, crop.x_start:crop.x_end], out_size, out_size)


def absolute_boxes(crops: list[Crop], full_size: tuple[int, int]) -> list[np.ndarray]:
  """The nested crop boxes in original-image coordinates (convert_iterative_bboxes_to_absolute).

  Returns one int32 [x0, y0, x1, y1] per level, the full image first."""
  h, w = full_size
  boxes = [np.array([0, 0, w, h], np.float32)] + [
      np.array([c.x_start, c.y_start, c.x_end, c.y_end], np.float32) for c in crops]
  ratios = [1.0] + [c.ratio for c in crops]
  out, offset, scale = [], np.zeros(2, np.float32), 1.0
  for i, box in enumerate(boxes):
    if i > 0:  # box i is in the frame of crop i-1, which was scaled by ratios[i-1]
      scale *= 1 / ratios[i - 1]
    b = box * np.float32(scale)
    b[[0, 2]] += offset[0]
    b[[1, 3]] += offset[1]
    out.append(b)
    offset = b[:2]
  return [np.round(b).astype(np.int32) for b in out]


def paste_segment(segment: np.ndarray, box: np.ndarray, full_size: tuple[int, int]) -> np.ndarray:
  """Resizes a crop's [h, w] segment to its box (nearest) and pastes it into zeros [H, W]."""
  h, w = full_size
  x0, y0, x1, y1 = (int(v) for v in box)
  cw, ch = min(x1, w) - x0, min(y1, h) - y0
  out = np.zeros((h, w), segment.dtype)
  out[y0:y0 + ch, x0:x0 + cw] = nearest_resize(segment, ch, cw)
  return out


def sample_distant_point(segment: np.ndarray, point: tuple[int, int], rng: np.random.Generator,
                         min_dist: float = 9, max_dist: float = 50,
                         max_tries: int = 100) -> tuple[int, int] | None:
  """A point of `segment` (value 1) between min_dist and max_dist px from `point`, or None.

  As sample_distant_point_on_segment: uniform angle and radius, rounded offsets, 100 tries."""
  h, w = segment.shape
  x0, y0 = point
  for _ in range(max_tries):
    angle = rng.random() * 2 * np.pi
    radius = rng.uniform(min_dist, max_dist)
    dy, dx = int(round(radius * np.sin(angle))), int(round(radius * np.cos(angle)))
    x, y = x0 + dx, y0 + dy
    if 0 <= y < h and 0 <= x < w and segment[y, x] == 1:
      return int(x), int(y)
  return None
