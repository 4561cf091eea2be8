"""SpelkeBench metrics, as the original's `evaluate_folder.py` / `evaluate_AP_AR_single_image`.

Per image with M ground-truth masks and N predicted masks:
  iou[M,N]   = |gt & pred| / |gt | pred|  (float64)
  (g, p)     = scipy.optimize.linear_sum_assignment(1 - iou)  (min(M,N) Hungarian pairs)
  AR         = mean_t count(iou[g,p] >= t) / M,  t in THRESHOLDS (9 values, 0.95 excluded)
  AP         = mean_t count(iou[g,p] >= t) / N   (0 when N == 0)
  mIoU       = mean over gt of iou.max(axis=1)   (best prediction per gt, NOT the Hungarian
               IoU; the original prints it as "IoU")
Dataset AP / AR / mIoU are plain means over images.

Where the original crashes we return values instead (documented, not silent):
  * N > M: the metric is fine in the original; its plotting loop raises IndexError. We do not
    plot, so such images simply count.
  * N == 0: AP = AR = 0 as the original's metric function returns; the original's mIoU line
    raises ValueError (max over an empty axis). We use mIoU = 0.0 (no prediction covers any gt).
  * M == 0 (never in SpelkeBench, one prediction per gt point): AP = AR = 0 as the original;
    mIoU = nan (the original's mean over no gt, or its ValueError when N == 0 too).
  * An IoU with an empty union (an empty gt against an empty prediction) is 0/0 = nan in the
    original and makes linear_sum_assignment raise; we define it as 0.0.
Masks are compared as booleans (`!= 0`); the original's bitwise `&` / `|` equals that for 0/1
masks (what it stores) but would be wrong for 0/255 masks mixed with 0/1 ones.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

# Exactly the original's expression: [0.5, 0.55, 0.6000000000000001, ..., 0.9000000000000004].
# An IoU of exactly 0.6 or 0.7 therefore does not reach the third / fifth threshold.
THRESHOLDS = np.arange(start=0.50, stop=0.95, step=0.05)


def _as_mask_stack(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 3:
    raise ValueError(f"{name}: expected a [K,H,W] mask stack, got shape {x.shape}")
  return x != 0


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
  """gt [M,H,W], pred [N,H,W] (bool or 0/1) -> [M,N] float64 IoU (0 where the union is empty)."""
  g = _as_mask_stack(gt, "gt")
  p = _as_mask_stack(pred, "pred")
  if g.shape[1:] != p.shape[1:]:
    raise ValueError(f"gt masks are {g.shape[1:]} but predictions are {p.shape[1:]}")
  hw = int(np.prod(g.shape[1:]))
  gf = g.reshape(g.shape[0], hw).astype(np.float64)
  pf = p.reshape(p.shape[0], hw).astype(np.float64)
  # Counts are integers far below 2**53: the float64 products are exact.
  inter = gf @ pf.T
  union = gf.sum(1)[:, None] + pf.sum(1)[None, :] - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = inter / union
  return np.where(union > 0, iou, 0.0)


def match(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[M,N] IoU -> (gt_idx, pred_idx) int64 [min(M,N)]: Hungarian matching on 1 - iou."""
  iou = np.asarray(iou, dtype=np.float64)
  if iou.ndim != 2:
    raise ValueError(f"match expects an [M,N] matrix, got shape {iou.shape}")
  g, p = linear_sum_assignment(1. - iou)
  return g.astype(np.int64), p.astype(np.int64)


def ap_ar(matched_iou: np.ndarray, num_gt: int, num_pred: int,
          thresholds: np.ndarray = THRESHOLDS) -> tuple[float, float]:
  """Matched IoUs [K] -> (AP, AR) averaged over `thresholds` (comparisons are >=)."""
  ious = np.asarray(matched_iou, dtype=np.float64)
  tp = np.array([np.count_nonzero(ious >= t) for t in thresholds], dtype=np.int64)
  precisions = tp / num_pred if num_pred > 0 else np.zeros(len(thresholds))
  recalls = tp / num_gt if num_gt > 0 else np.zeros(len(thresholds))
  return float(np.mean(precisions)), float(np.mean(recalls))


