"""Connected components of a thresholded affinity matrix (the grouping diagnostic's reference)."""
from __future__ import annotations

import numpy as np
import pytest

from spelke_jax.evals import affinity_components as ac


def _block_affinity(labels: np.ndarray, inside: float = 0.9, outside: float = 0.1) -> np.ndarray:
  flat = labels.ravel()
  return np.where(flat[:, None] == flat[None], inside, outside)


def test_components_recover_the_blocks_and_respect_the_threshold():
  labels = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3]])
  a = _block_affinity(labels)
  got = ac.threshold_components(a, 3, 4, 0.5)
  # same partition as the blocks (labels may be renumbered)
  assert len(np.unique(got)) == 3
  for k in (1, 2, 3):
    assert len(np.unique(got[labels == k])) == 1
  # one direction above the threshold is not enough (min-symmetrised)
  a[0, 2] = 0.95
  assert len(np.unique(ac.threshold_components(a, 3, 4, 0.5))) == 3
  assert len(np.unique(ac.threshold_components(a, 3, 4, 0.95))) == 12   # nothing joined
  assert len(np.unique(ac.threshold_components(a, 3, 4, 0.05))) == 1    # everything joined


def test_neighbours_only_splits_distant_nodes_of_one_label():
  labels = np.array([[1, 2, 1]])          # the two 1s are not 8-neighbours
  a = _block_affinity(labels)
  assert len(np.unique(ac.threshold_components(a, 1, 3, 0.5))) == 2
  assert len(np.unique(ac.threshold_components(a, 1, 3, 0.5, neighbours_only=True))) == 3
  mask = ac.neighbour_mask(2, 2)
  assert mask.all()                       # every cell of a 2 x 2 map touches every other


def test_bad_inputs_are_named():
  with pytest.raises(ValueError, match=r"affinity must be \[h\*w, h\*w\]"):
    ac.threshold_components(np.zeros((5, 5)), 2, 3, 0.5)
  with pytest.raises(ValueError, match="thresh must lie in"):
    ac.threshold_components(np.zeros((6, 6)), 2, 3, 1.5)
