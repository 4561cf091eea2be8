"""The synthetic Spelke world: determinism, exact flow, ids / probe points / moved ids, the agent,
the .h5 writer (read back by SpelkeBenchReader), the TFDS builder and the grain pipeline."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from spelke_jax.data import synthetic
from spelke_jax.data.spelkebench import SpelkeBenchReader
from spelke_jax.data.synthetic import make_scene, scene_seed

ROOT = Path(__file__).resolve().parents[2]
FIELDS = ("frame0", "frame1", "flow", "instance_ids", "instance_ids1", "moved", "points",
          "depth_order", "affine", "camera")


def _scenes(n, res=64, stream="file", seed=0, **kw):
  return [make_scene(scene_seed(seed, i, stream), res, **kw) for i in range(n)]


def _landing(sc):
  """Where each frame-0 pixel lands: (x1, y1) float [R,R], nearest pixel (xi, yi) int, and the
  mask of pixels whose landing point is inside frame 1 and shows the same id there (the pixel is
  not occluded in frame 1 and stays in the image)."""
  r = sc.resolution
  ys, xs = np.mgrid[0:r, 0:r].astype(np.float64)
  x1, y1 = xs + sc.flow[..., 0], ys + sc.flow[..., 1]
  xi, yi = np.round(x1).astype(int), np.round(y1).astype(int)
  inb = (x1 >= 0) & (x1 <= r - 1) & (y1 >= 0) & (y1 <= r - 1)
  same = sc.instance_ids1[np.clip(yi, 0, r - 1), np.clip(xi, 0, r - 1)] == sc.instance_ids
  return x1, y1, xi, yi, inb & same


# ------------------------------------------------------------------------------------ determinism
def test_same_seed_same_scene_and_different_seeds_differ():
  a = make_scene(scene_seed(3, 5), 64)
  b = make_scene(scene_seed(3, 5), 64)
  for f in FIELDS:
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
  assert (a.agent_id, a.dragged_id) == (b.agent_id, b.dragged_id)
  others = [make_scene(scene_seed(4, 5), 64), make_scene(scene_seed(3, 6), 64),
            make_scene(scene_seed(3, 5, "train"), 64),
            make_scene(scene_seed(3, 5, "validation"), 64)]
  for o in others:
    assert not np.array_equal(a.frame0, o.frame0)
  assert len({scene_seed(3, 5, s) for s in synthetic.STREAMS}) == len(synthetic.STREAMS)


@pytest.mark.parametrize("res", [32, 64, 96, 128, 256])
def test_resolutions(res):
  sc = make_scene(scene_seed(0, 1), res)
  assert sc.frame0.shape == sc.frame1.shape == (res, res, 3) and sc.frame0.dtype == np.uint8
  assert sc.flow.shape == (res, res, 2) and sc.flow.dtype == np.float32
  assert sc.instance_ids.shape == (res, res) and sc.instance_ids.dtype == np.int32
  k = sc.num_ids - 1
  assert sc.moved.shape == (k + 1,) and sc.points.shape == (k, 2)
  assert sc.affine.shape == (k + 1, 2, 3)
  n_obj = len(sc.object_ids)
  assert 2 <= n_obj <= 6
  assert set(np.unique(sc.instance_ids)) == set(range(k + 1))   # every id visible in frame 0


# --------------------------------------------------------------------------------- correctness
def test_flow_warps_frame0_onto_frame1_exactly_for_integer_translations():
  """Translation-only scenes with whole-pixel motions (objects and camera): frame 1 at x + flow
  equals frame 0 at x (all three channels within 1/255) for > 99% of the pixels that stay in the
  image and are not occluded in frame 1 (in practice: all of them)."""
  for sc in _scenes(12, 64, integer_motion=True, max_rotation=0.0, camera_prob=0.7):
    np.testing.assert_array_equal(sc.flow, np.round(sc.flow))
    _, _, xi, yi, ok = _landing(sc)
    assert ok.mean() > 0.5
    diff = np.abs(sc.frame1[yi[ok], xi[ok]].astype(int) - sc.frame0[ok].astype(int)).max(-1)
    assert (diff <= 1).mean() > 0.99, (sc.seed, (diff <= 1).mean())


def test_flow_with_rotation_and_subpixel_motion_beats_shifted_flows():
  """Rotations and sub-pixel motions: frame 1 bilinearly sampled at x + flow matches frame 0
  (mean abs error over pixels not occluded in frame 1) better than at x + flow shifted by one
  pixel in any direction, in every scene, and by > 2x on average."""
  ratios = []
  for sc in _scenes(10, 64, max_rotation=15.0):
    x1, y1, _, _, ok = _landing(sc)
    f1 = sc.frame1.astype(np.float64)

    def err(dx, dy):
      s = np.stack([ndimage.map_coordinates(f1[..., c], [y1 + dy, x1 + dx], order=1,
                                            mode="nearest") for c in range(3)], -1)
      return np.abs(s - sc.frame0).mean(-1)[ok].mean()

    e = err(0, 0)
    shifted = min(err(1, 0), err(-1, 0), err(0, 1), err(0, -1))
    assert e < shifted, sc.seed
    ratios.append(e / shifted)
  assert np.mean(ratios) < 0.5, ratios


def test_flow_is_the_affine_map_of_the_visible_id():
  sc = make_scene(scene_seed(0, 2), 64)
  ys, xs = np.mgrid[0:64, 0:64]
  a = sc.affine[sc.instance_ids]
  want = np.stack([a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2] - xs,
                   a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2] - ys], -1)
  np.testing.assert_allclose(sc.flow, want, atol=1e-3)
  bg = sc.instance_ids == 0
  np.testing.assert_allclose(sc.flow[bg], np.broadcast_to(sc.camera, sc.flow[bg].shape), atol=1e-5)


def test_ids_points_and_examples_are_consistent():
  for sc in _scenes(12, 64):
    ids = sc.instance_ids
    assert list(sc.depth_order) == list(range(sc.num_ids))
    for k in range(1, sc.num_ids):
      m = ids == k
      x, y = sc.points[k - 1]
      assert m[y, x], (sc.seed, k)
      d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
      assert d[y, x] == d.max() >= 1.5, (sc.seed, k)      # the safe point, off the border
    ex = sc.to_example("k")
    assert ex.key == "k" and ex.image is sc.frame0
    assert ex.segments.shape == (len(sc.object_ids), 64, 64) and ex.segments.dtype == bool
    assert sc.agent_id not in sc.object_ids
    for seg, pt, k in zip(ex.segments, ex.points, sc.object_ids):
      np.testing.assert_array_equal(seg, ids == k)
      assert seg[pt[1], pt[0]]
    assert not np.any(ex.segments.sum(0) > 1)


def test_moved_ids_move_relative_to_the_camera():
  n_moved = n_still = 0
  for sc in _scenes(12, 64, camera_prob=0.7, agent_prob=0.5):
    assert not sc.moved[0] and sc.moved[1:].any()
    rel = sc.flow - sc.camera
    for k in range(1, sc.num_ids):
      m = sc.instance_ids == k
      mag = np.linalg.norm(rel[m], axis=-1)
      if sc.moved[k]:
        assert mag.mean() > 0.5, (sc.seed, k)
        n_moved += 1
      else:
        assert mag.max() < 1e-4, (sc.seed, k)
        n_still += 1
    np.testing.assert_array_equal(sc.moved_ids, np.nonzero(sc.moved)[0])
  assert n_moved and n_still


def test_agent_touches_and_drags_its_object():
  scenes = _scenes(8, 64, agent_prob=1.0)
  with_agent = [sc for sc in scenes if sc.agent_id]
  assert len(with_agent) >= 6
  for sc in with_agent:
    a, k = sc.agent_id, sc.dragged_id
    assert a == sc.num_ids - 1 and 1 <= k < a                 # on top of everything
    assert sc.moved[a] and sc.moved[k]
    ids = sc.instance_ids
    touch = ndimage.binary_dilation(ids == a) & (ids == k)
    assert touch.sum() >= 2, sc.seed
    np.testing.assert_allclose(sc.affine[a], sc.affine[k], atol=1e-5)
    # one rigid motion: the affine map fitted on the object's pixels predicts the agent's flow
    ys, xs = np.nonzero(ids == k)
    x = np.stack([xs, ys, np.ones_like(xs)], 1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(x, sc.flow[ys, xs] + np.stack([xs, ys], 1), rcond=None)
    ya, xa = np.nonzero(ids == a)
    pred = np.stack([xa, ya, np.ones_like(xa)], 1) @ coef - np.stack([xa, ya], 1)
    np.testing.assert_allclose(sc.flow[ya, xa], pred, atol=1e-2)
    # the agent enters from the image border
    m = ids == a
    assert m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any(), sc.seed


def test_no_agent_when_disabled_and_scene_kwargs():
  for sc in _scenes(6, 64, agent_prob=0.0, num_objects=(3, 3), p_move=0.0, camera_prob=0.0):
    assert sc.agent_id == sc.dragged_id == 0
    assert len(sc.object_ids) == 3 and sc.moved.sum() == 1          # min_moving=1
    assert not sc.camera.any()
  with pytest.raises(ValueError, match="resolution"):
    make_scene(0, 16)
  with pytest.raises(ValueError, match="stream"):
    scene_seed(0, 0, "test")


def test_features_padded():
  sc = make_scene(scene_seed(0, 3), 64)
  f = sc.features()
  k = sc.num_ids
  assert f["moved"].shape == (synthetic.MAX_IDS,) and not f["moved"][k:].any()
  np.testing.assert_array_equal(f["points"][1:k], sc.points)
  assert (f["points"][0] == -1).all() and (f["points"][k:] == -1).all()
  assert f["num_ids"] == k and f["agent_id"] == sc.agent_id
  with pytest.raises(ValueError, match="max_ids"):
    sc.features(max_ids=2)


# ------------------------------------------------------------------------------------ h5 files
def test_h5_round_trip_through_spelkebench_reader(tmp_path):
  path = tmp_path / "s.h5"
  pairs = list(synthetic.generate(5, 4, 64, agent_prob=0.5))
  assert synthetic.write_synthetic_h5(path, iter(pairs)) == 4
  assert not list(tmp_path.glob(".*tmp*"))
  reader = SpelkeBenchReader(path)
  assert reader.keys() == [f"synth_5_{i:06d}" for i in range(4)]
  for key, sc in pairs:
    want = sc.to_example(key)
    got = reader[key]
    np.testing.assert_array_equal(got.image, want.image)
    np.testing.assert_array_equal(got.segments, want.segments)
    np.testing.assert_array_equal(got.points, want.points)
    back = synthetic.read_synthetic_scene(path, key)
    for f in FIELDS:
      np.testing.assert_array_equal(getattr(back, f), getattr(sc, f), err_msg=f)
    assert (back.agent_id, back.dragged_id) == (sc.agent_id, sc.dragged_id)
  import h5py
  with h5py.File(path, "r") as f:
    g = f[pairs[0][0]]
    assert g["frame1"].dtype == np.uint8 and g["flow"].dtype == np.float32
    assert g["instance_ids"].dtype == np.int32 and g["moved_ids"].dtype == np.int32
    assert g["agent_id"].dtype == np.int32 and g["flow"].compression == "gzip"


def test_make_synthetic_tool(tmp_path):
  out = tmp_path / "t.h5"
  subprocess.run([sys.executable, str(ROOT / "tools" / "make_synthetic.py"), "--seed=2", "--num=3",
                  "--resolution=48", f"--out={out}"], check=True, cwd=ROOT, capture_output=True)
  reader = SpelkeBenchReader(out)
  assert reader.keys() == ["synth_2_000000", "synth_2_000001", "synth_2_000002"]
  want = make_scene(scene_seed(2, 1), 48)
  np.testing.assert_array_equal(reader["synth_2_000001"].image, want.frame0)


# ------------------------------------------------------------------------------ TFDS and grain
@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  from spelke_jax.data import tfds_synthetic
  cfg = tfds_synthetic.SyntheticConfig(name="tiny48", resolution=48, num_train=16,
                                       num_validation=4, seed=1)
  return tfds_synthetic.prepare(cfg, tmp_path_factory.mktemp("tfds"))


def test_tfds_builder_round_trip(tiny_builder):
  import tensorflow_datasets as tfds
  b = tiny_builder
  assert b.info.splits["train"].num_examples == 16
  assert list(Path(b.data_dir).glob("*.array_record*"))
  src = tfds.data_source("spelke_synthetic/tiny48", split="validation",
                         data_dir=Path(b.data_dir).parents[2], download=False)
  assert len(src) == 4
  for split, s in (("validation", src), ("train", b.as_data_source("train"))):
    for i in (0, 3):
      ex = s[i]
      want = make_scene(scene_seed(1, i, split), 48).features()
      assert int(ex["index"]) == i
      for k, v in want.items():
        np.testing.assert_array_equal(ex[k], v, err_msg=k)
        assert np.asarray(ex[k]).dtype == v.dtype or np.ndim(v) == 0, k
  assert not np.array_equal(src[0]["frame0"], b.as_data_source("train")[0]["frame0"])


def test_grain_pipeline_shards_disjointly_and_shuffles_deterministically(tiny_builder):
  from spelke_jax.data import pipeline

  def indices(pi, seed=0, epochs=1, shuffle=True):
    it = pipeline.make_dataset(tiny_builder, "train", batch_size=2, seed=seed, num_epochs=epochs,
                               process_index=pi, process_count=2, shuffle=shuffle)
    return [int(i) for b in it for i in b["index"]]

  a, b = indices(0), indices(1)
  assert len(a) == len(b) == 8 and not set(a) & set(b) and set(a) | set(b) == set(range(16))
  assert indices(0) == a                                   # deterministic
  assert indices(0, seed=1) != a and sorted(indices(0, seed=1)) == sorted(a)
  assert indices(0, shuffle=False) == sorted(a)
  two = indices(0, epochs=2)
  assert sorted(two[:8]) == sorted(two[8:]) == sorted(a) and two[:8] != two[8:]
  batch = next(pipeline.make_dataset(Path(tiny_builder.data_dir), "train", batch_size=4, seed=0,
                                     process_index=0, process_count=1))
  assert batch["frame0"].shape == (4, 48, 48, 3) and batch["flow"].dtype == np.float32
  assert batch["num_ids"].dtype == np.int32 and batch["moved"].shape == (4, synthetic.MAX_IDS)


def test_synthetic_stream():
  from spelke_jax.data import pipeline
  b0 = list(pipeline.make_synthetic_stream(7, 32, 3, num_batches=2, process_index=0,
                                           process_count=2))
  b1 = list(pipeline.make_synthetic_stream(7, 32, 3, num_batches=2, process_index=1,
                                           process_count=2))
  i0 = np.concatenate([b["index"] for b in b0])
  i1 = np.concatenate([b["index"] for b in b1])
  np.testing.assert_array_equal(i0, [0, 2, 4, 6, 8, 10])
  np.testing.assert_array_equal(i1, [1, 3, 5, 7, 9, 11])
  assert b0[0]["frame0"].shape == (3, 32, 32, 3)
  want = make_scene(scene_seed(7, 2), 32)
  np.testing.assert_array_equal(b0[0]["frame1"][1], want.frame1)
  np.testing.assert_array_equal(b0[0]["flow"][1], want.flow)
