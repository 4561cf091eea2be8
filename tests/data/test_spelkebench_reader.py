"""SpelkeBench HDF5 reader / writer and the original's key sharding."""
from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest

from spelke_jax.data.spelkebench import (Example, SpelkeBenchError, SpelkeBenchReader, shard_keys,
                                         write_spelkebench_h5)

H, W = 24, 20


def _examples(n=3, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    k = 1 + i
    segs = rng.random((k, H, W)) > 0.5
    pts = np.stack([rng.integers(0, W, k), rng.integers(0, H, k)], 1)
    out.append(Example(key=f"entityseg_1_image{100 - i}",
                       image=rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                       segments=segs, points=pts))
  return out


@pytest.mark.parametrize("spelling", ["original", "readme"])
def test_round_trip(tmp_path, spelling):
  path = tmp_path / "bench.h5"
  exs = _examples()
  write_spelkebench_h5(path, exs, spelling=spelling)
  with h5py.File(path, "r") as f:
    names = set(f[exs[0].key].keys())
  assert names == ({"rgb", "segment", "centroid"} if spelling == "original"
                   else {"image", "segments_gt", "poke_location"})
  r = SpelkeBenchReader(path)
  assert r.keys() == sorted(e.key for e in exs)
  assert len(r) == 3 and exs[1].key in r
  for e in exs:
    got = r[e.key]
    assert got.key == e.key
    assert got.image.dtype == np.uint8 and got.segments.dtype == bool
    assert np.issubdtype(got.points.dtype, np.integer)
    np.testing.assert_array_equal(got.image, e.image)
    np.testing.assert_array_equal(got.segments, e.segments)
    np.testing.assert_array_equal(got.points, e.points)
  r.close()
  assert not list(tmp_path.glob(".*tmp*"))   # temp file renamed away


def test_reader_is_picklable_and_reopens(tmp_path):
  path = tmp_path / "bench.h5"
  exs = _examples()
  write_spelkebench_h5(path, exs)
  r = SpelkeBenchReader(path)
  first = r[exs[0].key]
  r2 = pickle.loads(pickle.dumps(r))     # e.g. sent to a worker process: no live handle
  assert r2._h5 is None
  np.testing.assert_array_equal(r2[exs[0].key].segments, first.segments)
  r._pid = -1                            # as after a fork: the handle is re-opened
  np.testing.assert_array_equal(r[exs[0].key].image, first.image)


def _write_raw(path, groups):
  with h5py.File(path, "w") as f:
    for key, items in groups.items():
      g = f.create_group(key)
      for name, data in items.items():
        g.create_dataset(name, data=data)


def _good():
  return {"rgb": np.zeros((H, W, 3), np.uint8), "segment": np.ones((2, H, W), np.uint8),
          "centroid": np.array([[1, 2], [3, 4]])}


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.h5"):
    SpelkeBenchReader(tmp_path / "nope.h5")


def test_not_hdf5(tmp_path):
  p = tmp_path / "corrupt.h5"
  p.write_bytes(b"this is not an hdf5 file" * 10)
  with pytest.raises(SpelkeBenchError, match="corrupt.h5.*not an HDF5"):
    SpelkeBenchReader(p)


def test_missing_group(tmp_path):
  p = tmp_path / "b.h5"
  _write_raw(p, {"img_a": _good()})
  with pytest.raises(KeyError, match="img_b"):
    SpelkeBenchReader(p)["img_b"]


@pytest.mark.parametrize("drop", ["rgb", "segment", "centroid"])
def test_missing_key_names_group_and_key(tmp_path, drop):
  p = tmp_path / "b.h5"
  items = _good()
  del items[drop]
  _write_raw(p, {"img_a": _good(), "img_bad": items})
  r = SpelkeBenchReader(p)
  r["img_a"]
  with pytest.raises(KeyError) as e:
    r["img_bad"]
  assert "img_bad" in str(e.value) and drop in str(e.value)


@pytest.mark.parametrize("field,value,pattern", [
    ("rgb", np.zeros((H, W, 3), np.float32), "'rgb'.*uint8"),
    ("rgb", np.zeros((H, W), np.uint8), "'rgb'.*uint8"),
    ("segment", np.ones((2, H, W + 1), np.uint8), "'segment'"),
    ("segment", np.ones((H, W), np.uint8), "'segment'"),
    ("segment", np.full((2, H, W), 0.5, np.float32), "'segment'.*0/1"),
    ("centroid", np.array([[1, 2], [3, 4], [5, 6]]), "'centroid'.*3 points for 2 masks"),
    ("centroid", np.array([[1, 2], [W, 4]]), "'centroid'.*outside"),
    ("centroid", np.array([[1, 2], [3, -1]]), "'centroid'.*outside"),
    ("centroid", np.array([[1.5, 2.0], [3.0, 4.0]]), "'centroid'.*integers"),
    ("centroid", np.array([1, 2]), "'centroid'"),
])
def test_bad_values_name_group_and_key(tmp_path, field, value, pattern):
  p = tmp_path / "b.h5"
  items = _good()
  items[field] = value
  _write_raw(p, {"grp_x": items})
  with pytest.raises(SpelkeBenchError, match="grp_x"):
    SpelkeBenchReader(p)["grp_x"]
  with pytest.raises(SpelkeBenchError, match=pattern):
    SpelkeBenchReader(p)["grp_x"]


def test_float_integral_centroids_and_uint8_255_masks_accepted(tmp_path):
  p = tmp_path / "b.h5"
  items = _good()
  items["centroid"] = np.array([[1.0, 2.0], [3.0, 4.0]])
  items["segment"] = items["segment"] * 255
  _write_raw(p, {"g": items})
  ex = SpelkeBenchReader(p)["g"]
  assert ex.points.tolist() == [[1, 2], [3, 4]] and ex.segments.all()


def _original_shard(keys, num_splits, split_num):
  """run_inference_parallel.py's lines, with the global RNG (restored afterwards)."""
  state = np.random.get_state()
  try:
    keys = sorted(keys)
    np.random.seed(42)
    np.random.shuffle(keys)
    return list(np.array_split(keys, num_splits)[split_num])
  finally:
    np.random.set_state(state)


@pytest.mark.parametrize("n,num_splits", [(10, 1), (10, 3), (37, 4), (5, 8), (500, 7)])
def test_shard_keys_matches_original_and_partitions(n, num_splits):
  rng = np.random.default_rng(n)
  keys = [f"entityseg_{int(i)}_image{int(j)}" for i, j in
          zip(rng.integers(0, 3, n), rng.permutation(10 * n)[:n])]
  shards = [shard_keys(keys, num_splits, s) for s in range(num_splits)]
  for s, shard in enumerate(shards):
    assert shard == [str(k) for k in _original_shard(list(keys), num_splits, s)]
    assert all(isinstance(k, str) for k in shard)
  flat = [k for s in shards for k in s]
  assert sorted(flat) == sorted(keys) and len(set(flat)) == len(flat)
  sizes = [len(s) for s in shards]
  assert max(sizes) - min(sizes) <= 1
  # input order does not matter (keys are sorted first)
  assert shard_keys(list(reversed(keys)), num_splits, 0) == shards[0]


def test_shard_keys_arguments():
  with pytest.raises(ValueError):
    shard_keys(["a"], 0, 0)
  with pytest.raises(ValueError):
    shard_keys(["a"], 2, 2)
  assert shard_keys([], 3, 1) == []
