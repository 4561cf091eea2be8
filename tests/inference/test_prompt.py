"""Prompt construction (seq2par) and camera-pose tokens: parity with `lras_sequence` packs and
unit tests of the library API."""
from __future__ import annotations

import numpy as np
import pytest

from spelke_jax.inference import camera
from spelke_jax.inference import prompt as P
from spelke_jax.models.lras_config import LRASConfig, lras_tiny
from spelke_jax.parity import load_pack
from spelke_jax.parity.pack import default_fixtures_dir, find_packs
from tests.fixture_packs import assert_pack_passes, pack_params

SYSTEM = "lras_sequence"


def _public_pack():
  packs = find_packs(SYSTEM)
  if not packs:
    pytest.skip(f"no '{SYSTEM}' fixture pack under {default_fixtures_dir()}")
  return load_pack(packs[0])


@pytest.mark.parametrize("pack", pack_params(SYSTEM))
def test_parity(pack):
  assert_pack_passes(pack)


def _random_codes(rng, cfg, side=64):
  rgb = rng.integers(0, cfg.rgb_range[1] - cfg.rgb_range[0], (side, side))
  flow = rng.integers(0, cfg.flow_range[1] - cfg.flow_range[0], (side, side))
  return rgb, flow


# ---- pokes ----

@pytest.mark.parametrize("poke", [[256.0, 10.0, 250.0, 10.0], [-1.0, 10.0, 5.0, 10.0],
                                  [10.0, 256.5, 10.0, 250.0], [np.nan, 3.0, 4.0, 5.0]])
def test_poke_outside_image_raises(poke):
  with pytest.raises(ValueError, match="outside"):
    P.poke_flow_map(np.array([poke]))


def test_poke_flow_map_layout_and_overwrite():
  pokes = np.concatenate([P.CAMERA_FIXING_POKES,
                          [[17.0, 9.0, 20.0, 4.5], [23.9, 15.0, 13.0, 16.0]]])
  flow, unmask = P.poke_flow_map(pokes)
  assert flow.shape == (256, 256, 2) and flow.dtype == np.float32
  np.testing.assert_array_equal(unmask, [31, 0, 992, 1023, 34, 34])
  # Both object pokes hit patch (row 1, col 2); the second wins.
  np.testing.assert_array_equal(flow[8:16, 16:24], np.broadcast_to([-10.9, 1.0], (8, 8, 2))
                                .astype(np.float32))
  assert np.count_nonzero(np.any(flow != 0, axis=-1)) == 64


# ---- camera ----

def test_identity_pose_tokens():
  cfg = LRASConfig()
  tokens, pos = camera.campose_tokens(camera.IDENTITY_POSE, cfg)
  np.testing.assert_array_equal(
      tokens, [111376, 103177, 103177, 103177, 102377, 102377, 102377, 101377])
  np.testing.assert_array_equal(pos, np.arange(22528, 22536))


def _rodrigues(v):
  angle = np.linalg.norm(v)
  if angle == 0:
    return np.eye(3)
  k = v / angle
  kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
  return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


@pytest.mark.parametrize("angle", [0.0, 1e-9, 1e-7, 1e-3, 0.7, 2.0, np.pi - 1e-6, np.pi])
def test_so3_log_inverts_exp(angle):
  rng = np.random.default_rng(0)
  axis = rng.normal(size=3)
  axis /= np.linalg.norm(axis)
  log = camera.so3_log(_rodrigues(angle * axis))
  assert np.isclose(np.linalg.norm(log), angle, atol=1e-7)
  np.testing.assert_allclose(_rodrigues(log), _rodrigues(angle * axis), atol=1e-7)


def test_pose_pipeline_translation_direction():
  m = camera.pose_list_to_matrix([0.0, 0.0, 0.0, 3.0, 0.0, -4.0])
  v = camera.matrix_to_6dof(m)
  assert v.dtype == np.float32 and v.shape == (7,)
  np.testing.assert_allclose(v, [0, 0, 0, 0.6, 0, -0.8, 5.0], atol=1e-6)
  np.testing.assert_array_equal(camera.quantize_6dof(v), [1801, 1801, 1801, 1601, 1001, 201, 5001])


# ---- prompt ----

def test_dedupe_revealed_on_corner_poke():
  pack = _public_pack()
  x = "C" if "C_rgb_codes" in pack.arrays else None
  if x is None:
    pytest.skip("the pack has no scenario C")
  cfg = LRASConfig.from_dict(pack.config)
  unmask = np.asarray(pack[f"{x}_unmask_indices"])
  assert len(np.unique(unmask)) < len(unmask), "scenario C should poke a corner patch twice"
  cam = camera.campose_tokens(camera.IDENTITY_POSE, cfg)
  args = (pack[f"{x}_rgb_codes"], pack[f"{x}_flow_codes"], unmask, int(pack[f"{x}_seed"]), cfg)

  orig = P.build_prompt(*args, campose=cam)
  fixed = P.build_prompt(*args, campose=cam, dedupe_revealed=True)
  unique = np.unique(unmask)
  tpp = P.tokens_per_patch(cfg.patch_size)
  num = orig.num_patches
  assert fixed.cond_len == num * tpp + cam[0].size + tpp * unique.size  # 5148 for 1B layout
  if cfg.patch_size == 2 and num == 1024:
    assert fixed.cond_len == 5148
  assert orig.cond_len == int(pack[f"{x}_cond_len"])

  ptr0 = cfg.flow_patch_idx_range[0]
  prompt_ids = fixed.flow_seq[:fixed.num_prompt_flow_patches, 0] - ptr0
  np.testing.assert_array_equal(np.sort(prompt_ids), unique)
  assert not np.isin(fixed.decode_order, unique).any()
  np.testing.assert_array_equal(np.sort(np.concatenate([prompt_ids, fixed.decode_order])),
                                np.arange(num))
  # The original behaviour holds exactly one unrevealed patch in the prompt.
  orig_ids = orig.flow_seq[:orig.num_prompt_flow_patches, 0] - ptr0
  assert (~np.isin(orig_ids, unique)).sum() == len(unmask) - unique.size
  # Same shuffles either way.
  np.testing.assert_array_equal(orig.perm_flow, fixed.perm_flow)


