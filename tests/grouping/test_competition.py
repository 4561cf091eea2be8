"""Competition: replay of the recorded draws and noise, a hand-made two-region plateau, the
soft_index / Sobel conventions, key-driven sampling, shape errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spelke_jax.grouping import competition as cp
from spelke_jax.parity import compare, load_pack
from tests.fixture_packs import pack_params


@pytest.mark.parametrize("pack", pack_params("eisen_grouping"))
def test_replays_pack(pack):
  pack = load_pack(pack)
  cfg = pack.config["EISEN"]
  h, w = cfg["affinity_res"]
  m, r = cfg["num_masks"], cfg["num_competition_rounds"]
  plateau = pack["plateau_all"][-1].reshape(pack["plateau_all"].shape[1], h, w, -1)
  res = cp.competition(plateau, num_masks=m, num_rounds=r,
                       draws=[pack[f"comp_draw_{j}"] for j in range(r + 1)],
                       noise=[pack[f"comp_noise_{j}"] for j in range(r + 1)])
  got = {"comp_round_masks": res.round_masks, "comp_round_fitness": res.round_fitness,
         "comp_round_alive": res.round_alive, "comp_masks": res.masks,
         "comp_agents": res.agents, "comp_alive": res.alive, "comp_phenotypes": res.phenotypes,
         "comp_unharvested": res.unharvested}
  got.update({f"comp_edges_{j}": res.edges[j] for j in range(r + 1)})
  for name, value in got.items():
    c = compare(name, pack[name], np.asarray(value), pack.tolerances[name])
    assert c.ok, c.line()
  np.testing.assert_array_equal(np.asarray(res.draws),
                                np.stack([pack[f"comp_draw_{j}"] for j in range(r + 1)]))
  np.testing.assert_array_equal(np.argmax(np.asarray(res.masks), -1), pack["instance_seg"])


def _two_regions(q, h=16, w=16, split=5):
  labels = np.zeros((h, w), int)
  labels[:, split:] = 1
  return np.eye(q, dtype=np.float32)[labels][None], labels


@pytest.mark.parametrize("q", [4, 32])
def test_two_clean_regions_give_two_segments(q):
  plateau, labels = _two_regions(q)
  for seed in range(3):
    res = cp.competition(plateau, num_masks=8, num_rounds=3, key=jax.random.key(seed))
    seg = np.argmax(np.asarray(res.masks[0]), -1)
    assert len(np.unique(seg)) == 2
    for lab in (0, 1):                                       # each region is one segment
      assert len(np.unique(seg[labels == lab])) == 1
    assert seg[0, 0] != seg[0, -1]
    assert int(res.alive.sum()) == 2


def test_non_square_map():
  labels = np.zeros((12, 20), int)
  labels[:, 5:] = 1
  labels[3:9, 11:16] = 2
  plateau = np.eye(8, dtype=np.float32)[labels][None]
  res = cp.competition(plateau, num_masks=8, num_rounds=3, key=jax.random.key(0))
  assert res.masks.shape == (1, 12, 20, 8) and res.edges.shape == (4, 1, 12, 20)
  seg = np.argmax(np.asarray(res.masks[0]), -1)
  for lab in range(3):
    assert len(np.unique(seg[labels == lab])) == 1
  assert len(np.unique(seg)) == 3


def test_soft_index_conventions():
  img = jnp.arange(4 * 5, dtype=jnp.float32).reshape(1, 4, 5, 1)
  pix = jnp.array([[[1, 2], [0, 3], [3, 4]]])
  vals = np.asarray(cp.soft_index(img, cp.pixels_to_coords(pix, 4, 5)))[0, :, 0]
  # pixel (1, 2) is read at (1 * 4/3, 2 * 5/4) = (1.333, 2.5): bilinear in between
  hh, ww = 4.0 / 3.0, 2.5
  want = ((2 - hh) * (3 - ww) * 7 + (2 - hh) * (ww - 2) * 8 + (hh - 1) * (3 - ww) * 12
          + (hh - 1) * (ww - 2) * 13)
  np.testing.assert_allclose(vals[0], want, rtol=1e-5)
  assert vals[1] == 0.0 and vals[2] == 0.0      # integral coordinates -> zero vector


def test_sobel_matches_direct_correlation():
  x = np.random.default_rng(0).normal(size=(1, 6, 7, 3)).astype(np.float32)
  p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  kx = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32) / 8
  gx = sum(kx[i, j] * p[:, i:i + 6, j:j + 7] for i in range(3) for j in range(3))
  gy = sum(kx.T[i, j] * p[:, i:i + 6, j:j + 7] for i in range(3) for j in range(3))
  want = np.sqrt(gx ** 2 + gy ** 2).sum(-1)
  np.testing.assert_allclose(np.asarray(cp.sobel_edges(jnp.asarray(x))), want, atol=1e-6)


def test_sampling_follows_edges():
  edges = np.zeros((1, 8, 8), np.float32)
  edges[0, 2, 5] = 1.0
  pix = np.asarray(cp.sample_from_edges(jax.random.key(0), jnp.asarray(edges), 16))
  assert (pix[0] == [2, 5]).all()


def test_compete_sticky_rule():
  masks = np.ones((1, 4, 2), np.float32)                    # the two agents overlap fully
  fit = np.array([[0.1, 0.9]], np.float32)
  alive = cp.compete_agents(jnp.asarray(masks), jnp.asarray(fit), jnp.ones((1, 2)))
  np.testing.assert_array_equal(np.asarray(alive), [[0, 1]])  # fitter wins
  alive = cp.compete_agents(jnp.asarray(masks), jnp.asarray(fit), jnp.array([[1.0, 0.0]]))
  np.testing.assert_array_equal(np.asarray(alive), [[1, 0]])  # last round's winner stays


def test_errors():
  plateau, _ = _two_regions(4)
  with pytest.raises(ValueError, match="key"):
    cp.competition(plateau, num_masks=4, num_rounds=2)
  with pytest.raises(ValueError, match="draws"):
    cp.competition(plateau, num_masks=4, num_rounds=2, draws=[np.zeros((1, 4, 2), int)] * 2,
                   key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"noise\[1\]"):
    cp.competition(plateau, num_masks=4, num_rounds=1,
                   noise=[np.zeros((1, 4, 4)), np.zeros((1, 4, 4))], key=jax.random.key(0))
  with pytest.raises(ValueError, match="plateau"):
    cp.competition(plateau[0], num_masks=4, num_rounds=1, key=jax.random.key(0))
