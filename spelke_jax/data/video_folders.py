"""Frame-pair datasets on disk for EISEN training and evaluation (no TF, numpy + Pillow).

Every source yields examples {'image' uint8 [R,R,3] (frame t), 'flow' float32 [R,R,2] (forward
flow of frame t in pixels of the R x R image; channel 0 = dx), 'ids' int32 [R,R] (ground-truth
instance ids, 0 = background; zeros when the dataset has none), 'key' str}. Optical flow must be
PRECOMPUTED (e.g. RAFT, as the original): `.npy` files of [H,W,2] or [2,H,W] pixels next to the
frames, in a parallel folder tree.

  playroom:  the original EISEN loader's layout: <root>/{images,flows,segments}/model_split_<k>/
             <scene>/frame<t>.{png,npy,png} + <root>/meta.json (zone ids = background).
             train = scenes whose name ends in 0-8, val = model_split_[0-3] scenes ending in 9.
  folders:   DAVIS-style video folders: <root>/<frames_dir>/<video>/<frame>.jpg|png, flow
             <root>/<flow_dir>/<video>/<frame>.npy, optional GT <root>/<gt_dir>/<video>/<frame>.png
             (palette/greyscale ids). Bridge-style robot videos use the same reader with their own
             frames_dir pattern (e.g. '*/images0').
  synthetic: scenes of a synthetic h5 (tools/make_synthetic.py).
"""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


class DataError(ValueError):
  """A dataset folder or file that does not have the expected layout."""