def test_seed_changes_permutation_not_tokens():
  cfg = LRASConfig()
  rgb, flow = _random_codes(np.random.default_rng(1), cfg)
  _, unmask = P.poke_flow_map(np.concatenate([P.CAMERA_FIXING_POKES, [[100, 60, 110, 70]]]))
  cam = camera.campose_tokens(camera.IDENTITY_POSE, cfg)
  a = P.build_prompt(rgb, flow, unmask, 3, cfg, campose=cam)
  b = P.build_prompt(rgb, flow, unmask, 4, cfg, campose=cam)
  assert not np.array_equal(a.perm_im0, b.perm_im0)
  assert not np.array_equal(a.perm_flow, b.perm_flow)
  np.testing.assert_array_equal(np.sort(a.seq), np.sort(b.seq))
  # Tokens travel with their canonical positions.
  np.testing.assert_array_equal(a.seq[np.argsort(a.pos)], b.seq[np.argsort(b.pos)])
  assert a.cond_len == b.cond_len
  np.testing.assert_array_equal(np.sort(a.cond_seq), np.sort(b.cond_seq))


def test_global_numpy_state_untouched():
  cfg = LRASConfig()
  rgb, flow = _random_codes(np.random.default_rng(2), cfg)
  np.random.seed(123)
  expected = np.random.rand(3)
  np.random.seed(123)
  P.build_prompt(rgb, flow, [0, 31], 0, cfg)
  np.testing.assert_array_equal(np.random.rand(3), expected)


def test_matches_global_seed_stream():
  cfg = LRASConfig()
  rgb, flow = _random_codes(np.random.default_rng(3), cfg)
  p = P.build_prompt(rgb, flow, [5], 77, cfg)
  state = np.random.get_state()
  try:
    np.random.seed(77)
    np.testing.assert_array_equal(p.perm_im0, np.random.permutation(1024))
    np.testing.assert_array_equal(p.perm_flow, np.random.permutation(1024))
  finally:
    np.random.set_state(state)


def test_layout_other_sizes_and_phases():
  cfg = lras_tiny()
  rng = np.random.default_rng(4)
  rgb, flow = _random_codes(rng, cfg, side=16)  # 8x8 patches
  unmask = np.array([0, 7, 63, 20])
  num_seq = 5
  p = P.build_prompt(rgb, flow, unmask, 11, cfg, num_seq_patches=num_seq)
  t, num = 5, 64
  assert p.cond_len == num * t + t * unmask.size
  assert p.num_par_targets == num - unmask.size - num_seq
  np.testing.assert_array_equal(np.sort(p.flow_seq[:4, 0] - cfg.flow_patch_idx_range[0]),
                                np.sort(unmask))
  # Positions are canonical: token at pos q of flow is pointer/code of patch (q - off) // 5.
  flow_pos = p.flow_pos - cfg.flow_pos_range[0]
  np.testing.assert_array_equal(flow_pos[:, 0] // t, p.flow_seq[:, 0] - cfg.flow_patch_idx_range[0])

  r = P.rollout_inputs(p)
  assert r.num_new_tokens == t * num_seq and r.pos.size == p.seq.size
  gen = np.full(r.num_new_tokens, cfg.flow_range[0], np.int64)
  gen[::t] = r.pointers[:num_seq]
  s0, q0 = P.parallel_step0(p, gen)
  assert s0.size == q0.size == p.cond_len + r.num_new_tokens + p.num_par_targets
  full = P.parallel_positions(p, t - 2)
  assert full.size == s0.size + 3 * p.num_par_targets
  assert np.unique(full).size == full.size
  with pytest.raises(ValueError):
    P.parallel_step0(p)  # rollout tokens required when num_seq_patches > 0

  # Decoding the true values round-trips to the input codes.
  seq = P.assemble_flow_sequence(p, p.flow_seq[4:4 + num_seq].reshape(-1), p.target_seq[:, 1:])
  np.testing.assert_array_equal(
      P.unpack_sorted_codes(seq, cfg.patch_size, value_offset=cfg.flow_range[0]), flow)


def test_rejects_bad_inputs():
  cfg = LRASConfig()
  rgb, flow = _random_codes(np.random.default_rng(5), cfg)
  with pytest.raises(ValueError):
    P.build_prompt(rgb, flow + cfg.flow_range[0], [0], 0, cfg)  # absolute ids
  with pytest.raises(ValueError):
    P.build_prompt(rgb, flow, [1024], 0, cfg)
  with pytest.raises(ValueError):
    P.build_prompt(rgb, flow, [0], 0, cfg, num_seq_patches=1024)
