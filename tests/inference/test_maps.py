"""Structure extractions from step-0 flow logits: stage-wise parity with `spelkenet_probe` packs,
behaviour of the nearest-neighbour fill / expected displacement / affordance, flow colours,
flow-table loading and the PNG helpers."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from spelke_jax.evals import viz
from spelke_jax.inference import maps
from spelke_jax.models.lras_config import LRASConfig
from spelke_jax.parity import load_pack
from spelke_jax.parity.probe_stages import STAGE_TOLERANCES, check_stages
from tests.fixture_packs import pack_params

# ---------------------------------------------------------------------------- pack parity


@pytest.mark.parametrize("pack", pack_params("spelkenet_probe"))
def test_probe_stages_pass(pack):
  results = check_stages(load_pack(pack))
  names = {r.name for r in results}
  for chain in ("fp32", "bf16"):
    for out in ("aff_prob_no_motion", "affordance_map", "aff_avg_flow", "poke_prob_no_motion",
                "poke_avg_flow", "poke_dot_map", "mean_dot_map", "otsu_u8", "otsu_threshold",
                "segment", "segment_256"):
      assert f"{chain}_{out}" in names
  failed = [r.line() for r in results if not r.ok]
  assert not failed, "stage-wise outputs out of tolerance:\n" + "\n".join(failed)


def _bf16(x):
  return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


@pytest.mark.parametrize("pack", pack_params("spelkenet_probe"))
@pytest.mark.parametrize("chain", ["fp32", "bf16"])
def test_avg_flow_bf16_recipe_and_fill_order(pack, chain):
  """The bf16 recipe is needed (float32 post-processing is far off) and within ~1 bf16 ulp on
  nearly every element; filling revealed patches from a different neighbour breaks parity."""
  p = load_pack(pack)
  table = maps.FlowTable.from_arrays(p["flow_table_token_ids"], p["flow_table_vectors"])
  logits = np.asarray(p[f"{chain}_poke_logits_table"], np.float32)
  expected = np.asarray(p[f"{chain}_poke_avg_flow"])
  revealed = np.stack([maps.revealed_mask(c, logits.shape[1]) for c in p["poke_flow_cond"]])
  fn = jax.jit(maps.expected_displacement, static_argnames=("config", "bf16_parity"))
  ours = np.asarray(fn(logits, jnp.asarray(revealed), table, None, bf16_parity=True))
  err = np.abs(ours - expected)
  tol = STAGE_TOLERANCES[chain]["avg_flow"]
  assert np.all(err <= tol.atol + tol.rtol * np.abs(expected))
  assert np.mean(err > 0) < 1e-3  # all but a few near-tie roundings are bit-exact
  f32 = np.asarray(fn(logits, jnp.asarray(revealed), table, None, bf16_parity=False))
  assert np.abs(f32 - expected).max() > 4 * err.max()
  # Filling from the patch below (instead of above) changes the revealed interior patches.
  g = logits.shape[1]
  side = maps.grid_side(g)
  down = np.minimum(np.arange(g) + side, g - 1)
  filled = np.where(revealed[..., None], logits[:, down], logits)
  wrong = np.asarray(maps.expected_displacement(filled, None, table, None, bf16_parity=True))
  assert np.abs(wrong - expected).max() > 0.05


# ---------------------------------------------------------------------------- helpers


def test_round_bf16_matches_ml_dtypes_under_jit():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(4096).astype(np.float32) * 10.0 ** rng.integers(-30, 30, 4096)
  bits = rng.integers(0, 2**16, 512, dtype=np.uint32) << 16 | np.uint32(0x8000)  # exact ties
  ties = bits.view(np.float32)
  x = np.concatenate([x, ties[np.isfinite(ties)], np.float32([0, -0.0, np.inf, -np.inf, 3.4e38])])
  np.testing.assert_array_equal(np.asarray(jax.jit(maps.round_bf16)(x)), _bf16(x))
  # A plain cast pair may be elided by XLA; ours must round inside a fused expression too.
  f = jax.jit(lambda a, b: maps.round_bf16(a - b))
  assert float(f(np.float32(1.0), np.float32(0.0035))) == float(_bf16(np.float32(1.0 - 0.0035)))


def _brute_force_nearest(g):
  """The original's rule literally: Euclidean distances on the (row, col) grid, self = inf,
  first argmin."""
  side = maps.grid_side(g)
  pts = np.stack(np.divmod(np.arange(g), side), 1).astype(np.float64)
  d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
  np.fill_diagonal(d, np.inf)
  return np.argmin(d, 1)


@pytest.mark.parametrize("g", [1024, 64, 9, 4])
def test_nearest_neighbour_index_matches_cdist_argmin(g):
  np.testing.assert_array_equal(maps.nearest_neighbour_index(g), _brute_force_nearest(g))


def test_nearest_neighbour_order_up_left_right_down():
  nn = maps.nearest_neighbour_index(1024)
  p = 10 * 32 + 7
  assert nn[p] == p - 32                            # interior: up
  assert nn[5] == 4                                 # top edge: left
  assert nn[64] == 32                               # left edge: up
  assert (nn[0], nn[31], nn[992], nn[1023]) == (1, 30, 960, 991)  # the four corner pokes
  assert maps.nearest_neighbour_index(1)[0] == 0


def test_revealed_mask_from_pokes():
  pokes = [[248, 0, 248, 0], [0, 0, 0, 0], [0, 248, 0, 248], [248, 248, 248, 248],
           [136.0, 104.0, 146.4, 104.0]]
  m = maps.revealed_mask(pokes)
  assert m.shape == (1024,) and m.sum() == 5
  assert set(np.nonzero(m)[0]) == {31, 0, 992, 1023, 13 * 32 + 17}


# ---------------------------------------------------------------------------- expected displacement


def _delta_logits(g, k, tokens, hot=0.0, cold=-1000.0):
  x = np.full((1, g, k), cold, np.float32)
  x[0, np.arange(g), tokens] = hot
  return x


def _table(k=12, s=4, seed=0, bf16_exact=True):
  rng = np.random.default_rng(seed)
  vec = rng.standard_normal((k, s, s, 2)).astype(np.float32) * 6
  if bf16_exact:
    vec = np.round(vec * 8) / 8
  ids = rng.permutation(32768)[:k]
  return maps.FlowTable.from_arrays(ids, vec)


@pytest.mark.parametrize("bf16_parity", [True, False])
def test_delta_distribution_gives_token_vector_in_its_block(bf16_parity):
  g, k = 64, 12
  table = _table(k, bf16_exact=True)
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, k, g)
  out = np.asarray(maps.expected_displacement(_delta_logits(g, k, tokens), None, table, None,
                                              bf16_parity=bf16_parity))
  assert out.shape == (1, 32, 32, 2) and out.dtype == np.float32
  side = 8
  for p in range(g):
    r, c = divmod(p, side)
    np.testing.assert_array_equal(out[0, 4 * r:4 * r + 4, 4 * c:4 * c + 4],
                                  table.vectors[tokens[p]] / 2)


def test_fill_copies_up_neighbour_and_handles_corners():
  g, k = 64, 12
  table = _table(k)
  tokens = np.arange(g) % k
  x = _delta_logits(g, k, tokens)
  empty = [0, 7, 56, 63, 3 * 8 + 4]  # four corners + one interior patch
  x[0, empty] = 0.0
  out = np.asarray(maps.expected_displacement(x, None, table, None, bf16_parity=True))
  source = {0: 1, 7: 6, 56: 48, 63: 55, 28: 20}  # right, left, up, up, up
  for p, q in source.items():
    r, c = divmod(p, 8)
    np.testing.assert_array_equal(out[0, 4 * r:4 * r + 4, 4 * c:4 * c + 4],
                                  table.vectors[tokens[q]] / 2, err_msg=f"patch {p}")


def test_fill_reads_unfilled_logits_and_revealed_rows_are_filled():
  g, k = 16, 6
  table = _table(k)
  tokens = np.arange(g) % k
  x = _delta_logits(g, k, tokens)
  x[0, [0, 1]] = 0.0  # patch 0's nearest (right) is itself empty: it stays a zero row
  revealed = np.zeros((1, g), bool)
  revealed[0, 10] = True  # not a zero row, but revealed: filled from 6 (up)
  out = np.asarray(maps.expected_displacement(x, revealed, table, None, bf16_parity=False))
  uniform = table.vectors.mean(0) / 2
  np.testing.assert_allclose(out[0, 0:4, 0:4], uniform, atol=1e-5)  # 0 <- 1 (zero row)
  np.testing.assert_allclose(out[0, 0:4, 4:8], uniform, atol=1e-5)  # 1 <- 0 (zero row)
  np.testing.assert_array_equal(out[0, 8:12, 8:12], table.vectors[tokens[6]] / 2)  # 10 <- 6
  np.testing.assert_array_equal(out[0, 4:8, 8:12], table.vectors[tokens[6]] / 2)  # 6 itself


def test_full_vocab_equals_table_columns_and_jit():
  cfg = LRASConfig(flow_range=(7, 7 + 40))
  rng = np.random.default_rng(3)
  table = maps.FlowTable.from_arrays(np.array([3, 39, 0, 17, 8]), _table(5).vectors)
  full = rng.standard_normal((2, 16, 60)).astype(np.float32) * 3
  full[0, 5, 7:47] = 0.0  # a prompt patch: zero flow-range row (other columns non-zero)
  cols = np.asarray(maps.table_columns(full, table, cfg))
  np.testing.assert_array_equal(cols, full[..., 7 + table.token_ids])
  for parity in (True, False):
    a = maps.expected_displacement(full, None, table, cfg, bf16_parity=parity)
    fn = jax.jit(maps.expected_displacement, static_argnames=("config", "bf16_parity"))
    b = fn(jnp.asarray(cols), None, table, cfg, bf16_parity=parity)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # patch 5 (row 1, col 1) copied patch 1 (up)
    np.testing.assert_array_equal(np.asarray(a)[0, 4:8, 4:8], np.asarray(a)[0, 0:4, 4:8])
  diff = np.abs(np.asarray(maps.expected_displacement(cols, None, table, cfg, bf16_parity=True))
                - np.asarray(maps.expected_displacement(cols, None, table, cfg,
                                                        bf16_parity=False)))
  assert 0 < diff.max() < 0.2
  with pytest.raises(ValueError, match="columns"):
    maps.expected_displacement(full[..., :30], None, table, cfg, bf16_parity=True)
  with pytest.raises(ValueError, match="square"):
    maps.expected_displacement(cols[:, :15], None, table, cfg, bf16_parity=True)


# ---------------------------------------------------------------------------- affordance


def test_prob_no_motion_full_logits_layout_and_revealed():
  cfg = LRASConfig(flow_range=(4, 4 + 300))
  codes = (250, 31)
  rng = np.random.default_rng(4)
  x = rng.standard_normal((2, 16, 310)).astype(np.float32) * 2 + 25.0  # large lse on purpose
  x[1, 6, 4 + 250] = 40.0  # patch 6 of run 1 is almost surely "no motion"
  revealed = np.zeros((2, 16), bool)
  revealed[0, [0, 3]] = True
  p = np.asarray(maps.prob_no_motion(x, revealed, cfg, no_motion_codes=codes))
  assert p.shape == (2, 4, 4) and p.dtype == np.float32
  flow = x[..., 4:304].astype(np.float64)
  ref = (np.exp(flow[..., list(codes)] - flow.max(-1, keepdims=True)).sum(-1)
         / np.exp(flow - flow.max(-1, keepdims=True)).sum(-1))
  ref = np.where(revealed, 1.0, ref).reshape(2, 4, 4)
  np.testing.assert_allclose(p, ref, rtol=2e-6, atol=1e-9)
  assert p[0, 0, 0] == 1.0 and p[0, 0, 3] == 1.0 and p[1, 1, 2] > 0.99
  # from (code logits, lse) as the probing code passes them
  lse = np.asarray(maps.flow_lse(x, cfg))
  q = np.asarray(maps.prob_no_motion_from_lse(x[..., 4 + np.array(codes)], lse, revealed))
  np.testing.assert_allclose(q, ref, rtol=3e-5, atol=1e-9)
  # bf16: every value is a bf16 number (sum of two bf16-rounded probabilities, rounded)
  pb = np.asarray(maps.prob_no_motion(x, revealed, cfg, no_motion_codes=codes, bf16=True))
  np.testing.assert_array_equal(pb, _bf16(pb))
  np.testing.assert_allclose(pb, ref, rtol=2**-7)
  np.testing.assert_allclose(np.asarray(maps.motion_affordance(p)), 1 - p)


def test_min_filter2_and_sample_poke_location():
  m = np.arange(16, dtype=np.float32).reshape(4, 4)
  f = maps.min_filter2(m)
  # size-2 window covers (i-1, i) x (j-1, j), reflected at the border
  expected = m[np.maximum(np.arange(4) - 1, 0)][:, np.maximum(np.arange(4) - 1, 0)]
  np.testing.assert_array_equal(f, expected)
  assert maps.min_filter2(np.stack([m, m])).shape == (2, 4, 4)
  onehot = np.zeros((32, 32), np.float32)
  onehot[5, 9] = 0.7
  assert maps.sample_poke_location(onehot, np.random.default_rng(0)) == (72, 40)
  heat = np.random.default_rng(1).random((32, 32)).astype(np.float32)
  x, y = maps.sample_poke_location(heat, np.random.RandomState(42))
  rs = np.random.RandomState(42)
  idx = rs.choice(1024, p=heat.ravel() / (heat.sum() + 1e-8))
  assert (x, y) == ((idx % 32) * 8, (idx // 32) * 8)
  with pytest.raises(ValueError):
    maps.sample_poke_location(-heat, np.random.default_rng(0))


# ---------------------------------------------------------------------------- flow colours


def test_colorwheel_entries():
  w = maps.make_colorwheel()
  assert w.shape == (55, 3)
  np.testing.assert_array_equal(w[0], [255, 0, 0])
  np.testing.assert_array_equal(w[15], [255, 255, 0])
  np.testing.assert_array_equal(w[21], [0, 255, 0])
  np.testing.assert_array_equal(w[25], [0, 255, 255])
  np.testing.assert_array_equal(w[36], [0, 0, 255])
  np.testing.assert_array_equal(w[49], [255, 0, 255])
  np.testing.assert_array_equal(w[1], [255, 17, 0])   # floor(255/15)
  np.testing.assert_array_equal(w[54], [255, 0, 43])  # 255 - floor(255*5/6)


def test_flow_to_rgb():
  zero = maps.flow_to_rgb(np.zeros((5, 6, 2), np.float32))
  assert zero.dtype == np.uint8 and zero.shape == (5, 6, 3)
  assert np.all(zero == 255)  # zero motion is white
  f = np.zeros((1, 4, 2), np.float32)
  f[0, 0] = (4, 0)    # +x (dy = 0.0 gives arctan2(-0.0, -4) = -pi: wheel[0], as the original)
  f[0, 1] = (-4, 0)   # -x
  f[0, 2] = (1, 0)    # +x, a quarter of the max: pale (saturation = magnitude)
  f[0, 3] = (0, 4)    # +y (down): half-way between wheel[13] and wheel[14]
  rgb = maps.flow_to_rgb(f)
  np.testing.assert_array_equal(rgb[0], [[255, 0, 0], [0, 209, 255], [255, 191, 191],
                                         [255, 229, 0]])
  dim = maps.flow_to_rgb(f, max_mag=2.0)  # |f| = 4 > 2: out of range, colour x 0.75
  np.testing.assert_array_equal(dim[0], [[191, 0, 0], [0, 156, 191], [255, 127, 127],
                                         [191, 172, 0]])
  with pytest.raises(ValueError):
    maps.flow_to_rgb(np.zeros((4, 4, 3)))


# ---------------------------------------------------------------------------- flow table


def test_flow_table_validation():
  ids = np.array([4, 9, 2])
  vec = np.zeros((3, 4, 4, 2), np.float32)
  t = maps.FlowTable.from_arrays(ids, vec)
  assert t.size == 3 and t.index_of(9) == 1
  with pytest.raises(KeyError):
    t.index_of(5)
  with pytest.raises(ValueError, match=r"\[K, s, s, 2\]"):
    maps.FlowTable.from_arrays(ids, np.zeros((3, 4, 4), np.float32))
  with pytest.raises(ValueError, match="token ids"):
    maps.FlowTable.from_arrays(ids, np.zeros((2, 4, 4, 2), np.float32))
  with pytest.raises(ValueError, match="duplicates"):
    maps.FlowTable.from_arrays(np.array([1, 1, 2]), vec)
  with pytest.raises(ValueError, match="integer"):
    maps.FlowTable.from_arrays(np.array([1.0, 2.0, 3.0]), vec)


def test_load_flow_table_npz(tmp_path):
  with pytest.raises(FileNotFoundError):
    maps.load_flow_table(tmp_path / "missing.pt")
  vec = np.random.default_rng(0).standard_normal((3, 4, 4, 2)).astype(np.float32)
  np.savez(tmp_path / "t.npz", token_ids=np.array([7, 1, 3]), vectors=vec)
  t = maps.load_flow_table(tmp_path / "t.npz")
  np.testing.assert_array_equal(t.token_ids, [7, 1, 3])
  np.testing.assert_array_equal(t.vectors, vec)
  np.savez(tmp_path / "bad.npz", ids=np.array([7]), vectors=vec[:1])
  with pytest.raises(ValueError, match="token_ids"):
    maps.load_flow_table(tmp_path / "bad.npz")
  np.savez(tmp_path / "bad2.npz", token_ids=np.array([7, 1, 3]), vectors=vec[..., 0])
  with pytest.raises(ValueError):
    maps.load_flow_table(tmp_path / "bad2.npz")


def test_load_flow_table_pt_keeps_dict_order(tmp_path):
  torch_writer = pytest.importorskip("spelke_jax.convert.torch_writer")
  rng = np.random.default_rng(0)
  mapping = {11646: np.zeros((4, 4, 2), np.float32),
             5: rng.standard_normal((4, 4, 2)).astype(np.float32),
             300: np.full((4, 4, 2), 1.5, ml_dtypes.bfloat16)}
  path = tmp_path / "flow_token_to_flow_vector_mapping.pt"
  data_pkl, storages = torch_writer.torch_pickle(mapping)
  torch_writer.write_zip_checkpoint(path, data_pkl, storages)
  t = maps.load_flow_table(path)
  np.testing.assert_array_equal(t.token_ids, [11646, 5, 300])  # dict-key order, not sorted
  assert t.vectors.dtype == np.float32
  np.testing.assert_array_equal(t.vectors[1], mapping[5])
  np.testing.assert_array_equal(t.vectors[2], 1.5)
  bad = {1: np.zeros((4, 4, 2), np.float32), 2: np.zeros((4, 4), np.float32)}
  data_pkl, storages = torch_writer.torch_pickle(bad)
  torch_writer.write_zip_checkpoint(tmp_path / "bad.pt", data_pkl, storages)
  with pytest.raises(ValueError, match="shapes"):
    maps.load_flow_table(tmp_path / "bad.pt")
  data_pkl, storages = torch_writer.torch_pickle({"model": {}})
  torch_writer.write_zip_checkpoint(tmp_path / "notable.pt", data_pkl, storages)
  with pytest.raises(ValueError, match="flow"):
    maps.load_flow_table(tmp_path / "notable.pt")


# ---------------------------------------------------------------------------- viz


def test_save_png_atomic_and_readable(tmp_path):
  from PIL import Image
  img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
  path = viz.save_png(tmp_path / "sub" / "a.png", img)
  assert sorted(os.listdir(tmp_path / "sub")) == ["a.png"]
  with Image.open(path) as im:
    np.testing.assert_array_equal(np.asarray(im), img)
  viz.save_png(path, img[..., 0])  # overwrite in place, grayscale
  with Image.open(path) as im:
    np.testing.assert_array_equal(np.asarray(im), img[..., 0])
  with pytest.raises(TypeError):
    viz.save_png(tmp_path / "sub" / "b.png", img.astype(np.float32))
  assert sorted(os.listdir(tmp_path / "sub")) == ["a.png"]


def test_viz_helpers():
  m = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
  h = viz.heatmap_rgb(m)
  assert h.shape == (3, 4, 3) and h.dtype == np.uint8
  assert tuple(h[0, 0]) == (68, 1, 84) and tuple(h[-1, -1]) == (253, 231, 37)  # viridis ends
  hot = viz.heatmap_rgb(m, cmap="hot")
  assert tuple(hot[0, 0]) == (0, 0, 0) and tuple(hot[-1, -1]) == (255, 255, 255)
  img = np.zeros((8, 8, 3), np.uint8)
  mask = np.zeros((4, 4), bool)
  mask[1, 2] = True
  ov = viz.overlay_mask(img, mask, color=(200, 100, 0), alpha=0.5)
  assert tuple(ov[2, 4]) == (100, 50, 0) and tuple(ov[3, 5]) == (100, 50, 0)
  assert ov[0:2].max() == 0 and ov[:, 0:4].max() == 0
  pt = viz.draw_point(img, (5, 2), color=(255, 255, 0), radius=1)
  assert tuple(pt[2, 5]) == (255, 255, 0) and tuple(pt[2, 7]) == (0, 0, 0)
  assert img.max() == 0  # inputs untouched
  sbs = viz.side_by_side([img, mask, h], pad=2)
  assert sbs.shape == (8, 8 + 2 + 4 + 2 + 4, 3)
  assert np.all(sbs[:, 8:10] == 255)


def test_expected_displacement_config_optional_for_table_columns():
  table = _table(5)
  x = np.random.default_rng(0).standard_normal((1, 16, 5)).astype(np.float32)
  a = maps.expected_displacement(x, None, table, bf16_parity=True)
  b = maps.expected_displacement(x, None, table, LRASConfig(), bf16_parity=True)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
