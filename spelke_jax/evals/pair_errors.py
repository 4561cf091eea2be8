"""How well an id map groups pixels, counted over ordered pixel pairs (for training targets).

For a target id map t (0 = no group) and ground-truth ids g over a set V of valid pixels,
n = |V|, every ordered pair (a, b) in V x V is

  merged  when t(a) = t(b) > 0 and g(a) != g(b)   (the target connects two objects)
  split   when g(a) = g(b) and not t(a) = t(b) > 0 (the target separates one object)

and `pair_errors` returns both counts divided by n^2. Computed from the contingency table of
(t, g) in O(n), never n x n: with n_tg the pixels of V with ids (t, g),

  merged = (sum_{t>0} n_t^2 - sum_{t>0,g} n_tg^2) / n^2,  split = (sum_g n_g^2 - sum_{t>0,g} n_tg^2) / n^2.

Used by tools/eisen_target_quality.py to compare EISEN's motion and explaining-away targets with
the synthetic world's instance ids before spending a training run on them.
"""
from __future__ import annotations

import numpy as np


def pair_errors(target_ids, gt_ids, valid=None) -> tuple[float, float]:
  """(merged, split) fractions of ordered pairs of valid pixels, each in [0, 1].

  target_ids, gt_ids: int [H, W] (any equal shapes); target id 0 connects nothing. valid: bool of
  the same shape (default: every pixel). No valid pixel -> (0.0, 0.0)."""
  t = np.asarray(target_ids)
  g = np.asarray(gt_ids)
  if t.shape != g.shape:
    raise ValueError(f"target_ids {t.shape} and gt_ids {g.shape} differ in shape")
  for name, a in (("target_ids", t), ("gt_ids", g)):
    if not np.issubdtype(a.dtype, np.integer):
      raise ValueError(f"{name} must be integer ids, got {a.dtype}")
  if valid is None:
    valid = np.ones(t.shape, bool)
  valid = np.asarray(valid)
  if valid.shape != t.shape or valid.dtype != bool:
    raise ValueError(f"valid must be bool {t.shape}, got {valid.dtype} {valid.shape}")
  if t.size and t.min() < 0:
    raise ValueError(f"target_ids must be >= 0, got min {t.min()}")
  t, g = t[valid].astype(np.int64), g[valid].astype(np.int64)
  n = t.size
  if n == 0:
    return 0.0, 0.0
  _, g = np.unique(g, return_inverse=True)
  _, t_idx = np.unique(t, return_inverse=True)
  grouped = t > 0
  joint = np.bincount(t_idx[grouped] * (g.max() + 1) + g[grouped]).astype(np.float64)
  same_both = float(np.sum(joint ** 2))
  same_t = float(np.sum(np.bincount(t_idx[grouped]).astype(np.float64) ** 2))
  same_g = float(np.sum(np.bincount(g).astype(np.float64) ** 2))
  return (same_t - same_both) / n ** 2, (same_g - same_both) / n ** 2
