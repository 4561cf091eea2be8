"""CLEVRTex layout reader and the NSI stand-in set: round trip, determinism, clear errors."""
from __future__ import annotations

import json
import pickle

import h5py
import numpy as np
import pytest

from spelke_jax.data import clevrtex, nsi_standin

SMALL = dict(seed=3, resolution=32, num_train=12, num_val=4, num_test=4, num_materials=5)
VOCAB = {"num_sizes": 3, "num_shapes": 4, "num_materials": 5}


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
  return nsi_standin.write_standin(tmp_path_factory.mktemp("d") / "standin", **SMALL)


def test_standin_round_trip(standin):
  assert sorted(p.name for p in standin.iterdir()) == [
      "images.h5", "label2program.json", "program2label.json", "program_space.json",
      "standin.json", "test_labels.npy", "train_labels.npy", "val_labels.npy"]
  assert clevrtex.read_vocabulary(standin) == VOCAB
  mats = nsi_standin.materials(5, 32, seed=3)
  for split, n in (("train", 12), ("val", 4), ("test", 4)):
    data = clevrtex.CLEVRTexSplit(standin, split, vocab=VOCAB)
    assert len(data) == n and data.image_size == 32
    assert data.programs.shape == (n, 10, 6) and data.lengths.dtype == np.int32
    for i in (0, n - 1):
      image, objects, _ = nsi_standin.make_standin_scene(
          (3, nsi_standin.SPLIT_IDS[split], i), 32, mats)
      img, prog, length = data[i]
      np.testing.assert_array_equal(img, image)
      assert length == len(objects) and 2 <= length <= 5
      np.testing.assert_allclose(prog[:length], np.asarray(objects, np.float32))
      assert (prog[length:] == 0).all()
    assert (np.abs(data.programs[..., 3:5]) <= 3).all()
    b = data.batch([2, 0, 2])
    np.testing.assert_array_equal(b["images"][0], b["images"][2])
    np.testing.assert_array_equal(b["images"][1], data[0][0])
    data.close()


def test_standin_is_deterministic_and_reused(standin, tmp_path):
  other = nsi_standin.write_standin(tmp_path / "again", **SMALL)
  for split in ("train", "test"):
    a = clevrtex.CLEVRTexSplit(standin, split)
    b = clevrtex.CLEVRTexSplit(other, split)
    np.testing.assert_array_equal(a.images(range(len(a))), b.images(range(len(b))))
    np.testing.assert_array_equal(a.programs, b.programs)
  stamp = (other / "images.h5").stat().st_mtime_ns
  nsi_standin.ensure_standin(other, **SMALL)
  assert (other / "images.h5").stat().st_mtime_ns == stamp
  nsi_standin.ensure_standin(other, **{**SMALL, "num_test": 2})
  assert len(clevrtex.CLEVRTexSplit(other, "test")) == 2
  assert not list(tmp_path.glob(".*tmp*"))


def _write(root, images=None, labels=None, split="train"):
  root.mkdir(parents=True, exist_ok=True)
  if images is not None:
    with h5py.File(root / "images.h5", "w") as f:
      f.create_dataset(split, data=images)
  if labels is not None:
    np.save(root / f"{split}_labels.npy", labels, allow_pickle=True)


def _objects(lists):
  out = np.empty((len(lists),), object)
  for i, x in enumerate(lists):
    out[i] = x
  return out


def test_original_layout_float64_and_dense_labels(tmp_path):
  imgs = np.random.default_rng(0).uniform(size=(2, 8, 8, 3))            # float64, as the original
  _write(tmp_path / "a", imgs, _objects([[[0, 1, 2, 0.5, -1.0, 0.35]],
                                         [[2, 3, 4, 1, 1, 0.7], [1, 0, 0, -2, 2, 0.5]]]))
  d = clevrtex.CLEVRTexSplit(tmp_path / "a", "train", vocab=VOCAB)
  np.testing.assert_allclose(d.images([0, 1]), imgs.astype(np.float32))
  assert d.lengths.tolist() == [1, 2] and d.programs[1, 1, 3] == -2
  dense = np.zeros((2, 3, 6), np.float32)
  dense[:, :, 0] = 1
  _write(tmp_path / "b", (imgs * 255).astype(np.uint8), dense)
  np.save(tmp_path / "b" / "train_lengths.npy", np.array([3, 1]))
  d = clevrtex.CLEVRTexSplit(tmp_path / "b", "train")
  assert d.lengths.tolist() == [3, 1] and d.programs.shape == (2, 10, 6)
  assert d.programs[1, 1:].sum() == 0 and d.images([0]).max() <= 1.0


