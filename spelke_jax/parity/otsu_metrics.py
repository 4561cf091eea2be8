"""Parity runners for the `otsu` and `spelkebench_metrics` fixture packs (numpy only)."""
from __future__ import annotations

import numpy as np

from spelke_jax.evals import spelkebench as sb
from spelke_jax.inference import otsu
from spelke_jax.parity.pack import FixturePack


def run_otsu(pack: FixturePack) -> dict[str, np.ndarray]:
  """Every `maps_<s>` [n,H,W] float32 -> `u8_<s>` [n,H,W] uint8, `threshold_<s>` [n] float64,
  `segment_<s>` [n,H,W] uint8 (0/1), as `threshold_heatmap`."""
  out: dict[str, np.ndarray] = {}
  names = sorted(k for k in pack.arrays if k.startswith("maps_"))
  if not names:
    raise KeyError(f"otsu pack {pack.path} holds no maps_* array")
  for name in names:
    suffix = name[len("maps_"):]
    maps = np.asarray(pack[name])
    if maps.ndim == 2:
      maps = maps[None]
    u8s, ts, segs = [], [], []
    for m in maps:
      seg, t, u8 = otsu.threshold_heatmap(m)
      u8s.append(u8)
      ts.append(t)
      segs.append(seg.astype(np.uint8))
    out[f"u8_{suffix}"] = np.stack(u8s)
    out[f"threshold_{suffix}"] = np.asarray(ts, dtype=np.float64)
    out[f"segment_{suffix}"] = np.stack(segs)
  return out


def run_metrics(pack: FixturePack) -> dict[str, np.ndarray]:
  """Per-image and dataset SpelkeBench metrics from the concatenated gt / pred stacks."""
  gts = list(sb.iter_stacks(pack["gt_masks"], pack["gt_counts"]))
  preds = list(sb.iter_stacks(pack["pred_masks"], pack["pred_counts"]))
  if len(gts) != len(preds):
    raise ValueError(f"{len(gts)} gt stacks but {len(preds)} prediction stacks")
  rows, iou_flat, ag, ap_, counts = [], [], [], [], []
  for gt, pred in zip(gts, preds):
    r = sb.image_metrics(gt, pred)
    rows.append(r)
    iou_flat.append(r["iou"].reshape(-1))
    g, p = r["assignment"]
    ag.append(g)
    ap_.append(p)
    counts.append(len(g))
  out = {
      "thresholds": np.asarray(sb.THRESHOLDS, dtype=np.float64),
      "iou_flat": np.concatenate(iou_flat).astype(np.float64),
      "assign_gt_flat": np.concatenate(ag).astype(np.int64),
      "assign_pred_flat": np.concatenate(ap_).astype(np.int64),
      "assign_counts": np.asarray(counts, dtype=np.int64),
      "per_image_AP": np.asarray([r["AP"] for r in rows], dtype=np.float64),
      "per_image_AR": np.asarray([r["AR"] for r in rows], dtype=np.float64),
      "per_image_mIoU": np.asarray([r["mIoU"] for r in rows], dtype=np.float64),
  }
  means = sb.dataset_metrics(rows)
  for k in ("AP", "AR", "mIoU"):
    out[f"mean_{k}"] = np.asarray(means[k], dtype=np.float64)
  if "zero_pred_gt_index" in pack.arrays:
    gt = gts[int(pack["zero_pred_gt_index"])]
    z = sb.image_metrics(gt, np.zeros((0,) + gt.shape[1:], dtype=gt.dtype))
    out["zero_pred_AP"] = np.asarray(z["AP"], dtype=np.float64)
    out["zero_pred_AR"] = np.asarray(z["AR"], dtype=np.float64)
  return out
