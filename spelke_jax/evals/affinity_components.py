"""Is it the affinities or the grouping? Plain connected components of a full affinity matrix,
a reference grouping to hold KProp + Competition against (tools/eisen_grouping_diagnostic.py).

Affinities here are what KProp sees: softmax over a row's logits divided by the row max
(models/eisen.py `softmax_max_norm`), in [0, 1], 1 for a node's most affine partners.
"""
from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph


def neighbour_mask(h: int, w: int) -> np.ndarray:
  """bool [h*w, h*w]: node pairs (row-major) at most one cell apart in y and x (8-neighbours
  and the node itself)."""
  yy, xx = np.divmod(np.arange(h * w), w)
  return (np.abs(yy[:, None] - yy[None]) <= 1) & (np.abs(xx[:, None] - xx[None]) <= 1)


def threshold_components(affinity: np.ndarray, h: int, w: int, thresh: float, *,
                         neighbours_only: bool = False) -> np.ndarray:
  """affinity [N, N] (N = h*w, row-major nodes, values in [0, 1]) -> int32 [h, w] labels 1..K.

  Two nodes are joined when both directions exceed `thresh` (min-symmetrised), over all pairs
  or only 8-neighbours; the labels are the connected components of that graph."""
  a = np.asarray(affinity)
  if a.ndim != 2 or a.shape != (h * w, h * w):
    raise ValueError(f"affinity must be [h*w, h*w] = [{h * w}, {h * w}], got {a.shape}")
  if not 0.0 <= thresh <= 1.0:
    raise ValueError(f"thresh must lie in [0, 1] (affinities are softmax / row max), got {thresh}")
  edges = np.minimum(a, a.T) > thresh
  if neighbours_only:
    edges &= neighbour_mask(h, w)
  _, labels = csgraph.connected_components(sparse.csr_matrix(edges), directed=False)
  return (labels.reshape(h, w) + 1).astype(np.int32)
