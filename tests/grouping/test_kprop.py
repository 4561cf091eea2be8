"""KProp: fixture parity (every iteration, activation wave), segment-sum == dense, a two-block
graph separates, shape errors, jit."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spelke_jax.grouping import kprop as kp
from spelke_jax.parity import compare, load_pack
from tests.fixture_packs import assert_pack_passes, pack_params


@pytest.mark.parametrize("pack", pack_params("eisen_grouping"))
def test_eisen_grouping_pack_passes(pack):
  """Every output of the pack (head, sampling, loss, KProp, Competition, CC, mIoU)."""
  assert_pack_passes(pack)


@pytest.mark.parametrize("method", ["segment", "dense"])
@pytest.mark.parametrize("pack", pack_params("eisen_grouping"))
def test_kprop_replays_pack(pack, method):
  pack = load_pack(pack)
  cfg = pack.config["EISEN"]
  tol = pack.tolerances
  adj = kp.affinities_from_logits(pack["logits"])
  assert compare("adj", pack["adj"], np.asarray(adj), tol["adj"]).ok
  h0 = jax.nn.softmax(pack["h0_normal"], axis=-1)
  r = kp.kprop(pack["adj"], pack["sample_idx"], h0, pack["seed_idx"],
               iters=cfg["propagation_iters"], thresh=cfg["propagation_affinity_thresh"],
               return_all=True, method=method)
  assert compare("plateau_all", pack["plateau_all"], np.asarray(r.all), tol["plateau_all"]).ok
  np.testing.assert_array_equal(np.asarray(r.activated).astype(np.uint8), pack["kprop_activated"])
  np.testing.assert_array_equal(np.asarray(r.plateau), np.asarray(r.all[-1]))


def _random_graph(seed, b=2, n=48, s=24, q=6):
  rng = np.random.default_rng(seed)
  idx = rng.integers(0, n + 1, size=(b, n, s)).astype(np.int32)  # includes sentinels n
  idx[:, :, :3] = idx[:, :, :1]                                   # duplicated samples
  adj = rng.uniform(0, 1, size=(b, n, s)).astype(np.float32)
  h0 = np.asarray(kp.init_plateau(jax.random.key(seed), b, n, q))
  seeds = rng.integers(0, n, size=(b,)).astype(np.int32)
  return adj, idx, h0, seeds


def test_segment_equals_dense():
  adj, idx, h0, seeds = _random_graph(0)
  seg = kp.kprop(adj, idx, h0, seeds, iters=6, thresh=0.6, return_all=True, method="segment")
  den = kp.kprop(adj, idx, h0, seeds, iters=6, thresh=0.6, return_all=True, method="dense")
  chk = kp.kprop(adj, idx, h0, seeds, iters=6, thresh=0.6, return_all=True, method="segment",
                 chunk=5)                                         # 24 samples: padded to 25
  np.testing.assert_allclose(np.asarray(seg.all), np.asarray(den.all), atol=2e-6)
  np.testing.assert_allclose(np.asarray(seg.all), np.asarray(chk.all), atol=2e-6)
  np.testing.assert_array_equal(np.asarray(seg.activated), np.asarray(den.activated))
  assert seg.activated[0].sum() == 2                                # one seed per image
  assert kp.auto_method(1, 128 * 128, "cpu") == "segment"
  assert kp.auto_method(1, 128 * 128, "cpu", s=1024) == "segment"   # N/S = 16
  assert kp.auto_method(8, 32 * 32, "cpu", s=256) == "dense"        # N/S = 4
  assert kp.auto_method(64, 128 * 128, "gpu") == "segment"          # matrices too large
  assert kp.auto_method(1, 64 * 64, "tpu") == "dense"
  assert kp.auto_chunk(1, 128 * 128, 1024, 32) == 0
  assert kp.auto_chunk(8, 128 * 128, 1024, 32) == kp.DEFAULT_CHUNK


def _dense_reference(adj, idx, h0, seed, iters, thresh):
  """Literal numpy transcription of the reference update for one image (loops)."""
  n, s = adj.shape
  h = h0.astype(np.float64)
  a = np.zeros(n, bool)
  a[seed] = True
  for _ in range(iters):
    for w_fn in (lambda v: v if v > thresh else 0.0, lambda v: 1 - v if 1 - v > thresh else 0.0):
      num = np.zeros_like(h)
      den = np.zeros(n)
      for i in range(n):
        for k in range(s):
          j = idx[i, k]
          if j < n and a[i]:
            wt = w_fn(adj[i, k])
            num[j] += wt * h[i]
            den[j] += wt
      msg = num / np.maximum(den, 1.0)[:, None]
      h = h + msg if w_fn(1.0) == 1.0 else h - msg
    h = np.maximum(h, 0) + 1e-16
    h = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
    recv = np.zeros(n, bool)
    for i in range(n):
      if a[i]:
        recv[idx[i][idx[i] < n]] = True
    a = a | recv
  return h


def test_matches_literal_transcription():
  adj, idx, h0, seeds = _random_graph(1, b=1, n=20, s=8, q=4)
  got = kp.kprop(adj, idx, h0, seeds, iters=4, thresh=0.6).plateau
  want = _dense_reference(adj[0], idx[0], h0[0], seeds[0], 4, 0.6)
  np.testing.assert_allclose(np.asarray(got[0]), want, atol=1e-5)


def test_two_blocks_separate():
  n, s, q = 40, 16, 8
  rng = np.random.default_rng(0)
  idx = rng.integers(0, n, size=(1, n, s)).astype(np.int32)
  block = np.arange(n) >= n // 2
  same = block[:, None] == block[idx[0]]
  adj = np.where(same, 0.95, 0.05)[None].astype(np.float32)
  h0 = kp.init_plateau(jax.random.key(0), 1, n, q)
  for method in ("segment", "dense"):
    h = np.asarray(kp.kprop(adj, idx, h0, np.array([3]), iters=25, thresh=0.7,
                            method=method).plateau[0])
    means = np.stack([h[~block].mean(0), h[block].mean(0)])
    means /= np.linalg.norm(means, axis=-1, keepdims=True)
    assert means[0] @ means[1] < 0.05                              # blocks are orthogonal
    cos = h @ means.T                                              # [n, 2]
    own = np.where(block, cos[:, 1], cos[:, 0])
    other = np.where(block, cos[:, 0], cos[:, 1])
    assert own.min() > 0.9 and other.max() < 0.1


def test_receivers_ignore_affinity_and_sentinels():
  # node 0 samples 1 (affinity 0.5: neither excites nor inhibits) and the sentinel
  idx = np.array([[[1, 3], [2, 3], [0, 3]]], np.int32)
  adj = np.full((1, 3, 2), 0.5, np.float32)
  h0 = kp.init_plateau(jax.random.key(0), 1, 3, 4)
  r = kp.kprop(adj, idx, h0, np.array([0]), iters=3, thresh=0.7)
  np.testing.assert_array_equal(np.asarray(r.activated[:, 0]),
                                [[1, 0, 0], [1, 1, 0], [1, 1, 1]])


def test_jittable_with_static_iters():
  adj, idx, h0, seeds = _random_graph(2)
  f = jax.jit(functools.partial(kp.kprop, iters=3, thresh=0.7))
  out = f(adj, idx, h0, seeds)
  np.testing.assert_allclose(np.asarray(out.plateau),
                             np.asarray(kp.kprop(adj, idx, h0, seeds, iters=3,
                                                 thresh=0.7).plateau), atol=1e-6)
  assert out.all is None


def test_init_helpers():
  h0 = kp.init_plateau(jax.random.key(0), 2, 5, 3)
  assert h0.shape == (2, 5, 3)
  np.testing.assert_allclose(np.asarray(h0.sum(-1)), 1.0, rtol=1e-6)
  s = kp.random_seed_nodes(jax.random.key(1), 4, 7)
  assert s.shape == (4,) and int(s.min()) >= 0 and int(s.max()) < 7


def test_shape_errors():
  adj, idx, h0, seeds = _random_graph(3)
  with pytest.raises(ValueError, match="sample_idx shape"):
    kp.kprop(adj, idx[:, :, :-1], h0, seeds, iters=2, thresh=0.7)
  with pytest.raises(ValueError, match="h0 must be"):
    kp.kprop(adj, idx, h0[:, :-1], seeds, iters=2, thresh=0.7)
  with pytest.raises(ValueError, match="seed_idx"):
    kp.kprop(adj, idx, h0, seeds[:1], iters=2, thresh=0.7)
  with pytest.raises(ValueError, match="integer"):
    kp.kprop(adj, idx.astype(np.float32), h0, seeds, iters=2, thresh=0.7)
  with pytest.raises(ValueError, match="method"):
    kp.kprop(adj, idx, h0, seeds, iters=2, thresh=0.7, method="sparse")


def test_batch_one_sample_idx_broadcasts():
  adj, idx, h0, seeds = _random_graph(4)
  shared = np.broadcast_to(idx[:1], idx.shape)
  a = kp.kprop(adj, idx[:1], h0, seeds, iters=3, thresh=0.7).plateau
  b = kp.kprop(adj, shared, h0, seeds, iters=3, thresh=0.7).plateau
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bench_kprop_small():
  from spelke_jax.grouping.bench import bench_kprop  # pylint: disable=g-import-not-at-top
  r = bench_kprop(dict(kprop_height=8, kprop_width=12, kprop_samples=30, kprop_window=3,
                       kprop_q=4, kprop_iters=3, kprop_masks=4, kprop_rounds=2, repeats=1,
                       kprop_method="segment"),
                  peak_flops_per_s=1e9)
  assert r["shapes"]["N"] == 96 and r["method"] == "segment"
  assert r["best_seconds"] > 0 and r["flops_per_s"] > 0 and r["ratio_to_matmul_peak"] > 0
  assert r["kprop_flop_per_call"] == 3 * 2 * 2 * r["shapes"]["valid_samples"] * 5
