"""A tiny CLEVR-like stand-in for CLEVRTex, built from the synthetic world's shapes and textures
(data/synthetic.py) and written in the CLEVRTex layout that data/clevrtex.py reads.

    write_standin("out/nsi_standin", seed=0)       # images.h5 + {split}_labels.npy + json
    ensure_standin(path, seed=0, ...)              # the same, unless it is already there

Scene (side R px, default 64): a low-contrast background and 2-5 objects, each with
  size      0 small | 1 medium | 2 large        radius 0.09 | 0.13 | 0.18 R
  shape     0 box | 1 disc | 2 star | 3 ring     (rounded square, circle, 5-point star,
                                                  circle with a hole: the 4 slots of CLEVRTex's
                                                  cube, cylinder, sphere, monkey)
  material  0 .. M-1                             a fixed texture per id (distinct hue and
                                                  pattern: plain, stripes, checker, dots, ...)
  x, y, z   x, y = the centre mapped to [-3, 3] (x right, y down), z = 0.35 | 0.5 | 0.7 by size
            (CLEVR's 3d_coords: objects rest on the floor, z = their radius)
Objects are painted far (small y) to near, centres kept apart so every object stays mostly
visible (at least `min_visible` of its pixels). Each scene comes from its own
SeedSequence (seed, split, index): the same seed gives the same files (same numpy version).

Files, as datasets/build_clevrtex_dataset.py writes them: images.h5 with datasets 'train',
'val', 'test' [N, R, R, 3] float32 in [0, 1] (the original stores float64; same values),
{split}_labels.npy object arrays of per-image lists [size, shape, material, x, y, z],
program_space.json, program2label.json, label2program.json, plus standin.json (the generator's
arguments). Written to a temporary directory, then renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from spelke_jax.data import synthetic as syn

SIZES = ("small", "medium", "large")
SHAPES = ("box", "disc", "star", "ring")
SIZE_RADIUS = (0.09, 0.13, 0.18)          # fraction of the image side
SIZE_Z = (0.35, 0.5, 0.7)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_PATTERNS = (syn.PLAIN, syn.STRIPES, syn.CHECKER, syn.DOTS, syn.NOISE, syn.WAVES, syn.GRADIENT)
VERSION = 1


def _hsv(h: float, s: float, v: float) -> np.ndarray:
  i = int(h * 6) % 6
  f = h * 6 - int(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  return np.asarray([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i],
                    np.float32)


def materials(num: int, res: int, seed: int = 0) -> list[syn.Texture]:
  """`num` fixed textures: hues spread around the wheel, patterns cycling through _PATTERNS."""
  rng = np.random.default_rng((seed, 99))
  out = []
  for m in range(num):
    kind = _PATTERNS[m % len(_PATTERNS)]
    tex = syn.sample_texture(rng, res, kinds=[kind], contrast=(0.3, 0.5))
    hue = (m * 0.618034) % 1.0
    tex.c0 = _hsv(hue, 0.75, 0.9)
    tex.c1 = _hsv(hue, 0.9, 0.45)
    tex.shade = None
    out.append(tex)
  return out


def _object(shape: int, radius: float, angle: float, tex: syn.Texture) -> syn.Layer:
  if shape == 0:
    s = radius / np.sqrt(2) * 1.15
    return syn.Layer([syn.Part(syn.Box(0, 0, s, s, angle, r=0.2 * s), tex)])
  if shape == 1:
    return syn.Layer([syn.Part(syn.Ellipse(0, 0, radius, radius), tex)])
  if shape == 2:
    t = angle + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, radius, 0.5 * radius)
    return syn.Layer([syn.Part(syn.Polygon(np.stack([r * np.cos(t), r * np.sin(t)], 1)), tex)])
  return syn.Layer([syn.Part(syn.Ellipse(0, 0, radius, radius), tex)],
                   holes=[syn.Ellipse(0, 0, 0.5 * radius, 0.5 * radius)], kind="ring")


def make_standin_scene(seed, res: int, mats: list[syn.Texture], *, min_objects: int = 2,
                       max_objects: int = 5, min_visible: float = 0.5):
  """One scene -> (image float32 [R, R, 3] in [0, 1], objects [[size, shape, material, x, y,
  z], ...] in painting order, ids int32 [R, R] (0 background, k = objects[k - 1]))."""
  rng = np.random.default_rng(seed)
  for _ in range(100):
    n = int(rng.integers(min_objects, max_objects + 1))
    bg = syn.sample_texture(rng, res, kinds=[syn.PLAIN, syn.NOISE, syn.GRADIENT],
                            contrast=(0.03, 0.12))
    grey = np.float32(rng.uniform(0.35, 0.6))
    bg.c0 = (0.2 * bg.c0 + 0.8 * grey).astype(np.float32)
    bg.c1 = (0.2 * bg.c1 + 0.8 * grey).astype(np.float32)
    objs, centres = [], []
    for _ in range(n):
      size, shape = int(rng.integers(3)), int(rng.integers(4))
      r = SIZE_RADIUS[size] * res
      for _ in range(50):
        c = rng.uniform(r, res - r, 2)
        if all(np.hypot(*(c - c2)) >= 0.85 * (r + r2) for c2, r2 in centres):
          break
      else:
        continue
      centres.append((c, r))
      objs.append((size, shape, int(rng.integers(len(mats))), c, float(rng.uniform(0, np.pi))))
    if len(objs) < min_objects:
      continue
    objs.sort(key=lambda o: o[3][1])                       # far (top) to near (bottom)
    layers = [_object(sh, SIZE_RADIUS[sz] * res, ang, mats[m]) for sz, sh, m, _, ang in objs]
    poses = np.asarray([[res / 2, res / 2, 0.0]] + [[c[0], c[1], 0.0] for *_, c, _ in objs],
                       np.float32)
    img, ids = syn.render(bg, layers, poses, res)
    full = [syn.render(bg, [l], poses[[0, k + 1]], res, colour=False)[1].sum()
            for k, l in enumerate(layers)]
    visible = np.bincount(ids.ravel(), minlength=len(layers) + 1)[1:]
    if any(v < min_visible * f or f == 0 for v, f in zip(visible, full)):
      continue
    labels = [[sz, sh, m, float(c[0] / res * 6 - 3), float(c[1] / res * 6 - 3), SIZE_Z[sz]]
              for sz, sh, m, c, _ in objs]
    return np.clip(img, 0, 1).astype(np.float32), labels, ids
  raise RuntimeError(f"could not place {min_objects} visible objects in a {res} px scene")


def vocabulary(num_materials: int) -> dict[str, Any]:
  mats = [f"material_{m:02d}" for m in range(num_materials)]
  return {"shapes": list(SHAPES), "sizes": list(SIZES), "materials": mats}


def write_standin(root: str | os.PathLike, *, seed: int = 0, resolution: int = 64,
                  num_train: int = 1024, num_val: int = 128, num_test: int = 256,
                  num_materials: int = 8, min_objects: int = 2, max_objects: int = 5) -> Path:
  """Generates the stand-in set into `root` (replacing it); returns `root`."""
  import h5py  # pylint: disable=g-import-not-at-top
  if max_objects > 10 or min_objects < 1 or min_objects > max_objects:
    raise ValueError(f"need 1 <= min_objects <= max_objects <= 10, got {min_objects}, "
                     f"{max_objects}")
  args = dict(version=VERSION, seed=seed, resolution=resolution, num_train=num_train,
              num_val=num_val, num_test=num_test, num_materials=num_materials,
              min_objects=min_objects, max_objects=max_objects)
  root = Path(root)
  root.parent.mkdir(parents=True, exist_ok=True)
  tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    mats = materials(num_materials, resolution, seed)
    with h5py.File(tmp / "images.h5", "w") as f:
      for split, n in (("train", num_train), ("val", num_val), ("test", num_test)):
        images = np.zeros((n, resolution, resolution, 3), np.float32)
        labels = np.empty((n,), object)
        for i in range(n):
          images[i], labels[i], _ = make_standin_scene((seed, SPLIT_IDS[split], i), resolution,
                                                       mats, min_objects=min_objects,
                                                       max_objects=max_objects)
        f.create_dataset(split, data=images)
        np.save(tmp / f"{split}_labels.npy", labels, allow_pickle=True)
    space = vocabulary(num_materials)
    (tmp / "program_space.json").write_text(json.dumps(space))
    (tmp / "label2program.json").write_text(json.dumps(
        {k: {str(i): v for i, v in enumerate(space[k])} for k in ("sizes", "shapes", "materials")}))
    (tmp / "program2label.json").write_text(json.dumps(
        {k: {v: i for i, v in enumerate(space[k])} for k in ("sizes", "shapes", "materials")}))
    (tmp / "standin.json").write_text(json.dumps(args, indent=2))
    if root.exists():
      shutil.rmtree(root)
    os.replace(tmp, root)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return root


def ensure_standin(root: str | os.PathLike, **kwargs) -> Path:
  """`root` if it holds a stand-in made with these arguments, else generates it there."""
  root = Path(root)
  meta = root / "standin.json"
  if meta.exists():
    have = json.loads(meta.read_text())
    want = {k: v for k, v in have.items() if k not in kwargs or k == "version"}
    want.update(kwargs)
    want["version"] = VERSION
    if have == want:
      return root
  return write_standin(root, **kwargs)
