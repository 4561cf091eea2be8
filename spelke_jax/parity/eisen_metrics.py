"""Parity runner for the `eisen_metrics` fixture packs (EISEN's matched mIoU, numpy only)."""
from __future__ import annotations

import numpy as np

from spelke_jax.evals import matched_miou as mm
from spelke_jax.parity.pack import FixturePack


def run(pack: FixturePack) -> dict[str, np.ndarray]:
  """gt [N,HG,WG], pred [N,HP,WP] -> miou_per_image [N], best_iou [N,G] (NaN-padded to the
  largest GT object count), num_gt_objects [N], dataset_miou, batch_metric_all,
  batch_metric_nonempty."""
  gt, pred = np.asarray(pack["gt"]), np.asarray(pack["pred"])
  if gt.ndim != 3 or pred.ndim != 3 or len(gt) != len(pred):
    raise ValueError(f"eisen_metrics pack: gt [N,HG,WG] and pred [N,HP,WP] expected, got "
                     f"{gt.shape} and {pred.shape}")
  rows = [mm.image_miou(g, p) for g, p in zip(gt, pred)]
  num_gt = np.asarray([r[2] for r in rows], np.int64)
  width = int(num_gt.max()) if len(num_gt) else 0
  best = np.full((len(rows), width), np.nan, np.float64)
  for i, (_, b, k) in enumerate(rows):
    best[i, :k] = b
  nonempty = num_gt > 0
  return {
      "miou_per_image": np.asarray([r[0] for r in rows], np.float64),
      "best_iou": best,
      "num_gt_objects": num_gt,
      "dataset_miou": np.asarray(mm.dataset_miou(rows), np.float64),
      "batch_metric_all": np.asarray(mm.batch_metric(gt, pred), np.float64),
      "batch_metric_nonempty": np.asarray(mm.batch_metric(gt[nonempty], pred[nonempty]),
                                          np.float64),
  }
