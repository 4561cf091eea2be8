"""The CLEVRTex layout of Neural Slot Interpreters (datasets/build_clevrtex_dataset.py and
dataset_loader/clevrtex_loader.py of jha-lab/neural-slot-interpreters), read without torch.

A dataset directory holds
  images.h5               datasets 'train', 'val', 'test': [N, H, W, 3] floats in [0, 1]
                          (the original: float64, 128 x 128; uint8 0..255 is accepted too)
  {split}_labels.npy      per image a list of objects [size, shape, material, x, y, z] (ids as
                          numbers, xyz = CLEVR '3d_coords' in about [-3, 3]): an object array of
                          ragged lists (the original's np.save of a list of lists), or a dense
                          float array [N, T, 6] (every row an object)
  {split}_lengths.npy     optional [N] ints: valid rows of a dense label array (padding after)
  label2program.json      optional {'sizes': {id: name}, 'shapes': ..., 'materials': ...}

`CLEVRTexSplit(root, split)` reads the labels at once and the images lazily (h5py slices, so
the 14.7 GB train split is never loaded whole). Example i is (image [H, W, 3] float32 in [0, 1],
programs [T, 6] float32 zero-padded to `max_program_len` = 10 rows, length int). Object arrays are
unpickled by a restricted unpickler that admits only numpy's array/scalar reconstructors (no
arbitrary code); plain arrays load with allow_pickle=False.
"""
from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

SPLITS = ("train", "val", "test")
ROW = 6                                   # size, shape, material, x, y, z
MAX_PROGRAM_LEN = 10
# (field, column, config field) of the three vocabularies.
VOCABS = (("size", 0, "num_sizes"), ("shape", 1, "num_shapes"), ("material", 2, "num_materials"))

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class DatasetError(ValueError):
  """A dataset directory that does not have the expected files, keys or shapes."""


class _NumpyOnly(pickle.Unpickler):

  def find_class(self, module, name):
    if (module, name) in _ALLOWED:
      return super().find_class(module, name)
    raise DatasetError(f"refusing to unpickle {module}.{name}: label files may only hold numpy "
                       "arrays, lists and numbers")


def load_npy(path: str | os.PathLike) -> np.ndarray:
  """np.load without executing pickled code: object arrays through `_NumpyOnly`."""
  path = Path(path)
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read(f)
    except ValueError as e:
      raise DatasetError(f"{path}: not a .npy file ({e})") from e
    if not dtype.hasobject:
      f.seek(0)
      return np.load(f, allow_pickle=False)
    try:
      arr = _NumpyOnly(io.BufferedReader(f)).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as e:
      raise DatasetError(f"{path}: unreadable object array ({e})") from e
  if not isinstance(arr, np.ndarray) or arr.shape != shape:
    raise DatasetError(f"{path}: header says shape {shape}, the payload is not such an array")
  return arr


def pad_programs(objects: Sequence, max_len: int = MAX_PROGRAM_LEN,
                 where: str = "") -> tuple[np.ndarray, int]:
  """One image's objects (list of [size, shape, material, x, y, z]) -> ([max_len, 6] float32
  zero-padded, length), as the original's __getitem__."""
  a = np.asarray(objects, np.float32)
  if a.size == 0:
    a = a.reshape(0, ROW)
  if a.ndim != 2 or a.shape[1] != ROW:
    raise DatasetError(f"{where}: objects must be rows of {ROW} numbers (size, shape, material, "
                       f"x, y, z), got shape {a.shape}")
  if len(a) > max_len:
    raise DatasetError(f"{where}: {len(a)} objects exceed max_program_len={max_len}")
  out = np.zeros((max_len, ROW), np.float32)
  out[:len(a)] = a
  return out, len(a)