def test_loader_errors(tmp_path):
  imgs = np.zeros((2, 8, 8, 3), np.float32)
  good = _objects([[[0, 0, 0, 0, 0, 0]], [[1, 1, 1, 0, 0, 0]]])
  with pytest.raises(FileNotFoundError, match="images.h5"):
    clevrtex.CLEVRTexSplit(tmp_path / "none", "train")
  with pytest.raises(clevrtex.DatasetError, match="split must be"):
    clevrtex.CLEVRTexSplit(tmp_path, "training")
  _write(tmp_path / "k", imgs, good, split="val")
  np.save(tmp_path / "k" / "train_labels.npy", good, allow_pickle=True)
  with pytest.raises(clevrtex.DatasetError, match=r"no dataset 'train' \(has \['val'\]\)"):
    clevrtex.CLEVRTexSplit(tmp_path / "k", "train")
  _write(tmp_path / "s", np.zeros((2, 8, 8), np.float32), good)
  with pytest.raises(clevrtex.DatasetError, match=r"\[N, S, S, 3\]"):
    clevrtex.CLEVRTexSplit(tmp_path / "s", "train")
  _write(tmp_path / "n", imgs, _objects([[[0, 0, 0, 0, 0, 0]]]))
  with pytest.raises(clevrtex.DatasetError, match="1 label lists for 2 images"):
    clevrtex.CLEVRTexSplit(tmp_path / "n", "train")
  _write(tmp_path / "w", imgs, _objects([[[0, 0, 0, 0, 0]], [[0, 0, 0, 0, 0]]]))
  with pytest.raises(clevrtex.DatasetError, match="rows of 6"):
    clevrtex.CLEVRTexSplit(tmp_path / "w", "train")
  _write(tmp_path / "l", imgs, _objects([[[0] * 6] * 11, [[0] * 6]]))
  with pytest.raises(clevrtex.DatasetError, match="exceed max_program_len=10"):
    clevrtex.CLEVRTexSplit(tmp_path / "l", "train")
  _write(tmp_path / "v", imgs, _objects([[[0, 0, 0, 0, 0, 0]], [[0, 0, 0, 0, 0, 0],
                                                                [1, 2, 5, 0, 0, 0]]]))
  clevrtex.CLEVRTexSplit(tmp_path / "v", "train", vocab={**VOCAB, "num_materials": 6})
  with pytest.raises(clevrtex.DatasetError,
                     match=r"material ids span \[0, 5\].*5 entries.*image 1, object 1"):
    clevrtex.CLEVRTexSplit(tmp_path / "v", "train", vocab=VOCAB)
  (tmp_path / "v" / "label2program.json").write_text(json.dumps({"sizes": {}}))
  with pytest.raises(clevrtex.DatasetError, match="label2program.json"):
    clevrtex.read_vocabulary(tmp_path / "v")


class _Evil:
  def __reduce__(self):
    return (print, ("pwned",))


def test_object_label_files_never_run_pickled_code(tmp_path):
  arr = _objects([[[0, 0, 0, 0, 0, 0]], _Evil()])
  with open(tmp_path / "x.npy", "wb") as f:   # what np.save writes for an object array
    np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False,
                                             "shape": (2,)})
    pickle.dump(arr, f, protocol=3)
  with pytest.raises(clevrtex.DatasetError, match="refusing to unpickle builtins.print"):
    clevrtex.load_npy(tmp_path / "x.npy")
  (tmp_path / "y.npy").write_bytes(b"not numpy")
  with pytest.raises(clevrtex.DatasetError, match="not a .npy file"):
    clevrtex.load_npy(tmp_path / "y.npy")


def test_epoch_batches_drop_last_and_depend_on_epoch():
  a = list(clevrtex.epoch_batches(10, 4, seed=0, epoch=0))
  assert [len(b) for b in a] == [4, 4]
  assert len(set(np.concatenate(a).tolist())) == 8
  b = list(clevrtex.epoch_batches(10, 4, seed=0, epoch=1))
  assert not all((x == y).all() for x, y in zip(a, b))
  np.testing.assert_array_equal(np.concatenate(list(clevrtex.epoch_batches(
      10, 4, 0, 0, shuffle=False, drop_last=False))), np.arange(10))
