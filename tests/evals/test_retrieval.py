"""Retrieval metrics on hand-built score matrices, the blocked NSI score, slot-mask pictures."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from spelke_jax.evals import retrieval
from spelke_jax.models import nsi


def test_perfect_and_reversed_rankings():
  m = retrieval.retrieval_metrics(np.eye(12) * 5)
  assert all(m[f"{d}_R@{k}"] == 1.0 for d in ("img2schema", "schema2img") for k in (1, 5, 10))
  assert m["img2schema_mean_rank"] == 1.0 and m["chance_R@5"] == 5 / 12 and m["num"] == 12
  # Correct candidate always scored lowest -> rank N - 1 for every query.
  s = np.ones((12, 12)) - np.eye(12)
  np.testing.assert_array_equal(retrieval.ranks(s), np.full(12, 11))
  assert retrieval.recall_at(s) == {1: 0.0, 5: 0.0, 10: 0.0}


def test_known_ranks_both_directions():
  s = np.array([[0.9, 0.1, 0.5, 0.0],    # image 0: its schema first             -> rank 0
                [0.8, 0.7, 0.9, 0.1],    # image 1: 0.7 < 0.8, 0.9                -> rank 2
                [0.1, 0.2, 0.3, 0.4],    # image 2: 0.3 < 0.4                     -> rank 1
                [0.0, 0.0, 0.0, 0.2]])   # image 3                                -> rank 0
  np.testing.assert_array_equal(retrieval.ranks(s), [0, 2, 1, 0])
  # schema j ranks images by column j: col 0 [.9 .8 .1 0] -> 0; col 1 [.1 .7 .2 0] -> 0;
  # col 2 [.5 .9 .3 0] -> 2; col 3 [0 .1 .4 .2] -> 1.
  np.testing.assert_array_equal(retrieval.ranks(s.T), [0, 0, 2, 1])
  m = retrieval.retrieval_metrics(s, ks=(1, 2, 3))
  assert m["img2schema_R@1"] == 0.5 and m["img2schema_R@2"] == 0.75 and m["img2schema_R@3"] == 1
  assert m["schema2img_R@1"] == 0.5 and m["schema2img_R@2"] == 0.75
  assert m["img2schema_mean_rank"] == pytest.approx(1 + 3 / 4)
  assert m["chance_R@3"] == 0.75 and retrieval.retrieval_metrics(s)["chance_R@10"] == 1.0


def test_ties_are_broken_by_candidate_index():
  n = 20
  const = np.zeros((n, n))
  np.testing.assert_array_equal(retrieval.ranks(const), np.arange(n))   # stable order
  r = retrieval.recall_at(const)
  assert r == {1: 1 / n, 5: 5 / n, 10: 10 / n}                        # exactly chance
  s = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [2.0, 0.0, 2.0]])
  # query 0 ties with 1 (higher index) -> 0; query 1 ties with 0 (lower) -> 1; query 2 ties 0.
  np.testing.assert_array_equal(retrieval.ranks(s), [0, 1, 1])
  order = np.argsort(-s, axis=1, kind="stable")                        # same as a stable sort
  np.testing.assert_array_equal([int(np.nonzero(order[i] == i)[0][0]) for i in range(3)],
                                retrieval.ranks(s))


def test_bad_matrices():
  with pytest.raises(ValueError, match="NaN"):
    retrieval.ranks(np.array([[np.nan, 0.0], [0.0, 1.0]]))
  with pytest.raises(ValueError, match="square"):
    retrieval.retrieval_metrics(np.zeros((2, 3)))


def test_blocked_score_matrix_is_the_nsi_score():
  rng = np.random.default_rng(0)
  slots = rng.normal(size=(37, 4, 8)).astype(np.float32)
  progs = rng.normal(size=(37, 10, 8)).astype(np.float32)
  mask = np.arange(10)[None] < rng.integers(1, 11, 37)[:, None]
  got = retrieval.score_matrix(slots, progs, mask, block=16)
  want = nsi.slot_program_score(jnp.asarray(slots), jnp.asarray(progs), jnp.asarray(mask))
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-4)


def test_slot_mask_figure(tmp_path):
  images = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  masks = np.zeros((2, 3, 4, 4), np.float32)
  masks[:, 0, :2] = 1
  masks[:, 1, 2:] = 1
  fig = retrieval.slot_mask_figure(images, masks, pad=2)
  assert fig.dtype == np.uint8 and fig.shape == (2 * 16 + 2, 5 * 16 + 4 * 2, 3)
  third = fig[:16, 4 * 18:4 * 18 + 16]             # slot 2: empty mask -> white
  assert (third == 255).all()
  first = fig[:16, 2 * 18:2 * 18 + 16]             # slot 0: top half shows the image
  np.testing.assert_array_equal(first[:8], np.round(images[0, :8] * 255).astype(np.uint8))
  assert (first[8:] == 255).all()
  path = retrieval.save_slot_masks(tmp_path / "m.png", images, masks)
  assert path.exists()
