"""EISEN's matched mIoU (`measure_static_segmentation_metric` with eval_full_res=True).

Per image: predicted ids (cast to int32, then through float32 as the reference's
F.interpolate does: exact below 2**24) are nearest-upsampled to the GT size (torch 'nearest':
src = floor(dst * (float32(HP) / HG)) in float32, exact copies for equal or doubled sizes),
shifted by their minimum; GT id 0 is dropped; every predicted id (also the one that becomes 0)
is a candidate; IoU matrix [num_gt, num_pred] in float32; Hungarian matching on 1 - IoU
(scipy); unmatched GT objects score 0; the image score is the nanmean over GT objects (NaN when
the GT holds no object). The training script aggregates a dataset with np.nanmean over images;
one call on a batch (what EISEN.forward reports) takes np.mean over its images.
"""
from __future__ import annotations

import warnings
from typing import Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment


def nearest_indices(src: int, dst: int) -> np.ndarray:
  """Source index of each of `dst` outputs for torch's 'nearest' resize of `src` inputs."""
  out = np.arange(dst)
  if dst == src:
    return out
  if dst == 2 * src:
    return out >> 1
  scale = np.float32(np.float32(src) / np.float32(dst))
  idx = np.floor(out.astype(np.float32) * scale).astype(np.int64)
  return np.minimum(idx, src - 1)


def upsample_nearest(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """pred [HP,WP] -> [HG,WG] with torch 'nearest' indexing."""
  pred = np.asarray(pred)
  rows = nearest_indices(pred.shape[0], size[0])
  cols = nearest_indices(pred.shape[1], size[1])
  return pred[rows[:, None], cols[None, :]]


def cell_centred_indices(src: int, dst: int) -> np.ndarray:
  """Source cell of each of `dst` outputs when cell i stands for output position i * dst / src
  (where torch 'nearest' downsampling samples it): the nearest such centre,
  min(floor(o * src / dst + 1/2), src - 1). For stride 4: outputs 4i-2 .. 4i+1 -> cell i."""
  out = np.arange(dst, dtype=np.float64)
  return np.minimum(np.floor(out * (src / dst) + 0.5).astype(np.int64), src - 1)


def upsample_cell_centred(pred: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """pred [HP,WP,...] -> [HG,WG,...], each output taking the cell whose sample position is nearest.

  EISEN's targets are the labels at torch-'nearest' positions (cell i = pixel floor(i * stride)),
  so a cell's segment id describes that pixel, the top-left of its stride x stride block; torch
  'nearest' upsampling (`upsample_nearest`, the original's evaluation) paints it over the block
  to its bottom-right, shifting every segment by (stride - 1) / 2 px. This upsampling centres the
  block on the sampled pixel instead (ours, not the original's)."""
  pred = np.asarray(pred)
  if pred.ndim < 2 or len(size) != 2:
    raise ValueError(f"pred must be [H, W, ...] and size (H, W), got {pred.shape} and {size}")
  rows = cell_centred_indices(pred.shape[0], size[0])
  cols = cell_centred_indices(pred.shape[1], size[1])
  return pred[rows[:, None], cols[None, :]]


def iou_matrix(gt: np.ndarray, pred: np.ndarray, gt_ids: np.ndarray,
               pred_ids: np.ndarray) -> np.ndarray:
  """[len(gt_ids), len(pred_ids)] IoU of each (GT id, predicted id) pair, computed in float64
  and stored as float32 (like the reference). gt_ids / pred_ids sorted; pixels of gt holding
  another id are ignored, every pred pixel must hold one of pred_ids."""
  gt, pred = np.asarray(gt).ravel(), np.asarray(pred).ravel()
  ng, npred = len(gt_ids), len(pred_ids)
  p = np.searchsorted(pred_ids, pred)
  g = np.searchsorted(gt_ids, gt)
  keep = (g < ng) & (np.asarray(gt_ids)[np.minimum(g, max(ng - 1, 0))] == gt) if ng else \
      np.zeros(gt.shape, bool)
  inter = np.zeros((ng, npred), np.float64)
  np.add.at(inter, (g[keep], p[keep]), 1.0)
  gsize = np.bincount(g[keep], minlength=ng).astype(np.float64)
  psize = np.bincount(p, minlength=npred).astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    iou = inter / (gsize[:, None] + psize[None, :] - inter)
  return np.nan_to_num(iou, nan=0.0).astype(np.float32)


def image_miou(gt: np.ndarray, pred: np.ndarray) -> tuple[float, np.ndarray, int]:
  """gt [HG,WG] int (0 = background), pred [HP,WP] int (any ids) ->
  (mIoU float (NaN without GT objects), best IoU per GT object [G] float64 in sorted id order,
  G)."""
  gt = np.asarray(gt)
  pred = np.asarray(pred)
  if gt.ndim != 2 or pred.ndim != 2:
    raise ValueError(f"gt and pred must be [H, W], got {gt.shape} and {pred.shape}")
  # the reference casts pred to int32, resizes it as float32 and casts back (ids >= 2**24 round)
  pred = pred.astype(np.int32).astype(np.float32).astype(np.int64)
  pred = upsample_nearest(pred, gt.shape)
  pred = pred - pred.min()
  gt_ids = np.array([o for o in np.unique(gt) if o != 0], dtype=gt.dtype)
  pred_ids = np.unique(pred)
  ious = iou_matrix(gt, pred, gt_ids, pred_ids)
  gi, pi = linear_sum_assignment(1.0 - ious)
  best = np.zeros(len(gt_ids), np.float64)
  best[gi] = ious[gi, pi]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    miou = float(np.nanmean(best)) if len(best) else float("nan")
  return miou, best, len(gt_ids)


def dataset_miou(rows: Iterable) -> float:
  """np.nanmean over per-image mIoUs (floats, or image_miou tuples / dicts with 'mIoU')."""
  vals = []
  for r in rows:
    if isinstance(r, dict):
      r = r["mIoU"]
    elif isinstance(r, tuple):
      r = r[0]
    vals.append(float(r))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    return float(np.nanmean(np.asarray(vals, np.float64))) if vals else float("nan")


def per_image_miou(gt_batch: np.ndarray, pred_batch: np.ndarray) -> np.ndarray:
  """[B] float64 image mIoUs of gt [B,HG,WG], pred [B,HP,WP]."""
  gt_batch, pred_batch = np.asarray(gt_batch), np.asarray(pred_batch)
  if gt_batch.ndim != 3 or pred_batch.ndim != 3 or len(gt_batch) != len(pred_batch):
    raise ValueError(f"gt [B,HG,WG] and pred [B,HP,WP] with the same B expected, got "
                     f"{gt_batch.shape} and {pred_batch.shape}")
  return np.asarray([image_miou(g, p)[0] for g, p in zip(gt_batch, pred_batch)], np.float64)


def batch_metric(gt_batch: np.ndarray, pred_batch: np.ndarray) -> float:
  """The value EISEN's forward reports for a batch: np.mean over images (NaN if one has no GT
  object)."""
  return float(np.mean(per_image_miou(gt_batch, pred_batch)))
