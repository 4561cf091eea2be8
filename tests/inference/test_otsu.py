"""Otsu thresholding of heat maps: parity with `otsu` packs, the jnp version, edge cases."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spelke_jax.inference import otsu
from spelke_jax.parity import load_pack
from tests.fixture_packs import assert_pack_passes, pack_params


@pytest.mark.parametrize("pack", pack_params("otsu"))
def test_otsu_pack_parity(pack):
  assert_pack_passes(pack)


def _pack_maps(pack):
  p = load_pack(pack)
  names = sorted(k for k in p.arrays if k.startswith("maps_"))
  assert names, f"{pack} has no maps_*"
  return p, names


@pytest.mark.parametrize("pack", pack_params("otsu"))
def test_jax_equals_numpy_on_pack_maps(pack):
  p, names = _pack_maps(pack)
  single = jax.jit(otsu.threshold_heatmap_jax)
  batched = jax.jit(jax.vmap(otsu.threshold_heatmap_jax))
  for name in names:
    maps = np.asarray(p[name])
    ref = [otsu.threshold_heatmap(m) for m in maps]
    seg_b, t_b, u8_b = (np.asarray(x) for x in batched(maps))
    assert t_b.dtype == np.int32 and seg_b.dtype == bool and u8_b.dtype == np.uint8
    for i, (seg, t, u8) in enumerate(ref):
      s1, t1, u1 = single(maps[i])
      assert int(t1) == t == int(t_b[i]), (name, i)
      np.testing.assert_array_equal(np.asarray(u1), u8)
      np.testing.assert_array_equal(u8_b[i], u8)
      np.testing.assert_array_equal(np.asarray(s1), seg)
      np.testing.assert_array_equal(seg_b[i], seg)


@pytest.mark.parametrize("pack", pack_params("otsu"))
def test_threshold_dtype_and_segment_rule(pack):
  p, names = _pack_maps(pack)
  for name in names:
    for m in np.asarray(p[name]):
      seg, t, u8 = otsu.threshold_heatmap(m)
      assert isinstance(t, int) and 0 <= t <= 255
      np.testing.assert_array_equal(seg, u8 > t)


def _from_hist(levels, counts, width=None):
  u = np.repeat(np.asarray(levels, np.uint8), counts)
  return u[None] if width is None else u.reshape(-1, width)


# Symmetric three-level histograms: two different partitions have exactly the same
# between-class variance, so float64 rounding in OpenCV's loop picks the winner. Values are
# what cv2 5.0 returns with cv2.ipp.setUseIPP(False) (the portable C path); the exact
# arithmetic first maximum would be the lowest level instead.
@pytest.mark.parametrize("levels,counts,expected", [
    ([67, 127, 187], [2424, 1407, 2424], 127),
    ([80, 92, 104], [357, 447, 357], 92),
    ([51, 98, 145], [2938, 162, 2938], 98),
    ([79, 142, 205], [1177, 1884, 1177], 142),
])
def test_ties_follow_opencv_float64_loop(levels, counts, expected):
  u8 = _from_hist(levels, counts)
  assert otsu.otsu_threshold_u8(u8) == expected
  hist = otsu.histogram_u8(u8)
  assert int(jax.jit(otsu.otsu_threshold_from_hist_jax)(jnp.asarray(hist))) == expected


def test_constant_map_gives_empty_segment():
  m = np.full((16, 24), 3.5, np.float32)
  seg, t, u8 = otsu.threshold_heatmap(m)
  assert t == 0 and not seg.any() and not u8.any()
  s2, t2, u2 = jax.jit(otsu.threshold_heatmap_jax)(m)
  assert int(t2) == 0 and not np.asarray(s2).any() and not np.asarray(u2).any()


def test_two_valued_map():
  m = np.zeros((8, 8), np.float32)
  m[2:5, 3:7] = 7.0
  seg, t, u8 = otsu.threshold_heatmap(m)
  assert set(np.unique(u8)) == {0, 255}
  assert t == 0
  np.testing.assert_array_equal(seg, m > 0)
  # XLA rewrites x / broadcast(d) into x * (1/d); the jnp version must still reach 255.
  u2 = np.asarray(jax.jit(otsu.heatmap_to_u8_jax)(m))
  np.testing.assert_array_equal(u2, u8)


def test_tiny_range_stays_below_255():
  # (max - min) = 1e-8: the +1e-8 halves the scale, so the top pixel maps to 127, not 255.
  m = np.array([[0.0, 1e-8]], np.float32)
  u8 = otsu.heatmap_to_u8(m)
  assert u8.max() == int(np.float32(1e-8) / (np.float32(1e-8) + np.float32(1e-8)) * 255)
  assert u8.max() < 255


def test_truncation_not_rounding():
  # 0.5016 * 255 = 127.9: the original truncates (astype) to 127, it does not round to 128.
  m = np.array([[0.0, 0.5016, 1.0]], np.float32)
  u8 = otsu.heatmap_to_u8(m)
  np.testing.assert_array_equal(u8, [[0, 127, 255]])
  np.testing.assert_array_equal(np.asarray(otsu.heatmap_to_u8_jax(m)), u8)


def test_legacy_numpy1_denominator_only_matters_for_tiny_ranges():
  rng = np.random.default_rng(0)
  m = rng.normal(size=(32, 32)).astype(np.float32)
  np.testing.assert_array_equal(otsu.heatmap_to_u8(m),
                                otsu.heatmap_to_u8(m, legacy_numpy1=True))


def test_random_maps_jax_equals_numpy():
  rng = np.random.default_rng(1)
  maps = []
  for i in range(12):
    m = rng.normal(size=(40, 56)) * 10.0 ** rng.uniform(-8, 4) + rng.uniform(-1e4, 1e4)
    if i % 3 == 0:
      m = np.where(m > np.median(m), m.max(), m.min())
    maps.append(m.astype(np.float32))
  maps = np.stack(maps)
  seg_b, t_b, u8_b = jax.jit(jax.vmap(otsu.threshold_heatmap_jax))(maps)
  for i, m in enumerate(maps):
    seg, t, u8 = otsu.threshold_heatmap(m)
    assert int(t_b[i]) == t
    np.testing.assert_array_equal(np.asarray(u8_b[i]), u8)
    np.testing.assert_array_equal(np.asarray(seg_b[i]), seg)


def test_batched_histogram_thresholds():
  rng = np.random.default_rng(2)
  hists = rng.integers(0, 50, size=(3, 4, 256))
  t = otsu.otsu_threshold_from_hist(hists)
  assert t.shape == (3, 4) and t.dtype == np.int32
  assert t[1, 2] == otsu.otsu_threshold_from_hist(hists[1, 2])
  with pytest.raises(ValueError):
    otsu.otsu_threshold_from_hist(np.zeros((3, 255)))
  with pytest.raises(TypeError):
    otsu.histogram_u8(np.zeros((2, 2), np.float32))