def read_labels(path: str | os.PathLike, max_len: int = MAX_PROGRAM_LEN,
                lengths_path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """A labels .npy -> (programs [N, max_len, 6] float32, lengths [N] int32)."""
  raw = load_npy(path)
  if raw.dtype == object:
    if raw.ndim != 1:
      raise DatasetError(f"{path}: an object label array must be 1-d (one list per image), got "
                         f"shape {raw.shape}")
    rows = [pad_programs(list(x) if x is not None else [], max_len, f"{path}[{i}]")
            for i, x in enumerate(raw)]
    if not rows:
      return np.zeros((0, max_len, ROW), np.float32), np.zeros((0,), np.int32)
    return np.stack([r[0] for r in rows]), np.asarray([r[1] for r in rows], np.int32)
  if raw.ndim != 3 or raw.shape[2] != ROW:
    raise DatasetError(f"{path}: dense labels must be [N, T, {ROW}], got shape {raw.shape}")
  n, t, _ = raw.shape
  if t > max_len:
    raise DatasetError(f"{path}: {t} label rows per image exceed max_program_len={max_len}")
  lengths = np.full((n,), t, np.int32)
  if lengths_path is not None and Path(lengths_path).exists():
    lengths = load_npy(lengths_path).astype(np.int32)
    if lengths.shape != (n,) or lengths.min(initial=0) < 0 or lengths.max(initial=0) > t:
      raise DatasetError(f"{lengths_path}: lengths must be [N={n}] ints in [0, {t}], got shape "
                         f"{lengths.shape}")
  out = np.zeros((n, max_len, ROW), np.float32)
  out[:, :t] = raw
  out[np.arange(max_len)[None, :] >= lengths[:, None]] = 0.0
  return out, lengths


def check_vocab(programs: np.ndarray, lengths: np.ndarray, sizes: dict[str, int],
                where: str = "") -> None:
  """Raises DatasetError if a valid row's size / shape / material id is outside [0, vocab) (ids
  truncated toward zero as the model's .long()). `sizes`: {'num_sizes': 3, ...}."""
  valid = np.arange(programs.shape[1])[None, :] < lengths[:, None]
  for name, col, field in VOCABS:
    if field not in sizes:
      continue
    ids = np.trunc(programs[..., col])
    bad = valid & ((ids < 0) | (ids >= sizes[field]))
    if bad.any():
      img, row = (int(v[0]) for v in np.nonzero(bad))
      raise DatasetError(
          f"{where}: {name} ids span [{int(ids[valid].min())}, {int(ids[valid].max())}] but the "
          f"model's {name} vocabulary has {sizes[field]} entries (config {field}); first offender: "
          f"image {img}, object {row}. Set {field} to the dataset's vocabulary "
          "(label2program.json).")


def read_vocabulary(root: str | os.PathLike) -> dict[str, int] | None:
  """{'num_sizes': n, 'num_shapes': n, 'num_materials': n} from label2program.json, if present."""
  path = Path(root) / "label2program.json"
  if not path.exists():
    return None
  try:
    d = json.loads(path.read_text())
    return {field: len(d[name + "s"]) for name, _, field in VOCABS}
  except (ValueError, KeyError, TypeError) as e:
    raise DatasetError(f"{path}: expected keys 'sizes', 'shapes', 'materials' ({e})") from e


class CLEVRTexSplit:
  """One split of a CLEVRTex directory. `vocab` ({'num_sizes': 3, ...}, e.g. from the model
  config) is checked against every label row at construction."""

  def __init__(self, root: str | os.PathLike, split: str, *, max_program_len: int = MAX_PROGRAM_LEN,
               vocab: dict[str, int] | None = None):
    if split not in SPLITS:
      raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    self.root = Path(root)
    self.split = split
    images = self.root / "images.h5"
    labels = self.root / f"{split}_labels.npy"
    for p in (images, labels):
      if not p.exists():
        raise FileNotFoundError(f"{p} not found: a CLEVRTex directory holds images.h5 and "
                                "{train,val,test}_labels.npy (datasets/build_clevrtex_dataset.py); "
                                "make a stand-in with tools/make_nsi_standin.py")
    import h5py  # pylint: disable=g-import-not-at-top
    self._h5 = h5py.File(images, "r")
    if split not in self._h5:
      keys = sorted(self._h5.keys())
      self._h5.close()
      raise DatasetError(f"{images}: no dataset {split!r} (has {keys})")
    self._images = self._h5[split]
    shape = self._images.shape
    if len(shape) != 4 or shape[-1] != 3 or shape[1] != shape[2]:
      self._h5.close()
      raise DatasetError(f"{images}[{split!r}]: images must be [N, S, S, 3], got {shape}")
    if not (np.issubdtype(self._images.dtype, np.floating) or self._images.dtype == np.uint8):
      self._h5.close()
      raise DatasetError(f"{images}[{split!r}]: images must be floats in [0, 1] or uint8, got "
                         f"{self._images.dtype}")
    self.programs, self.lengths = read_labels(labels, max_program_len,
                                              self.root / f"{split}_lengths.npy")
    if len(self.programs) != shape[0]:
      self._h5.close()
      raise DatasetError(f"{labels}: {len(self.programs)} label lists for {shape[0]} images")
    if vocab:
      check_vocab(self.programs, self.lengths, vocab, str(labels))

  def __len__(self) -> int:
    return int(self._images.shape[0])

  @property
  def image_size(self) -> int:
    return int(self._images.shape[1])

  def images(self, indices: Sequence[int]) -> np.ndarray:
    """[len(indices), S, S, 3] float32 in [0, 1] (any order; read sorted from the file)."""
    idx = np.asarray(indices, np.int64)
    order = np.argsort(idx, kind="stable")
    uniq, inverse = np.unique(idx[order], return_inverse=True)
    data = self._images[uniq.tolist()] if len(uniq) else np.zeros((0,) + self._images.shape[1:])
    data = data[inverse]
    out = np.empty_like(data)
    out[order] = data
    if out.dtype == np.uint8:
      return out.astype(np.float32) / 255.0
    return out.astype(np.float32)

  def batch(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """{'images' [B, S, S, 3] float32, 'programs' [B, T, 6] float32, 'lengths' [B] int32}."""
    idx = np.asarray(indices, np.int64)
    return {"images": self.images(idx), "programs": self.programs[idx],
            "lengths": self.lengths[idx]}

  def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, int]:
    return self.images([i])[0], self.programs[i], int(self.lengths[i])

  def close(self) -> None:
    self._h5.close()


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, *, shuffle: bool = True,
                  drop_last: bool = True) -> Iterator[np.ndarray]:
  """Index batches of one epoch: a permutation from (seed, epoch) (so a resumed run sees the same
  order), the last partial batch dropped like the original's DataLoader(drop_last=True)."""
  order = (np.random.default_rng((seed, epoch)).permutation(n) if shuffle
           else np.arange(n))
  stop = (n // batch_size) * batch_size if drop_last else n
  for s in range(0, stop, batch_size):
    yield order[s:s + batch_size]