def _load_rgb(path: Path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except Exception as e:  # Pillow raises many kinds of errors for bad files
    raise DataError(f"{path}: not a readable image ({e})") from e


def _load_flow(path: Path) -> np.ndarray:
  if not path.exists():
    raise DataError(f"missing precomputed flow {path} (compute RAFT flow first, see the module "
                    "docstring)")
  flow = np.load(path, allow_pickle=False)
  if flow.ndim == 3 and flow.shape[0] == 2 and flow.shape[-1] != 2:
    flow = flow.transpose(1, 2, 0)
  if flow.ndim != 3 or flow.shape[-1] != 2:
    raise DataError(f"{path}: flow must be [H, W, 2] or [2, H, W], got {flow.shape}")
  return flow.astype(np.float32)


def resize_example(image: np.ndarray, flow: np.ndarray, ids: np.ndarray, size: int):
  """Resizes to size x size (bilinear image, nearest flow/ids, flow rescaled to new pixels)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image, flow, ids
  img = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
  rows = np.minimum((np.arange(size) * h / size).astype(int), h - 1)
  cols = np.minimum((np.arange(size) * w / size).astype(int), w - 1)
  fl = flow[rows][:, cols] * np.asarray([size / w, size / h], np.float32)
  return img, fl.astype(np.float32), ids[rows][:, cols]


class PlayroomSource:
  """The original EISEN Playroom layout (see module docstring)."""

  def __init__(self, root: str | os.PathLike, split: str = "train", frame: int = 0):
    self.root = Path(root)
    if not (self.root / "images").is_dir():
      raise DataError(f"{self.root} has no images/ folder (expected the Playroom layout)")
    scenes = sorted(p.relative_to(self.root / "images")
                    for p in (self.root / "images").glob("model_split_*/*") if p.is_dir())
    if split == "train":
      scenes = [s for s in scenes if fnmatch.fnmatch(s.name, "*[0-8]")]
    elif split in ("val", "validation"):
      scenes = [s for s in scenes if fnmatch.fnmatch(str(s), "model_split_[0-3]/*9")]
    else:
      raise DataError(f"unknown Playroom split {split!r} (train | val)")
    if not scenes:
      raise DataError(f"no Playroom scenes for split {split!r} under {self.root / 'images'}")
    self.scenes, self.frame = scenes, frame
    meta = self.root / "meta.json"
    self.meta = json.loads(meta.read_text()) if meta.exists() else {}

  def __len__(self) -> int:
    return len(self.scenes)

  def _zone_id(self, scene: Path) -> int | None:
    key = f"playroom_large_v3_images/{scene.parent.name}/{scene.name}.hdf5"
    entry = self.meta.get(key)
    return int(entry["zone"]) if isinstance(entry, dict) and "zone" in entry else None

  def __getitem__(self, i: int) -> dict:
    scene = self.scenes[i]
    t = self.frame
    image = _load_rgb(self.root / "images" / scene / f"frame{t}.png")
    flow = _load_flow(self.root / "flows" / scene / f"frame{t}.npy")
    ids = np.zeros(image.shape[:2], np.int32)
    seg_path = self.root / "segments" / scene / f"frame{t}.png"
    if seg_path.exists():
      rgb = _load_rgb(seg_path).astype(np.int64)
      raw = rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]
      zone = self._zone_id(scene)
      if zone is not None:
        raw[raw == zone] = 0                       # the room itself is background, as black
      uniq, inv = np.unique(raw, return_inverse=True)
      ids = inv.reshape(raw.shape).astype(np.int32) + (0 if uniq[0] == 0 else 1)
    return {"image": image, "flow": flow, "ids": ids, "key": str(scene)}


class FolderSource:
  """DAVIS-/Bridge-style video folders with precomputed flow (see module docstring)."""

  def __init__(self, root: str | os.PathLike, *, frames_dir: str = "JPEGImages/480p",
               flow_dir: str = "Flows", gt_dir: str | None = "Annotations/480p",
               videos: str = "*"):
    self.root = Path(root)
    base = self.root / frames_dir if "*" not in frames_dir else self.root
    pattern = f"{videos}" if "*" not in frames_dir else frames_dir
    video_dirs = sorted(p for p in base.glob(pattern) if p.is_dir())
    if not video_dirs:
      raise DataError(f"no video folders match {base / pattern}")
    self.items = []
    for v in video_dirs:
      frames = sorted(f for f in v.iterdir() if f.suffix.lower() in IMAGE_EXTS)
      self.items += [(v, f) for f in frames[:-1]]  # the last frame has no forward flow
    self.frames_base, self.flow_dir, self.gt_dir = base, flow_dir, gt_dir

  def __len__(self) -> int:
    return len(self.items)

  def __getitem__(self, i: int) -> dict:
    video, frame = self.items[i]
    rel = video.relative_to(self.frames_base)
    image = _load_rgb(frame)
    flow = _load_flow(self.root / self.flow_dir / rel / f"{frame.stem}.npy")
    ids = np.zeros(image.shape[:2], np.int32)
    if self.gt_dir:
      gt = self.root / self.gt_dir / rel / f"{frame.stem}.png"
      if gt.exists():
        from PIL import Image  # pylint: disable=g-import-not-at-top
        with Image.open(gt) as im:
          ids = np.asarray(im if im.mode in ("P", "L", "I") else im.convert("L")).astype(np.int32)
    return {"image": image, "flow": flow, "ids": ids, "key": f"{rel}/{frame.stem}"}


def _dragged_segment(g) -> int:
  """The id in `ids` (1 + index into 'segment') of the object the agent drags; 0 if none."""
  if "dragged_id" not in g or "segment_ids" not in g:
    return 0
  hit = np.flatnonzero(np.asarray(g["segment_ids"][()]) == int(g["dragged_id"][()]))
  return int(hit[0]) + 1 if len(hit) else 0


class SyntheticH5Source:
  """Scenes of a synthetic h5 (tools/make_synthetic.py): ids = the SpelkeBench GT objects."""

  def __init__(self, path: str | os.PathLike):
    import h5py  # pylint: disable=g-import-not-at-top
    self.path = Path(path)
    if not self.path.exists():
      raise DataError(f"dataset not found: {self.path}")
    with h5py.File(self.path, "r") as f:
      self.keys = sorted(f.keys())
    if not self.keys:
      raise DataError(f"{self.path} holds no scenes")

  def __len__(self) -> int:
    return len(self.keys)

  def __getitem__(self, i: int) -> dict:
    import h5py  # pylint: disable=g-import-not-at-top
    key = self.keys[i]
    with h5py.File(self.path, "r") as f:
      g = f[key]
      for name in ("rgb", "segment"):
        if name not in g:
          raise DataError(f"{self.path}: group {key!r} has no {name!r}")
      image, segs = g["rgb"][()], g["segment"][()].astype(bool)
      flow = g["flow"][()] if "flow" in g else np.zeros(image.shape[:2] + (2,), np.float32)
      has_agent = bool(g["agent_id"][()] > 0) if "agent_id" in g else False
      dragged = _dragged_segment(g) if has_agent else 0
    ids = np.zeros(image.shape[:2], np.int32)
    for k, m in enumerate(segs):
      ids[m] = k + 1
    return {"image": image, "flow": flow.astype(np.float32), "ids": ids, "key": key,
            "has_agent": has_agent, "dragged": dragged}


def batches(source, batch_size: int, resolution: int, *, seed: int = 0, shuffle: bool = True,
            epochs: int | None = None, process_index: int = 0, process_count: int = 1,
            drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Batches {'image', 'flow', 'ids', 'index'} of one host's share (index % count == process)."""
  epoch = 0
  while epochs is None or epoch < epochs:
    order = np.arange(len(source))
    if shuffle:
      np.random.default_rng([seed, epoch]).shuffle(order)
    order = order[process_index::process_count]
    for start in range(0, len(order), batch_size):
      idx = order[start:start + batch_size]
      if len(idx) < batch_size and drop_remainder:
        break
      exs = [source[int(i)] for i in idx]
      out = [resize_example(e["image"], e["flow"], e["ids"], resolution) for e in exs]
      yield {"image": np.stack([o[0] for o in out]), "flow": np.stack([o[1] for o in out]),
             "ids": np.stack([o[2] for o in out]), "index": np.asarray(idx, np.int64)}
    epoch += 1
