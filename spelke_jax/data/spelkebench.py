"""Reader / writer for the SpelkeBench HDF5 file, and the original's split of its keys.

Layout (the original's code and builder; its README names differ): one group per image, e.g.
`entityseg_1_image2926`, holding
  rgb       uint8 [H,W,3]       (README: `image`)
  segment   [N,H,W] 0/1 masks   (README: `segments_gt`)
  centroid  int [N,2] (x, y)    (README: `poke_location`), one probe point per mask
plus builder extras (`seg_map`, `segment_ids`, `filename`) that are ignored.

h5py handles must not cross a fork: the reader opens the file lazily, keeps one handle per
process (re-opened when the pid changes) and drops it when pickled.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Sequence

import numpy as np

# Accepted spellings per field: the code's name first, then the README's.
KEYS = {
    "image": ("rgb", "image"),
    "segments": ("segment", "segments_gt"),
    "points": ("centroid", "poke_location"),
}
WRITE_KEYS = {
    "original": {"image": "rgb", "segments": "segment", "points": "centroid"},
    "readme": {"image": "image", "segments": "segments_gt", "points": "poke_location"},
}


@dataclasses.dataclass
class Example:
  """One SpelkeBench image: image uint8 [H,W,3], segments bool [N,H,W], points int32 [N,2] (x,y)."""
  key: str
  image: np.ndarray
  segments: np.ndarray
  points: np.ndarray


class SpelkeBenchError(ValueError):
  """A malformed SpelkeBench file; the message names the file, the group and the key."""


def _check_file(path: str) -> None:
  import h5py  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise FileNotFoundError(f"SpelkeBench file {path} does not exist")
  if os.path.isdir(path):
    raise SpelkeBenchError(f"SpelkeBench path {path} is a directory, not an HDF5 file")
  if not h5py.is_hdf5(path):
    raise SpelkeBenchError(f"{path} is not an HDF5 file")


class SpelkeBenchReader:
  """`SpelkeBenchReader(path)`: `keys()` sorted group names, `len`, `reader[key] -> Example`."""

  def __init__(self, path: str | os.PathLike):
    self.path = os.fspath(path)
    _check_file(self.path)
    self._h5 = None
    self._pid = None
    self._keys: list[str] | None = None

  # -- handle management (one per process)
  def _file(self):
    import h5py  # pylint: disable=g-import-not-at-top
    if self._h5 is None or self._pid != os.getpid():
      self._h5 = None
      try:
        self._h5 = h5py.File(self.path, "r")
      except OSError as e:
        raise SpelkeBenchError(f"{self.path}: cannot open as HDF5 ({e})") from e
      self._pid = os.getpid()
    return self._h5

  def close(self) -> None:
    if self._h5 is not None and self._pid == os.getpid():
      self._h5.close()
    self._h5 = None
    self._pid = None

  def __enter__(self) -> "SpelkeBenchReader":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_h5"] = None
    state["_pid"] = None
    return state

  def __del__(self):
    try:
      self.close()
    except Exception:  # pylint: disable=broad-except
      pass

  # -- mapping interface
  def keys(self) -> list[str]:
    if self._keys is None:
      import h5py  # pylint: disable=g-import-not-at-top
      f = self._file()
      self._keys = sorted(k for k in f.keys() if isinstance(f[k], h5py.Group))
    return list(self._keys)

  def __len__(self) -> int:
    return len(self.keys())

  def __iter__(self):
    return iter(self.keys())

  def __contains__(self, key: str) -> bool:
    return key in self.keys()

  def _field(self, group, key: str, field: str) -> tuple[str, np.ndarray]:
    for name in KEYS[field]:
      if name in group:
        return name, group[name][()]
    raise KeyError(f"{self.path}: group {key!r} has no key {KEYS[field][0]!r} "
                   f"(nor {KEYS[field][1]!r}); it holds {sorted(group.keys())}")

  def __getitem__(self, key: str) -> Example:
    import h5py  # pylint: disable=g-import-not-at-top
    f = self._file()
    if key not in f or not isinstance(f[key], h5py.Group):
      raise KeyError(f"{self.path}: no image group {key!r}")
    g = f[key]
    img_name, image = self._field(g, key, "image")
    seg_name, segments = self._field(g, key, "segments")
    pt_name, points = self._field(g, key, "points")
    where = lambda name: f"{self.path}: group {key!r} key {name!r}"  # noqa: E731

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise SpelkeBenchError(f"{where(img_name)}: expected uint8 [H,W,3], got "
                             f"{image.dtype} {image.shape}")
    h, w = image.shape[:2]

    if segments.ndim == 2:
      raise SpelkeBenchError(f"{where(seg_name)}: expected [N,H,W] masks, got {segments.shape}")
    if segments.ndim != 3 or segments.shape[1:] != (h, w):
      raise SpelkeBenchError(f"{where(seg_name)}: expected [N,{h},{w}] masks (image is "
                             f"{h}x{w}), got {segments.shape}")
    if segments.dtype == bool or np.issubdtype(segments.dtype, np.integer):
      masks = segments != 0
    elif np.issubdtype(segments.dtype, np.floating):
      if not np.all((segments == 0) | (segments == 1)):
        raise SpelkeBenchError(f"{where(seg_name)}: float masks must be 0/1")
      masks = segments != 0
    else:
      raise SpelkeBenchError(f"{where(seg_name)}: unsupported mask dtype {segments.dtype}")

    n = masks.shape[0]
    if points.ndim != 2 or points.shape[1] != 2:
      raise SpelkeBenchError(f"{where(pt_name)}: expected [N,2] (x, y) points, got "
                             f"{points.dtype} {points.shape}")
    if np.issubdtype(points.dtype, np.floating):
      if not np.all(np.isfinite(points)) or not np.all(points == np.round(points)):
        raise SpelkeBenchError(f"{where(pt_name)}: points must be integers, got {points}")
    elif not np.issubdtype(points.dtype, np.integer):
      raise SpelkeBenchError(f"{where(pt_name)}: unsupported point dtype {points.dtype}")
    if points.shape[0] != n:
      raise SpelkeBenchError(f"{where(pt_name)}: {points.shape[0]} points for {n} masks "
                             f"in {seg_name!r}")
    pts = points.astype(np.int64)
    bad = (pts[:, 0] < 0) | (pts[:, 0] >= w) | (pts[:, 1] < 0) | (pts[:, 1] >= h)
    if bad.any():
      i = int(np.argmax(bad))
      raise SpelkeBenchError(f"{where(pt_name)}: point {i} (x, y) = {tuple(pts[i])} lies "
                             f"outside the {w}x{h} image")
    return Example(key=key, image=np.ascontiguousarray(image), segments=masks,
                   points=pts.astype(np.int32))

  def __repr__(self) -> str:
    return f"SpelkeBenchReader({self.path!r})"


def write_spelkebench_h5(path: str | os.PathLike, examples: Iterable[Example], *,
                         spelling: str = "original", compression: str | None = "gzip") -> None:
  """Writes `examples` in the original's layout (`spelling="readme"`: the README's key names),
  masks as uint8 0/1 and points as int64; to a temp name beside `path`, then renamed."""
  import h5py  # pylint: disable=g-import-not-at-top
  if spelling not in WRITE_KEYS:
    raise ValueError(f"spelling must be one of {sorted(WRITE_KEYS)}, got {spelling!r}")
  names = WRITE_KEYS[spelling]
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
  try:
    with h5py.File(tmp, "w") as f:
      seen = set()
      for ex in examples:
        if ex.key in seen:
          raise ValueError(f"duplicate SpelkeBench key {ex.key!r}")
        seen.add(ex.key)
        g = f.create_group(ex.key)
        g.create_dataset(names["image"], data=np.asarray(ex.image, np.uint8),
                         compression=compression)
        g.create_dataset(names["segments"], data=(np.asarray(ex.segments) != 0).astype(np.uint8),
                         compression=compression)
        g.create_dataset(names["points"], data=np.asarray(ex.points, np.int64))
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def shard_keys(keys: Sequence[str], num_splits: int, split_num: int) -> list[str]:
  """The keys one job of run_inference_parallel.py handles: sorted, shuffled with seed 42
  (`np.random.seed(42); np.random.shuffle`, here a local RandomState(42): same stream),
  then `np.array_split(keys, num_splits)[split_num]`."""
  if num_splits < 1:
    raise ValueError(f"num_splits must be >= 1, got {num_splits}")
  if not 0 <= split_num < num_splits:
    raise ValueError(f"split_num must be in [0, {num_splits}), got {split_num}")
  order = sorted(keys)
  np.random.RandomState(42).shuffle(order)
  if not order:
    return []
  return [str(k) for k in np.array_split(np.asarray(order), num_splits)[split_num]]
