"""evals/pair_errors.py: the O(n) contingency count equals the n x n pair count."""
from __future__ import annotations

import numpy as np
import pytest

from spelke_jax.evals.pair_errors import pair_errors


def _brute(t, g, valid):
  a, b = t[valid], g[valid]
  n = max(a.size, 1)
  same_t = (a[:, None] == a[None]) & (a[:, None] > 0)
  same_g = b[:, None] == b[None]
  return (same_t & ~same_g).sum() / n ** 2, (same_g & ~same_t).sum() / n ** 2


def test_equals_the_pairwise_count_on_random_maps():
  rng = np.random.default_rng(0)
  for _ in range(100):
    h, w = rng.integers(1, 9, 2)
    t = rng.integers(0, 4, (h, w))
    g = rng.integers(0, 3, (h, w)) * 7
    valid = rng.random((h, w)) < 0.7
    np.testing.assert_allclose(pair_errors(t, g, valid), _brute(t, g, valid), atol=1e-12)


def test_hand_cases():
  g = np.array([[1, 1, 2, 2]])
  assert pair_errors(np.array([[5, 5, 5, 5]]), g) == (0.5, 0.0)     # one id over two objects
  assert pair_errors(np.array([[1, 2, 3, 4]]), g) == (0.0, 0.25)    # every pixel alone
  assert pair_errors(np.array([[3, 3, 0, 0]]), g) == (0.0, 0.25)    # id 0 connects nothing
  assert pair_errors(np.array([[3, 3, 4, 4]]), g) == (0.0, 0.0)     # ids are only labels
  assert pair_errors(g, g, np.zeros(g.shape, bool)) == (0.0, 0.0)


def test_bad_input():
  g = np.zeros((2, 2), np.int32)
  with pytest.raises(ValueError, match="differ in shape"):
    pair_errors(np.zeros((2, 3), np.int32), g)
  with pytest.raises(ValueError, match="integer"):
    pair_errors(np.zeros((2, 2)), g)
  with pytest.raises(ValueError, match=">= 0"):
    pair_errors(-np.ones((2, 2), np.int32), g)
  with pytest.raises(ValueError, match="valid"):
    pair_errors(g, g, np.ones((2, 2), np.int32))