def image_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
  """gt [M,H,W], pred [N,H,W] -> dict(AP, AR, mIoU, iou [M,N], assignment (gt_idx, pred_idx),
  matched_iou [min(M,N)], num_gt, num_pred, thresholds)."""
  iou = iou_matrix(gt, pred)
  m, n = iou.shape
  g, p = match(iou)
  matched = iou[g, p]
  ap, ar = ap_ar(matched, m, n)
  if m == 0:
    miou = float("nan")
  elif n == 0:
    miou = 0.0
  else:
    miou = float(np.mean(iou.max(-1)))
  return {"AP": ap, "AR": ar, "mIoU": miou, "iou": iou, "assignment": (g, p),
          "matched_iou": matched, "num_gt": m, "num_pred": n, "thresholds": THRESHOLDS}


def dataset_metrics(per_image: Sequence[Mapping[str, Any]]) -> dict[str, float]:
  """Rows with AP / AR / mIoU -> dict(AR, AP, mIoU) = plain means over images (float64)."""
  if not per_image:
    raise ValueError("dataset_metrics: no images")
  return {k: float(np.mean([float(r[k]) for r in per_image])) for k in ("AR", "AP", "mIoU")}


_PRED_KEYS = ("segment_pred",)
_GT_KEYS = ("segment_gt",)
_POINT_KEYS = ("probe_points", "probe_point")


def _read_prediction_file(fn: str) -> dict[str, Any]:
  import h5py  # pylint: disable=g-import-not-at-top
  try:
    f = h5py.File(fn, "r")
  except OSError as e:
    raise OSError(f"{fn}: cannot open as HDF5 ({e})") from e
  with f:
    out = {}
    for key in ("segment_pred", "segment_gt"):
      if key not in f:
        raise KeyError(f"{fn}: no dataset {key!r} (keys: {sorted(f.keys())})")
      out[key] = f[key][()]
    out["probe_points"] = None
    for key in _POINT_KEYS:
      if key in f:
        out["probe_points"] = f[key][()]
        break
  return out


def evaluate_folder(folder: str | os.PathLike) -> dict[str, Any]:
  """Every `*.h5` of `folder` (as written by run_inference: segment_pred [N,H,W],
  segment_gt [M,H,W], probe_points, image) -> dict(AR, AP, mIoU, num_images, per_image).

  Files are taken in sorted name order (the original's unsorted glob order only changes the
  last bits of the means). Rows: name, AP, AR, mIoU, num_gt, num_pred.
  """
  folder = os.fspath(folder)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"prediction folder {folder} does not exist")
  files = sorted(glob.glob(os.path.join(folder, "*.h5")))
  if not files:
    raise ValueError(f"no .h5 prediction files in {folder}")
  rows = []
  for fn in files:
    data = _read_prediction_file(fn)
    try:
      r = image_metrics(data["segment_gt"], data["segment_pred"])
    except ValueError as e:
      raise ValueError(f"{fn}: {e}") from e
    rows.append({"name": os.path.splitext(os.path.basename(fn))[0], "AP": r["AP"],
                 "AR": r["AR"], "mIoU": r["mIoU"], "num_gt": r["num_gt"],
                 "num_pred": r["num_pred"]})
  out: dict[str, Any] = dataset_metrics(rows)
  out["num_images"] = len(rows)
  out["per_image"] = rows
  return out


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  if isinstance(x, np.generic):
    return x.item()
  return x


def write_metrics_json(path: str | os.PathLike, metrics: Mapping[str, Any]) -> None:
  """Writes `metrics` (top-level AR, mIoU, AP, num_images, per_image) as JSON, atomically:
  a temp file in the same folder, fsync, then os.replace."""
  path = os.fspath(path)
  missing = [k for k in ("AR", "mIoU") if k not in metrics]
  if missing:
    raise KeyError(f"write_metrics_json: metrics lack {missing}")
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(_jsonable(metrics), f, indent=2)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def iter_stacks(masks: np.ndarray, counts: Iterable[int]) -> Iterable[np.ndarray]:
  """Concatenated stack [sum(counts),H,W] + counts -> the per-image stacks, in order."""
  start = 0
  for c in counts:
    c = int(c)
    yield masks[start:start + c]
    start += c
  if start != len(masks):
    raise ValueError(f"counts sum to {start} but the stack holds {len(masks)} masks")
