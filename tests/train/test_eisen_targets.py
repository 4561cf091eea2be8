"""EISEN's unsupervised targets (train/eisen_targets.py) on hand-made scenes with known answers:
motion indicator and flow plateau codes, motion segments (two movers -> two ids, camera motion ->
background removed), the arm-dragging-an-object case (round 1 lumps, explaining away with a
stub teacher separates), meta-affinities, confident segments, the id-map rules, errors.

All Competition / KProp runs share one shape (B=1, 32x32, Q=64, M=8, R=3) so they compile once."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spelke_jax.data import synthetic as syn
from spelke_jax.grouping import kprop as kp
from spelke_jax.models import eisen
from spelke_jax.models import eisen_config as ec
from spelke_jax.train import eisen_targets as et

H = W = 32
M = 8
GRID = (8, 8)          # Q = 64, also the stub teacher's hidden_dim: one Competition compile
CFG = dict(flow_threshold=0.5, flow_grid=GRID, num_masks=M, rounds=3, min_area=4, stride=1,
           teacher_runs=5)


def _two_movers(cam=(0.0, 0.0)):
  """flow [1,H,W,2] and ids [H,W]: object 1 moves right, object 2 up, object 3 only with the
  camera, background 0 (camera only)."""
  flow = np.zeros((1, H, W, 2), np.float32)
  flow[...] = cam
  ids = np.zeros((H, W), int)
  ids[4:13, 4:13] = 1
  flow[0, 4:13, 4:13] += (3.0, 0.0)
  ids[18:29, 16:29] = 2
  flow[0, 18:29, 16:29] += (0.0, -3.0)
  ids[20:28, 3:10] = 3
  return flow, ids


def _arm_scene():
  """A synthetic scene (32 px, integer translations, no rotation, no camera) with an arm-like
  agent dragging one object and nothing else moving."""
  sc = syn.make_scene(1, H, num_objects=(2, 2), p_move=0.0, min_moving=0, max_rotation=0.0,
                      camera_prob=0.0, agent_prob=1.0, integer_motion=True)
  assert sc.agent_id and sc.dragged_id
  return sc


class StubTeacher:
  """A frozen 'teacher' with hand-made affinities: key = query = scale * one_hot(true id), so
  logits are scale^2 / sqrt(C) within an object and 0 across."""

  def __init__(self, ids, scale=4.0):
    self.ids = np.asarray(ids)
    self.scale = scale
    self.config = ec.tiny(affinity_res=self.ids.shape, local_window_size=5,
                          num_affinity_samples=48, hidden_dim=GRID[0] * GRID[1], num_masks=M)

  def __call__(self, images):
    oh = np.eye(self.ids.max() + 1, dtype=np.float32)[self.ids] * self.scale
    oh = np.broadcast_to(oh[None], (images.shape[0],) + oh.shape)
    return jnp.asarray(oh), jnp.asarray(oh)


def _same(ids, idx):
  """[N, S] bool: ids[n] == ids[idx[n, s]] (sentinel False) and [N, S] valid."""
  flat = np.asarray(ids).reshape(-1)
  idx = np.asarray(idx)
  other = np.concatenate([flat, [-1]])[idx]
  return flat[:, None] == other, idx < flat.size


def _one_id(seg, region):
  vals = np.unique(seg[region])
  assert len(vals) == 1, vals
  return int(vals[0])


# ---- eq. 7-8 -----------------------------------------------------------------------------------

def test_motion_indicator_and_single_source_target():
  flow = np.zeros((2, 3, 3, 2), np.float32)
  flow[0, 0, 0] = (0.5, 0.0)      # exactly the threshold: not moving
  flow[0, 0, 1] = (0.0, -0.6)
  flow[0, 0, 2] = (0.4, 0.4)      # |f| = 0.566
  flow[1, 2, 2] = (-3.0, 2.0)
  ind = np.asarray(et.motion_indicator(flow))
  assert ind.dtype == bool and ind.shape == (2, 3, 3)
  want = np.zeros((2, 3, 3), bool)
  want[0, 0, 1:] = True
  want[1, 2, 2] = True
  np.testing.assert_array_equal(ind, want)
  tgt = et.motion_target(flow)
  assert tgt.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(tgt), want.astype(np.int32))
  np.testing.assert_array_equal(np.asarray(et.motion_indicator(flow, threshold=1.0)),
                                want & (np.arange(2)[:, None, None] == 1))


def test_flow_plateau_map_codes():
  flow = np.zeros((3, 2, 3, 2), np.float32)
  flow[0, 0, 1] = (4.0, 0.0)       # the image's max flow, pointing right
  flow[0, 0, 2] = (3.9, 0.2)       # almost the same
  flow[0, 1, 0] = (-4.0, 0.0)      # opposite
  flow[1] = flow[0] * 10.0         # same directions, 10x the speed: same codes (per-image scale)
  p = np.asarray(et.flow_plateau_map(flow, grid=(5, 5)))
  assert p.shape == (3, 2, 3, 25) and np.isfinite(p).all()
  np.testing.assert_allclose(np.linalg.norm(p, axis=-1), 1.0, atol=1e-6)
  centre, right, left = np.eye(25)[12], np.eye(25)[2 * 5 + 4], np.eye(25)[2 * 5 + 0]
  np.testing.assert_allclose(p[0, 0, 0], centre, atol=1e-6)      # zero flow: the centre
  np.testing.assert_allclose(p[0, 0, 1], right, atol=1e-6)       # row dy = 0, last column
  np.testing.assert_allclose(p[0, 1, 0], left, atol=1e-6)
  assert p[0, 0, 1] @ p[0, 0, 2] > 0.9                           # similar flows, similar codes
  assert p[0, 0, 1] @ p[0, 1, 0] == 0.0 and p[0, 0, 1] @ p[0, 0, 0] == 0.0
  np.testing.assert_allclose(p[1], p[0], atol=1e-6)
  np.testing.assert_allclose(p[2].reshape(-1, 25), np.tile(centre, (6, 1)), atol=1e-6)  # no flow
  # a given scale: (1, 0) px with max_flow 2 -> u = 0.5 -> column 3 on a 5-wide grid
  q = np.asarray(et.flow_plateau_map(np.array([[[[1.0, 0.0]]]], np.float32), (5, 5), 2.0))
  np.testing.assert_allclose(q[0, 0, 0], np.eye(25)[2 * 5 + 3], atol=1e-6)
  # between centroids: bilinear weights to the 4 nearest (normalised 0.5 each before l2)
  r = np.asarray(et.flow_plateau_map(np.array([[[[1.0, 0.0]]]], np.float32), (2, 2), 1.0))
  np.testing.assert_allclose(r[0, 0, 0], [0.0, np.sqrt(0.5), 0.0, np.sqrt(0.5)], atol=1e-6)


@pytest.mark.parametrize("bad", [np.zeros((1, 4, 4, 3)), np.zeros((4, 4, 2)), np.zeros((1, 4, 2))])
def test_flow_shape_errors(bad):
  for fn in (et.motion_indicator, et.flow_plateau_map, et.motion_target):
    with pytest.raises(ValueError, match="flow must be"):
      fn(bad)
  with pytest.raises(ValueError, match="flow must be"):
    et.motion_segments(bad, key=jax.random.key(0))
  with pytest.raises(ValueError, match="flow must be"):
    et.build_targets("motion", {"flow": bad}, key=jax.random.key(0))


def test_plateau_grid_error():
  with pytest.raises(ValueError, match="grid"):
    et.flow_plateau_map(np.zeros((1, 4, 4, 2)), grid=(0, 4))


# ---- eq. 9-10: motion segments -------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_two_objects_moving_differently_give_two_segments(seed):
  flow, ids = _two_movers()
  single = np.asarray(et.motion_target(flow))[0]
  assert _one_id(single, ids == 1) == _one_id(single, ids == 2) == 1   # the code's target: one
  seg = np.asarray(et.motion_segments(flow, key=jax.random.key(seed), num_masks=M, min_area=4,
                                      grid=GRID))
  assert seg.shape == (1, H, W) and seg.dtype == np.int32
  seg = seg[0]
  a, b = _one_id(seg, ids == 1), _one_id(seg, ids == 2)
  assert a > 0 and b > 0 and a != b
  assert (seg[(ids == 0) | (ids == 3)] == 0).all()
  assert sorted(np.unique(seg)) == [0, 1, 2]


@pytest.mark.parametrize("cam", [(1.5, 1.0), (-2.0, 0.5)])
def test_camera_motion_background_removed(cam):
  flow, ids = _two_movers(cam)
  assert np.asarray(et.motion_indicator(flow)).all()      # everything "moves" with the camera
  seg = np.asarray(et.motion_segments(flow, key=jax.random.key(3), num_masks=M, min_area=4,
                                      grid=GRID))[0]
  assert (seg[(ids == 0) | (ids == 3)] == 0).all()        # background + camera-only object
  a, b = _one_id(seg, ids == 1), _one_id(seg, ids == 2)
  assert a > 0 and b > 0 and a != b


def test_connectivity_ids_are_c_tilde_and_d():
  flow, ids = _two_movers()
  seg = et.motion_segments(flow, key=jax.random.key(0), num_masks=M, min_area=4, grid=GRID)
  cid = et.connectivity_ids(seg)
  assert cid.dtype == jnp.int32
  idx = kp._random_sample_idx(jax.random.key(1), 1, H, W, 40, 5)
  targets, mask = eisen.connectivity_targets(cid, idx)
  s = np.asarray(seg).reshape(-1)
  same, valid = _same(s, np.asarray(idx)[0])
  np.testing.assert_array_equal(np.asarray(mask)[0], s > 0)           # D: moving rows only
  # C~ on every unmasked row: positives = the sampled pixels of the same motion segment
  rows = s > 0
  np.testing.assert_array_equal(np.asarray(targets)[0][rows], (same & valid)[rows])
  with pytest.raises(ValueError, match=">= 0"):
    et.connectivity_ids(-np.ones((1, 2, 2), int))
  with pytest.raises(ValueError, match="integer"):
    et.connectivity_ids(np.zeros((1, 2, 2), np.float32))
  with pytest.raises(ValueError, match=r"\[B, H, W\]"):
    et.connectivity_ids(np.zeros((2, 2), int))


# ---- the arm dragging an object: round 1 vs explaining away --------------------------------------

def test_round1_motion_target_lumps_arm_and_object():
  sc = _arm_scene()
  ids = sc.instance_ids
  batch = {"image": sc.frame0[None], "flow": sc.flow[None]}
  tgt = np.asarray(et.build_targets("motion_segments", batch, key=jax.random.key(0),
                                    config=CFG))
  assert tgt.shape == (1, H, W) and tgt.dtype == np.int32
  tgt = tgt[0]
  arm = _one_id(tgt, ids == sc.agent_id)
  assert arm > 0 and _one_id(tgt, ids == sc.dragged_id) == arm        # one id: lumped
  assert (tgt[(ids != sc.agent_id) & (ids != sc.dragged_id)] == 0).all()


def test_explaining_away_separates_arm_and_object():
  sc = _arm_scene()
  ids = sc.instance_ids
  batch = {"image": sc.frame0[None], "flow": sc.flow[None]}
  teacher = StubTeacher(ids)       # its confident segments separate arm, object, background
  tgt = np.asarray(et.build_targets("explain_away", batch, teacher=teacher,
                                    key=jax.random.key(0), config=CFG))[0]
  arm, obj = _one_id(tgt, ids == sc.agent_id), _one_id(tgt, ids == sc.dragged_id)
  assert arm > 0 and obj > 0 and arm != obj                           # two ids
  assert (tgt[(ids != sc.agent_id) & (ids != sc.dragged_id)] == 0).all()
  with pytest.raises(ValueError, match="teacher"):
    et.build_targets("explain_away", batch, key=jax.random.key(0), config=CFG)


# ---- eq. 13: meta-affinities and confident segments ----------------------------------------------

def _hand_ids():
  """Background 0 (connected), a big object 1, an arm-like strip 2 from the top border touching
  it, a 3x3 object 3 (too small for min_area 20)."""
  ids = np.zeros((H, W), int)
  ids[12:24, 10:22] = 1
  ids[0:12, 14:18] = 2
  ids[4:7, 25:28] = 3
  return ids


def test_meta_affinities_identical_runs_are_indicators():
  ids = _hand_ids()
  idx = kp._random_sample_idx(jax.random.key(2), 1, H, W, 40, 5)
  perm = np.array([7, 3, 5, 1])                       # same partition, other label numbers
  runs = np.stack([ids, perm[ids], ids, perm[ids], ids])[:, None]     # [L=5, B=1, H, W]
  meta = np.asarray(et.meta_affinities(runs, idx))
  assert meta.shape == (1, H * W, 40)
  same, valid = _same(ids, np.asarray(idx)[0])
  np.testing.assert_array_equal(meta[0], (same & valid).astype(np.float32))
  # 3 runs say {1, 2} apart, 2 runs merge them: 0.4 for arm-object pairs
  merged = np.where(ids == 2, 1, ids)
  meta = np.asarray(et.meta_affinities(np.stack([ids] * 3 + [merged] * 2)[:, None], idx))[0]
  other = np.concatenate([ids.reshape(-1), [-1]])[np.asarray(idx)[0]]
  arm_obj = (ids.reshape(-1)[:, None] == 2) & (other == 1)
  assert arm_obj.any()
  np.testing.assert_allclose(meta[arm_obj], 0.4)
  np.testing.assert_allclose(meta[same & valid], 1.0)
  assert (meta[~valid] == 0).all()
  with pytest.raises(ValueError, match="sample_idx"):
    et.meta_affinities(runs, np.zeros((1, 5, 40), np.int32))


def test_teacher_meta_affinities_from_a_stub_teacher():
  ids = _hand_ids()
  teacher = StubTeacher(ids)
  images = np.zeros((1, H, W, 3), np.uint8)
  meta, idx = et.teacher_meta_affinities(teacher, images, runs=5, key=jax.random.key(0))
  meta, idx = np.asarray(meta)[0], np.asarray(idx)
  assert meta.shape == (H * W, 48) and idx.shape == (1, H * W, 48)
  np.testing.assert_allclose(meta * 5, np.round(meta * 5), atol=1e-5)    # multiples of 1/L
  same, valid = _same(ids, idx[0])
  assert meta[same & valid].mean() > 0.9 and meta[~same & valid].max() == 0.0
  assert (meta[~valid] == 0).all()


def test_largest_components_drop_small_and_disconnected_parts():
  lab = np.zeros((1, 12, 12), int)
  lab[0, 1:7, 1:7] = 1          # 36 px: kept
  lab[0, 9:11, 9:12] = 1        # 6 px of label 1, disconnected: dropped (not the largest)
  lab[0, 8:11, 1:4] = 2         # 9 px < min_area: dropped
  out = et.largest_components(lab, min_area=10)
  assert out.dtype == np.int32
  assert _one_id(out[0], lab[0] == 0) > 0
  assert _one_id(out[0], (lab[0] == 1) & (np.arange(12)[:, None] < 7)) > 0
  assert (out[0][9:11, 9:12] == 0).all() and (out[0][8:11, 1:4] == 0).all()
  assert sorted(np.unique(out)) == [0, 1, 2]


def test_confident_segments_drop_small_segments():
  ids = _hand_ids()
  idx = kp._random_sample_idx(jax.random.key(4), 1, H, W, 48, 5)
  same, valid = _same(ids, np.asarray(idx)[0])
  meta = (same & valid).astype(np.float32)[None]        # five identical runs
  conf = et.confident_segments(meta, idx, key=jax.random.key(5), h=H, w=W, min_area=20,
                               config=StubTeacher(ids).config)
  assert conf.shape == (1, H, W) and conf.dtype == np.int32
  conf = conf[0]
  big = [_one_id(conf, ids == k) for k in (0, 1, 2)]
  assert min(big) > 0 and len(set(big)) == 3
  assert (conf[ids == 3] == 0).all()                    # 9 px < 20: not confident
  with pytest.raises(ValueError, match="meta must be"):
    et.confident_segments(meta, idx, key=jax.random.key(5), h=H, w=W + 1)


# ---- eq. 11-12: the id-map rules and the exact pairwise target -----------------------------------

def _explain_maps():
  """8x10 maps. Motion segment 1 = arm (confident 1) + object (confident 2) + an unconfident
  column between them touching the object; motion segment 2 = one confident part (3) plus
  unconfident pixels; confident 4: static; confident 5 overlaps motion segment 1 by one pixel."""
  m = np.zeros((8, 10), int)
  t = np.zeros((8, 10), int)
  m[0:4, 0:6] = 1
  t[0:4, 0:2] = 1                # arm
  t[0:4, 3:6] = 2                # object; column 2 of m=1 unconfident
  m[6:8, 0:4] = 2
  t[6:8, 0:3] = 3                # m=2: one part; (6..7, 3) unconfident
  t[5:8, 6:9] = 4                # static confident segment
  t[4, 5] = 5                    # static, except ...
  t[3, 5] = 5                    # ... one pixel inside motion segment 1 (overlap 1)
  return m[None], t[None]


def test_explain_away_id_map_rules():
  m, t = _explain_maps()
  m0, t0 = m[0], t[0]
  arm, obj, gap = (m0 == 1) & (t0 == 1), (m0 == 1) & (t0 == 2), (m0 == 1) & (t0 == 0)
  out = np.asarray(et.explain_away(m, t, min_overlap=2))
  assert out.shape == (1, 8, 10) and out.dtype == np.int32
  o = out[0]
  a, b = _one_id(o, arm), _one_id(o, obj)
  assert a > 0 and b > 0 and a != b                          # the arm is explained away
  # nearest: the unconfident column touches the arm and the object in the same wave; ties go to
  # the larger (m, T) code, the object's. The one-pixel overlap of t=5 is no part: filled too.
  assert (o[gap] == b).all()
  assert o[3, 5] == b
  assert _one_id(o, m0 == 2) not in (a, b)                   # single part: one id for all of m=2
  assert (o[m0 == 0] == 0).all()                             # static: ignore
  # own: the unconfident column gets its own id; mask: 0
  own = np.asarray(et.explain_away(m, t, min_overlap=2, unexplained="own"))[0]
  g = _one_id(own, gap)
  assert g not in (0, _one_id(own, arm), _one_id(own, obj))
  mask = np.asarray(et.explain_away(m, t, min_overlap=2, unexplained="mask"))[0]
  assert (mask[gap] == 0).all() and _one_id(mask, arm) != _one_id(mask, obj)
  # min_overlap=1: the one pixel of t=5 becomes a third part of motion segment 1
  one = np.asarray(et.explain_away(m, t, min_overlap=1))[0]
  assert one[3, 5] not in (0, _one_id(one, arm), _one_id(one, obj))
  # pseudo: static confident segments get their own ids on their static pixels
  ps = np.asarray(et.explain_away(m, t, min_overlap=2, static="pseudo"))[0]
  s4 = _one_id(ps, t0 == 4)
  assert s4 > 0 and s4 not in np.unique(ps[m0 > 0])
  assert ps[4, 5] > 0 and ps[4, 5] != s4                    # t=5's static pixel (not a part)
  assert (ps[(t0 == 0) & (m0 == 0)] == 0).all()
  with pytest.raises(ValueError, match="differ in shape"):
    et.explain_away(m, t[:, :4])
  with pytest.raises(ValueError, match="unexplained"):
    et.explain_away(m, t, unexplained="bogus")


def test_explain_away_pairwise_is_exact_and_matches_the_id_map():
  m, t = _explain_maps()
  n = m[0].size
  idx = np.broadcast_to(np.concatenate([np.arange(n), [n]])[None, None], (1, n, n + 1))
  idx = jnp.asarray(idx, jnp.int32)                          # all pairs + a sentinel
  targets, mask = et.explain_away_pairwise(m, t, idx)
  targets, mask = np.asarray(targets)[0], np.asarray(mask)[0]
  s, c = m.reshape(-1), t.reshape(-1)
  want = ((s[:, None] > 0) & (s[:, None] == s[None]) &
          ~((c[:, None] > 0) & (c[None] > 0) & (c[:, None] != c[None])))
  np.testing.assert_array_equal(targets[:, :n], want)
  assert (targets[:, n] == 0).all()
  np.testing.assert_array_equal(mask, s > 0)
  gap = np.ravel_multi_index((0, 2), (8, 10))
  arm, obj = np.ravel_multi_index((0, 0), (8, 10)), np.ravel_multi_index((0, 4), (8, 10))
  assert targets[gap, arm] == 1 and targets[gap, obj] == 1 and targets[arm, obj] == 0
  # without unconfident moving pixels the id map gives exactly the same loss
  t_full = t.copy()
  t_full[0][(m[0] == 1) & (t[0] == 0)] = 2
  t_full[0][(m[0] == 2) & (t[0] == 0)] = 3
  t_full[0][3, 5] = 2
  logits = jax.random.normal(jax.random.key(0), (1, n, n + 1))
  tp, mp = et.explain_away_pairwise(m, t_full, idx)
  ids = et.explain_away(m, t_full)
  np.testing.assert_allclose(float(eisen.affinity_loss_from_targets(logits, tp, mp)),
                             float(eisen.affinity_loss(logits, idx, ids.reshape(1, 8, 10))),
                             rtol=1e-6)


def test_build_targets_dispatch():
  flow, _ = _two_movers()
  batch = {"flow": flow}
  np.testing.assert_array_equal(
      np.asarray(et.build_targets("motion", batch, key=jax.random.key(0), config=CFG)),
      np.asarray(et.motion_target(flow)))
  small = np.asarray(et.resize_flow_nearest(flow, H // 4, W // 4))
  np.testing.assert_array_equal(small, flow[:, ::4, ::4])
  with pytest.raises(ValueError, match="unknown target kind"):
    et.build_targets("bogus", batch, key=jax.random.key(0))
  with pytest.raises(ValueError, match="'flow'"):
    et.build_targets("motion", {"image": np.zeros((1, 4, 4, 3))}, key=jax.random.key(0))


def _rotating_and_translating():
  """flow [1,H,W,2] px: object 1 (rows 4:20, cols 4:20) rotates 20 degrees about its centre,
  object 2 (rows 4:20, cols 20:28, touching it) translates; background static."""
  flow = np.zeros((1, H, W, 2), np.float32)
  yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
  c, s = np.cos(np.deg2rad(20.0)), np.sin(np.deg2rad(20.0))
  dx, dy = xx - 11.5, yy - 11.5
  rot = np.stack([(c - 1) * dx - s * dy, s * dx + (c - 1) * dy], -1)
  flow[0, 4:20, 4:20] = rot[4:20, 4:20]
  flow[0, 4:20, 20:28] = (7.0, 0.0)  # faster than any point of the rotation (<= 4 px)
  return flow


def test_merge_rigid_joins_parts_of_one_rigid_motion_only():
  flow = _rotating_and_translating()
  ids = np.zeros((1, H, W), np.int32)
  ids[0, 4:20, 4:12] = 1          # the rotating object cut in two (as Competition does) ...
  ids[0, 4:20, 12:20] = 2
  ids[0, 4:20, 20:28] = 3         # ... and its translating neighbour
  got = np.asarray(et.merge_rigid(ids, flow, tol=0.25))
  assert len(np.unique(got[0, 4:20, 4:20])) == 1
  assert got[0, 5, 25] != got[0, 5, 5] and got[0, 0, 0] == 0
  assert set(np.unique(got)) == {0, 1, 2}
  # Positions scale with the stride: the same scene at a quarter of the map, flow at full size.
  small_ids = ids[:, ::4, ::4]
  got4 = np.asarray(et.merge_rigid(small_ids, flow, tol=0.25))
  assert len(np.unique(got4[0, 1:5, 1:5])) == 1 and got4[0, 1, 6] != got4[0, 1, 1]
  # A tolerance below the fit error of the two halves keeps them apart; 0 px cuts everything.
  np.testing.assert_array_equal(np.asarray(et.merge_rigid(ids, flow, tol=-1.0)), ids)
  with pytest.raises(ValueError, match="multiple"):
    et.merge_rigid(ids[:, :30], flow, tol=0.25)


def test_build_targets_rigid_merge_option():
  flow = _rotating_and_translating()
  cfg = dict(CFG, rigid_merge_tol=0.25)
  key = jax.random.key(3)
  plain = np.asarray(et.build_targets("motion_segments", {"flow": flow}, key=key, config=CFG))
  merged = np.asarray(et.build_targets("motion_segments", {"flow": flow}, key=key, config=cfg))
  parts = lambda ids: set(np.unique(ids[0, 4:20, 4:20])) - {0}
  # Competition cuts the rotating object into several segments (its slow centre joins the
  # background); the adjacent ones merge, never with the translating neighbour.
  assert len(parts(merged)) < len(parts(plain))
  assert not parts(merged) & set(np.unique(merged[0, 4:20, 20:28]))
  np.testing.assert_array_equal(merged > 0, plain > 0)                      # same moving rows
