"""Zero-shot grouping (segments_from_affinities) end to end on non-square maps, from logits,
from cosine affinities of features, and with replayed draws; shape errors."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from spelke_jax.evals import matched_miou as mm
from spelke_jax.grouping import kprop as kp
from spelke_jax.grouping import pipeline as pl

H, W, K, S = 12, 20, 5, 40


def _scene():
  labels = np.zeros((H, W), int)
  labels[:, 5:] = 1
  labels[3:9, 11:16] = 2
  return labels


def _sample_idx(seed, b=1):
  """K x K window (sentinel N outside) + uniform global samples, [b, N, S]."""
  return kp.synthetic_sample_idx(jax.random.key(seed), b, H, W, S, K)


def _label_logits(labels, idx, strength=5.0):
  n = labels.size
  flat = labels.reshape(-1)
  other = np.concatenate([flat, [-1]])[np.asarray(idx)]
  logits = np.where(flat[None, :, None] == other, strength, -strength).astype(np.float32)
  return np.where(np.asarray(idx) < n, logits, 0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_non_square_from_logits(seed):
  labels = _scene()
  idx = _sample_idx(seed)
  out = pl.segments_from_affinities(_label_logits(labels, idx), idx, h=H, w=W,
                                    key=jax.random.key(seed), num_masks=8, min_area=4)
  assert out.plateau.shape == (1, H, W, 32) and out.masks.shape == (1, H, W, 8)
  assert out.segments.shape == (1, H, W) and out.instance_seg.shape == (1, H, W)
  assert mm.image_miou(labels + 1, out.segments[0])[0] == pytest.approx(1.0)


def test_cosine_affinities_group_features():
  labels = _scene()
  rng = np.random.default_rng(0)
  protos = rng.normal(size=(3, 16))
  feats = protos[labels.reshape(-1)] + 0.05 * rng.normal(size=(H * W, 16))
  idx = _sample_idx(3, b=2)
  logits = pl.cosine_affinities(np.stack([feats, -feats]), idx, temperature=0.1)
  assert logits.shape == (2, H * W, S)
  assert float(np.asarray(logits)[np.asarray(idx) == H * W].max(initial=0)) == 0.0
  out = pl.segments_from_affinities(logits, idx, h=H, w=W, key=jax.random.key(1),
                                    num_masks=8, min_area=4)
  for b in range(2):
    assert mm.image_miou(labels + 1, out.segments[b])[0] == pytest.approx(1.0)


def test_replayed_draws_are_deterministic():
  labels = _scene()
  idx = _sample_idx(0)
  logits = _label_logits(labels, idx)
  key = jax.random.key(5)
  a = pl.segments_from_affinities(logits, idx, h=H, w=W, key=key, num_masks=8)
  h0 = kp.init_plateau(jax.random.key(9), 1, H * W, 32)
  b = pl.segments_from_affinities(
      kp.affinities_from_logits(logits), idx, h=H, w=W, kind="adj", h0=h0,
      seed_idx=np.array([7]), draws=list(a.competition.draws), key=key, num_masks=8)
  assert b.competition.draws.shape == (4, 1, 8, 2)
  np.testing.assert_array_equal(np.asarray(b.competition.draws),
                                np.asarray(a.competition.draws))


def test_errors():
  labels = _scene()
  idx = _sample_idx(0)
  logits = _label_logits(labels, idx)
  with pytest.raises(ValueError, match="h\\*w"):
    pl.segments_from_affinities(logits, idx, h=W, w=W, key=jax.random.key(0))
  with pytest.raises(ValueError, match="Q = 8"):
    pl.segments_from_affinities(logits, idx, h=H, w=W, key=jax.random.key(0),
                                h0=np.ones((1, H * W, 8), np.float32) / 8)
  with pytest.raises(ValueError, match="sample_idx shape"):
    pl.segments_from_affinities(logits, idx[:, :, :10], h=H, w=W, key=jax.random.key(0))
  with pytest.raises(ValueError, match="key"):
    pl.segments_from_affinities(logits, idx, h=H, w=W)
  with pytest.raises(ValueError, match="kind"):
    pl.segments_from_affinities(logits, idx, h=H, w=W, kind="probs", key=jax.random.key(0))
  with pytest.raises(ValueError, match="features"):
    pl.cosine_affinities(np.ones((H * W, 4)), idx)
