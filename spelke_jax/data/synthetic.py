"""A procedural "synthetic Spelke world": two frames with exact flow, instance ids and probe points.

    scene = make_scene(scene_seed(0, 7), resolution=128)   # scene 7 of seed 0 (numpy only)
    scene.frame0, scene.frame1      # uint8 [R,R,3]
    scene.flow                      # float32 [R,R,2] (dx, dy) px: where each frame-0 pixel lands
    scene.instance_ids              # int32 [R,R] frame 0: 0 background, 1..K (agent included)
    scene.to_example("key")         # SpelkeBench Example (objects only, the agent excluded)

World. Every layer (background, objects, agent) is a shape and texture defined in its own
coordinates, placed by a rigid pose (centre c px, angle th): image point x = R(th) u + c. Frame f
is rendered by mapping each pixel centre (x, y) = (column, row) back to every layer's coordinates
and painting back to front (painter's algorithm: ids in depth order, background 0 first, the agent
last and on top), so textures move with their objects and every layer's frame-0 -> frame-1 map is
an exact rigid map x1 = A x + b (`Scene.affine`); the flow of a frame-0 pixel is that of the layer
visible there. The camera translates everything, background included (`Scene.camera`); `moved`
flags the ids whose own motion (independent of the camera) is non-zero. No anti-aliasing and no
sensor noise by default (`noise_std=0`), so with integer translations frame 1 at x + flow equals
frame 0 at x exactly wherever that point is not occluded in frame 1.

Content: a textured background (stripes, checkers, waves, value noise, gradients, dots, plain,
plus a shading gradient); 2-6 objects: ellipses, rounded boxes, star polygons, rings (objects with
holes), compound objects (a body with 1-2 attached parts of other textures) and two-tone objects
(a shape split by a line), so colour alone does not segment them; parts sometimes reuse the
background's or another object's texture. A subset moves rigidly (translation + small rotation
about its centre). With probability `agent_prob` an arm-like agent (two capsules and a hand) enters
from the image border, its hand on top of one object (`dragged_id`), and both share one rigid
motion: what explaining-away has to separate.

Every id (agent included) is visible in frame 0 with at least `min_area` px and a probe point at
least `min_depth` px from its mask's border: the argmax of the Euclidean distance transform of the
visible mask (the image border counts as outside, first in raster order on ties), as the
SpelkeBench builder picks. Scenes that fail are resampled (from the same generator: deterministic).
Sizes, textures and motions are drawn in units of the resolution, so any resolution works (64,
128, 256, ...).

Seeds: `make_scene(seed)` takes an int, a sequence of non-negative ints or a SeedSequence and uses
`np.random.default_rng(seed)`. Datasets use `scene_seed(seed, index, stream)` =
`(STREAMS[stream], seed, index)`: scene `index` of seed `seed` in a namespace per stream ("file":
tools/make_synthetic.py and make_synthetic_stream, "train" / "validation": the TFDS splits), so
different seeds, indices or streams give independent SeedSequence streams and distinct scenes.
Same numpy version, same scenes (numpy does not promise identical Generator draws across versions).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from spelke_jax.data.spelkebench import Example

STREAMS = {"file": 1, "train": 2, "validation": 3}
MAX_IDS = 8          # background + 6 objects + agent: the padded id axis of `Scene.features`


def scene_seed(seed: int, index: int, stream: str = "file") -> tuple[int, int, int]:
  """The seed of scene `index` of `seed` in `stream` (see the module docstring)."""
  if stream not in STREAMS:
    raise ValueError(f"stream must be one of {sorted(STREAMS)}, got {stream!r}")
  if not (0 <= seed < 2**32 and 0 <= index < 2**32):
    raise ValueError(f"seed and index must be in [0, 2**32), got {seed}, {index}")
  return (STREAMS[stream], int(seed), int(index))


# ----------------------------------------------------------------------------------- textures
PLAIN, STRIPES, CHECKER, WAVES, NOISE, GRADIENT, DOTS = range(7)
_LATTICE = 16


@dataclasses.dataclass(eq=False)
class Texture:
  """A two-colour pattern in layer coordinates (px): colour = c0 + (c1 - c0) p(u, v) + shade."""
  kind: int
  c0: np.ndarray            # float32 [3] in [0,1]
  c1: np.ndarray            # float32 [3]
  angle: float = 0.0        # rad, orientation of stripes / checkers / gradients / dots
  scale: float = 8.0        # px: period, cell size or gradient length
  phase: float = 0.0
  hard: bool = True         # stripes: square wave (else sine)
  waves: np.ndarray | None = None     # float32 [3,3] (fx, fy, phase) for WAVES, rad/px
  lattice: np.ndarray | None = None   # float32 [L,L] values in [0,1] for NOISE
  shade: np.ndarray | None = None     # float32 [2] brightness gradient per px (u, v)

  def pattern(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u, v float32 [n] -> p float32 [n] in [0,1]."""
    k = self.kind
    if k == PLAIN:
      return np.zeros_like(u)
    ca, sa = np.float32(np.cos(self.angle)), np.float32(np.sin(self.angle))
    a = u * ca + v * sa
    if k == STRIPES:
      t = a / np.float32(self.scale) + np.float32(self.phase)
      if self.hard:
        return (t - np.floor(t) < 0.5).astype(np.float32)
      return np.float32(0.5) + np.float32(0.5) * np.sin(np.float32(2 * np.pi) * t)
    b = v * ca - u * sa
    if k == CHECKER:
      s = np.float32(self.scale)
      return ((np.floor(a / s) + np.floor(b / s)) % 2).astype(np.float32)
    if k == DOTS:
      s = np.float32(self.scale)
      fa, fb = a / s + np.float32(self.phase), b / s
      da, db = fa - np.round(fa), fb - np.round(fb)
      return (da * da + db * db < 0.09).astype(np.float32)
    if k == GRADIENT:
      return np.clip(np.float32(0.5) + a / np.float32(self.scale), 0, 1).astype(np.float32)
    if k == WAVES:
      w = self.waves
      out = np.zeros_like(u)
      for fx, fy, ph in w:
        out += np.sin(u * fx + v * fy + ph)
      return np.float32(0.5) + out * np.float32(0.5 / len(w))
    if k == NOISE:
      s = np.float32(self.scale)
      ga, gb = a / s, b / s
      ia, ib = np.floor(ga), np.floor(gb)
      fa, fb = ga - ia, gb - ib
      fa, fb = fa * fa * (3 - 2 * fa), fb * fb * (3 - 2 * fb)
      ia = ia.astype(np.int64) % _LATTICE
      ib = ib.astype(np.int64) % _LATTICE
      ja, jb = (ia + 1) % _LATTICE, (ib + 1) % _LATTICE
      lat = self.lattice
      top = lat[ib, ia] * (1 - fa) + lat[ib, ja] * fa
      bot = lat[jb, ia] * (1 - fa) + lat[jb, ja] * fa
      return (top * (1 - fb) + bot * fb).astype(np.float32)
    raise ValueError(f"unknown texture kind {k}")

  def __call__(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u, v float32 [n] (layer coordinates, px) -> colour float32 [n,3]."""
    p = self.pattern(u, v)
    col = self.c0 + (self.c1 - self.c0) * p[:, None]
    if self.shade is not None:
      col = col + (u * self.shade[0] + v * self.shade[1])[:, None]
    return col


def _colour(rng, avoid: np.ndarray | None = None, min_dist: float = 0.0) -> np.ndarray:
  for _ in range(20):
    c = rng.uniform(0.05, 0.95, 3)
    if avoid is None or np.max(np.abs(c - avoid)) >= min_dist:
      break
  return c.astype(np.float32)


def sample_texture(rng: np.random.Generator, res: int, *, kinds: Sequence[int] | None = None,
                   contrast: tuple[float, float] = (0.15, 0.6),
                   avoid: np.ndarray | None = None) -> Texture:
  """A random texture for a scene of side `res` px (scales in units of `res`)."""
  kind = int(rng.choice(kinds if kinds is not None else
                        [PLAIN, STRIPES, CHECKER, WAVES, NOISE, NOISE, GRADIENT, DOTS]))
  c0 = _colour(rng, avoid, 0.3)
  d = rng.normal(size=3)
  c1 = np.clip(c0 + d / np.linalg.norm(d) * rng.uniform(*contrast), 0, 1).astype(np.float32)
  tex = Texture(kind=kind, c0=c0, c1=c1, angle=float(rng.uniform(0, np.pi)),
                phase=float(rng.uniform(0, 1)), hard=bool(rng.random() < 0.6))
  if kind in (STRIPES, CHECKER, DOTS):
    tex.scale = float(rng.uniform(0.035, 0.12) * res)
  elif kind == NOISE:
    tex.scale = float(rng.uniform(0.02, 0.1) * res)
    tex.lattice = rng.uniform(0, 1, (_LATTICE, _LATTICE)).astype(np.float32)
  elif kind == GRADIENT:
    tex.scale = float(rng.uniform(0.3, 0.8) * res)
  elif kind == WAVES:
    f = rng.uniform(-12, 12, (3, 2)) / res
    tex.waves = np.concatenate([f, rng.uniform(0, 2 * np.pi, (3, 1))], 1).astype(np.float32)
  if rng.random() < 0.5:
    tex.shade = (rng.uniform(-0.25, 0.25, 2) / res).astype(np.float32)
  return tex


# ------------------------------------------------------------------------------------- shapes
def _rot(u, v, cx, cy, angle):
  """Coordinates of (u, v) in a frame centred at (cx, cy) and rotated by `angle`."""
  c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
  du, dv = u - np.float32(cx), v - np.float32(cy)
  return du * c + dv * s, dv * c - du * s


@dataclasses.dataclass(eq=False)
class Ellipse:
  cx: float
  cy: float
  a: float
  b: float
  angle: float = 0.0

  def mask(self, u, v):
    x, y = _rot(u, v, self.cx, self.cy, self.angle)
    return (x / np.float32(self.a)) ** 2 + (y / np.float32(self.b)) ** 2 <= 1

  @property
  def radius(self) -> float:
    return float(np.hypot(self.cx, self.cy) + max(self.a, self.b))


@dataclasses.dataclass(eq=False)
class Box:
  """A rectangle of half sizes (a, b), corners rounded by r px."""
  cx: float
  cy: float
  a: float
  b: float
  angle: float = 0.0
  r: float = 0.0

  def mask(self, u, v):
    x, y = _rot(u, v, self.cx, self.cy, self.angle)
    qx = np.maximum(np.abs(x) - np.float32(self.a - self.r), 0)
    qy = np.maximum(np.abs(y) - np.float32(self.b - self.r), 0)
    return qx * qx + qy * qy <= np.float32(self.r * self.r) + 1e-6

  @property
  def radius(self) -> float:
    return float(np.hypot(self.cx, self.cy) + np.hypot(self.a, self.b))


@dataclasses.dataclass(eq=False)
class Polygon:
  """A simple polygon (vertices float [n,2] (u, v) px), even-odd rasterised."""
  vertices: np.ndarray

  def mask(self, u, v):
    inside = np.zeros(u.shape, bool)
    vs = self.vertices
    for i in range(len(vs)):
      (x0, y0), (x1, y1) = vs[i], vs[(i + 1) % len(vs)]
      if y0 == y1:
        continue
      crosses = (v >= min(y0, y1)) & (v < max(y0, y1))
      xint = np.float32(x0) + (v - np.float32(y0)) * np.float32((x1 - x0) / (y1 - y0))
      inside ^= crosses & (u < xint)
    return inside

  @property
  def radius(self) -> float:
    return float(np.max(np.hypot(self.vertices[:, 0], self.vertices[:, 1])))


@dataclasses.dataclass(eq=False)
class Capsule:
  """Points within w px of the segment p0-p1."""
  p0: tuple[float, float]
  p1: tuple[float, float]
  w: float

  def mask(self, u, v):
    (x0, y0), (x1, y1) = self.p0, self.p1
    dx, dy = x1 - x0, y1 - y0
    du, dv = u - np.float32(x0), v - np.float32(y0)
    t = np.clip((du * np.float32(dx) + dv * np.float32(dy)) / np.float32(dx * dx + dy * dy + 1e-9),
                0, 1)
    ex, ey = du - t * np.float32(dx), dv - t * np.float32(dy)
    return ex * ex + ey * ey <= np.float32(self.w * self.w)

  @property
  def radius(self) -> float:
    return float(max(np.hypot(*self.p0), np.hypot(*self.p1)) + self.w)


@dataclasses.dataclass(eq=False)
class Part:
  """A shape painted with one texture; `clip` (nx, ny, d) keeps nx u + ny v >= d only."""
  shape: Any
  texture: Texture
  clip: tuple[float, float, float] | None = None


@dataclasses.dataclass(eq=False)
class Layer:
  """An object (or the agent): parts painted in order, minus the holes; coordinates in px about
  the layer's origin."""
  parts: list[Part]
  holes: list[Any] = dataclasses.field(default_factory=list)
  kind: str = "object"

  @property
  def radius(self) -> float:
    return max(p.shape.radius for p in self.parts)

  def paint(self, u, v, colour: bool = True):
    """u, v float32 [h,w] -> (inside bool [h,w], colour float32 [h,w,3] or None)."""
    inside = np.zeros(u.shape, bool)
    col = np.zeros(u.shape + (3,), np.float32) if colour else None
    hole = None
    for h in self.holes:
      hole = h.mask(u, v) if hole is None else hole | h.mask(u, v)
    for p in self.parts:
      m = p.shape.mask(u, v)
      if p.clip is not None:
        nx, ny, d = p.clip
        m &= u * np.float32(nx) + v * np.float32(ny) >= np.float32(d)
      if hole is not None:
        m &= ~hole
      if colour and m.any():
        col[m] = p.texture(u[m], v[m])
      inside |= m
    return inside, col


# --------------------------------------------------------------------------------- rendering
def _grid(res: int):
  ys, xs = np.mgrid[0:res, 0:res].astype(np.float32)
  return xs, ys


def render(background: Texture, layers: Sequence[Layer], poses: np.ndarray, res: int, *,
           colour: bool = True):
  """Paints `layers` (ids 1..K, back to front) over the background.

  poses: float [K+1,3] (cx, cy, angle) per id in image px / rad (row 0: the background's).
  Returns (rgb float32 [res,res,3] or None, ids int32 [res,res]).
  """
  ids = np.zeros((res, res), np.int32)
  img = None
  if colour:
    xs, ys = _grid(res)
    u, v = _rot(xs.ravel(), ys.ravel(), poses[0, 0], poses[0, 1], poses[0, 2])
    img = background(u, v).reshape(res, res, 3)
  for k, layer in enumerate(layers, start=1):
    cx, cy, th = poses[k]
    r = layer.radius + 1.5
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, res)
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, res)
    if x0 >= x1 or y0 >= y1:
      continue
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u, v = _rot(xs, ys, cx, cy, th)
    inside, col = layer.paint(u, v, colour)
    ids[y0:y1, x0:x1][inside] = k
    if colour:
      img[y0:y1, x0:x1][inside] = col[inside]
  return img, ids


def _to_uint8(img: np.ndarray) -> np.ndarray:
  return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def safe_points(ids: np.ndarray, num_ids: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ids int [H,W] -> (points int32 [num_ids-1,2] (x,y), depth float32 [num_ids-1], area int64
  [num_ids-1]) for ids 1..num_ids-1: the argmax of the distance transform of each visible mask
  (image border = outside; first in raster order on ties); (-1,-1), 0, 0 where an id is absent.
  Computed on each mask's bounding box plus a one-pixel ring (same result as the full image)."""
  n = num_ids - 1
  pts = np.full((n, 2), -1, np.int32)
  depth = np.zeros(n, np.float32)
  area = np.zeros(n, np.int64)
  for i, sl in enumerate(ndimage.find_objects(ids, max_label=n)):
    if sl is None:
      continue
    m = ids[sl] == i + 1
    area[i] = int(m.sum())
    d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    pts[i] = (x + sl[1].start, y + sl[0].start)
    depth[i] = d[y, x]
  return pts, depth, area


# ------------------------------------------------------------------------------------- scenes
@dataclasses.dataclass
class Scene:
  """One synthetic scene (R = resolution, K = number of ids besides the background).

  frame0, frame1: uint8 [R,R,3]. flow: float32 [R,R,2] (dx, dy) px, exact forward flow of every
  frame-0 pixel (pixel centres at integer (x, y) = (column, row)). instance_ids / instance_ids1:
  int32 [R,R] per frame (0 background, 1..K in depth order; the agent, if any, is id K). moved:
  bool [K+1], the ids with their own motion (camera excluded; moved[0] is False). agent_id /
  dragged_id: 0 if no agent. points: int32 [K,2] (x, y), row k-1 = probe point of id k (agent
  included). depth_order: int32 [K+1] ids back to front. affine: float32 [K+1,2,3] frame-0 ->
  frame-1 map per id incl. the camera (x1 = A[:, :2] @ x + A[:, 2]). camera: float32 [2] image
  translation (dx, dy) px of the camera motion. seed: what `make_scene` was called with.
  """
  frame0: np.ndarray
  frame1: np.ndarray
  flow: np.ndarray
  instance_ids: np.ndarray
  instance_ids1: np.ndarray
  moved: np.ndarray
  agent_id: int
  dragged_id: int
  points: np.ndarray
  depth_order: np.ndarray
  affine: np.ndarray
  camera: np.ndarray
  seed: Any = None

  @property
  def resolution(self) -> int:
    return int(self.frame0.shape[0])

  @property
  def num_ids(self) -> int:
    """K + 1 (the background included)."""
    return int(self.moved.shape[0])

  @property
  def object_ids(self) -> np.ndarray:
    """int32 [N]: the ids of the objects (the agent excluded), ascending."""
    k = np.arange(1, self.num_ids, dtype=np.int32)
    return k[k != self.agent_id]

  @property
  def moved_ids(self) -> np.ndarray:
    return np.nonzero(self.moved)[0].astype(np.int32)

  def to_example(self, key: str) -> Example:
    """The SpelkeBench Example of frame 0: segments bool [N,R,R] = visible masks of the objects
    (ids `object_ids`; the background and the agent excluded: SpelkeBench's ground truth is
    objects), points int32 [N,2] their probe points."""
    obj = self.object_ids
    segs = self.instance_ids[None] == obj[:, None, None]
    return Example(key=key, image=self.frame0, segments=segs, points=self.points[obj - 1].copy())

  def features(self, max_ids: int = MAX_IDS) -> dict[str, np.ndarray]:
    """Fixed-shape arrays (TFDS / batches): frame0, frame1 uint8 [R,R,3], flow float32 [R,R,2],
    instance_ids, instance_ids1 int32 [R,R], moved bool [max_ids], points int32 [max_ids,2] (row
    k: id k; -1 for the background and absent ids), num_ids / agent_id / dragged_id int32 []."""
    k = self.num_ids
    if k > max_ids:
      raise ValueError(f"scene has {k} ids (background included), more than max_ids={max_ids}")
    moved = np.zeros(max_ids, bool)
    moved[:k] = self.moved
    pts = np.full((max_ids, 2), -1, np.int32)
    pts[1:k] = self.points
    return {"frame0": self.frame0, "frame1": self.frame1, "flow": self.flow,
            "instance_ids": self.instance_ids, "instance_ids1": self.instance_ids1,
            "moved": moved, "points": pts,
            "num_ids": np.int32(k), "agent_id": np.int32(self.agent_id),
            "dragged_id": np.int32(self.dragged_id)}


def _rigid(th: float) -> np.ndarray:
  c, s = np.cos(th), np.sin(th)
  return np.array([[c, -s], [s, c]])


def _sample_object(rng, res, size, bg_tex, textures) -> Layer:
  """One object in its own coordinates (origin = its centre), `size` ~ its radius in px."""
  def tex(avoid_shared=False):
    r = rng.random()
    if not avoid_shared and r < 0.12:
      return bg_tex                              # camouflage: the background's material
    if not avoid_shared and r < 0.22 and textures:
      return textures[int(rng.integers(len(textures)))]
    t = sample_texture(rng, res, avoid=bg_tex.c0)
    textures.append(t)
    return t

  def body(r):
    kind = rng.integers(3)
    asp = rng.uniform(0.55, 1.0)
    if kind == 0:
      return Ellipse(0, 0, r, r * asp)
    if kind == 1:
      a, b = r * 0.85, r * 0.85 * asp
      return Box(0, 0, a, b, 0.0, float(rng.uniform(0, 0.5) * min(a, b)))
    n = int(rng.integers(3, 9))
    ang = 2 * np.pi * (np.arange(n) + rng.uniform(-0.35, 0.35, n)) / n
    rad = r * rng.uniform(0.6, 1.0, n)
    return Polygon(np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1).astype(np.float32))

  kind = rng.choice(["simple", "ring", "compound", "twotone"], p=[0.45, 0.15, 0.25, 0.15])
  if kind == "simple":
    return Layer([Part(body(size), tex())], kind="simple")
  if kind == "ring":
    asp = rng.uniform(0.6, 1.0)
    k = rng.uniform(0.35, 0.55)
    off = rng.uniform(-0.1, 0.1, 2) * size
    if rng.random() < 0.5:
      outer, hole = Ellipse(0, 0, size, size * asp), Ellipse(off[0], off[1], k * size,
                                                             k * size * asp)
    else:
      a, b = size * 0.85, size * 0.85 * asp
      outer = Box(0, 0, a, b, 0.0, float(rng.uniform(0, 0.4) * min(a, b)))
      hole = Box(off[0], off[1], k * a, k * b, float(rng.uniform(-0.3, 0.3)))
    return Layer([Part(outer, tex())], holes=[hole], kind="ring")
  if kind == "twotone":
    shape = body(size)
    phi = rng.uniform(0, 2 * np.pi)
    t0 = tex()
    t1 = tex(avoid_shared=True)
    return Layer([Part(shape, t0),
                  Part(shape, t1, (float(np.cos(phi)), float(np.sin(phi)),
                                   float(rng.uniform(-0.3, 0.3) * size)))], kind="twotone")
  # compound: an ellipse / box body with 1-2 attached parts of their own textures
  asp = rng.uniform(0.6, 1.0)
  r = size * 0.75
  a, b = r, r * asp
  parts = [Part(Ellipse(0, 0, a, b) if rng.random() < 0.5 else
                Box(0, 0, a * 0.9, b * 0.9, 0.0, float(rng.uniform(0, 0.4) * b)), tex())]
  phi0 = rng.uniform(0, 2 * np.pi)
  for j in range(int(rng.integers(1, 3))):
    phi = phi0 + j * np.pi + rng.uniform(-0.5, 0.5)
    px, py = 0.85 * a * np.cos(phi), 0.85 * b * np.sin(phi)
    s = rng.uniform(0.35, 0.6) * r
    sa = rng.uniform(0.5, 1.0)
    shape = (Ellipse(px, py, s, s * sa, float(phi)) if rng.random() < 0.5 else
             Box(px, py, s, s * sa, float(phi), float(rng.uniform(0, 0.3) * s * sa)))
    parts.append(Part(shape, tex(avoid_shared=True)))
  return Layer(parts, kind="compound")


def _sample_agent(rng, res, target_mask, centre, w, tex_a, tex_b):
  """An arm from outside the image border to a hand over the target object's edge.
  Returns (Layer in coordinates about the hand, hand position (x, y) px) or None."""
  side = int(np.argmin([centre[0], centre[1], res - 1 - centre[0], res - 1 - centre[1]]))
  if rng.random() < 0.3:
    side = int(rng.integers(4))
  out = 0.3 * res
  lat = float(np.clip((centre[1] if side in (0, 2) else centre[0]) +
                      rng.normal(0, 0.15 * res), 0, res - 1))
  base = {0: (-out, lat), 1: (lat, -out), 2: (res - 1 + out, lat), 3: (lat, res - 1 + out)}[side]
  base = np.asarray(base)
  d = ndimage.distance_transform_edt(target_mask)
  cand = np.argwhere((d >= 0.5 * w) & (d <= 1.5 * w))
  if len(cand) == 0:
    return None
  cxy = cand[:, ::-1].astype(np.float64)
  hand = cxy[int(np.argmin(np.sum((cxy - base) ** 2, 1)))]
  vec = hand - base
  perp = np.array([-vec[1], vec[0]])
  elbow = (base + hand) / 2 + perp * rng.uniform(-0.15, 0.15)
  rel = lambda p: (float(p[0] - hand[0]), float(p[1] - hand[1]))  # noqa: E731
  layer = Layer([Part(Capsule(rel(base), rel(elbow), w), tex_a),
                 Part(Capsule(rel(elbow), (0.0, 0.0), 0.85 * w), tex_b),
                 Part(Ellipse(0, 0, 1.25 * w, 1.05 * w, float(np.arctan2(vec[1], vec[0]))),
                      tex_b)], kind="agent")
  return layer, hand


def make_scene(seed: int | Sequence[int] | np.random.SeedSequence, resolution: int = 128, *,
               num_objects: tuple[int, int] = (2, 6), p_move: float = 0.5, min_moving: int = 1,
               max_translation: float = 0.08, min_translation: float = 0.02,
               max_rotation: float = 10.0, camera_prob: float = 0.5,
               camera_motion: float = 0.05, agent_prob: float = 0.3,
               integer_motion: bool = False, size_range: tuple[float, float] = (0.1, 0.22),
               min_area: float = 0.006, min_depth: float = 0.025, noise_std: float = 0.0,
               max_tries: int = 50) -> Scene:
  """One scene, deterministic in `seed` (the generator is `np.random.default_rng(seed)`).

  resolution: side R px (>= 32). num_objects: inclusive range of objects (agent not counted).
  p_move: probability that an object moves (at least `min_moving` do). Object motion: translation
  of norm in [min_translation, max_translation] * R px (at least 1 px), rotation about its centre
  uniform in +-max_rotation degrees. camera_prob / camera_motion: probability and max norm (* R
  px) of a camera translation. agent_prob: probability of an agent dragging one object (they
  share the motion). integer_motion: round translations (objects and camera) to whole pixels.
  size_range: object radius in units of R. min_area (* R^2 px) and min_depth (* R px, at least
  1.5 px): what every id must keep visible in frame 0. noise_std: iid sensor noise per frame
  (in [0,1] units; 0 keeps frame 1 an exact warp of frame 0).
  """
  res = int(resolution)
  if res < 32:
    raise ValueError(f"resolution must be >= 32, got {res}")
  lo, hi = num_objects
  if not 1 <= lo <= hi:
    raise ValueError(f"num_objects must be (lo, hi) with 1 <= lo <= hi, got {num_objects}")
  rng = np.random.default_rng(seed)
  min_area_px = max(8.0, min_area * res * res)
  min_depth_px = max(1.5, min_depth * res)
  tex_kinds = [PLAIN, STRIPES, CHECKER, WAVES, NOISE, NOISE, GRADIENT, DOTS]

  bg = sample_texture(rng, res, kinds=tex_kinds, contrast=(0.1, 0.4))
  for _ in range(max_tries):
    n = int(rng.integers(lo, hi + 1))
    textures: list[Texture] = []
    # smaller objects when there are many
    smax = size_range[1] * (1.0 if n <= 3 else 0.85)
    layers = [_sample_object(rng, res, float(rng.uniform(size_range[0], smax) * res), bg,
                             textures) for _ in range(n)]
    pose0 = np.zeros((n + 1, 3))
    # centres on a 1/64 px grid: exact in float32, so integer translations warp exactly
    pose0[1:, :2] = np.round(rng.uniform(0.15 * res, 0.85 * res, (n, 2)) * 64) / 64
    pose0[1:, 2] = rng.uniform(0, 2 * np.pi, n)
    _, ids = render(bg, layers, pose0, res, colour=False)
    _, depth, area = safe_points(ids, n + 1)
    ok = (area >= min_area_px) & (depth >= min_depth_px)
    if ok.sum() < lo:
      continue
    keep = np.nonzero(ok)[0]           # removing a layer only uncovers the others
    layers = [layers[i] for i in keep]
    pose0 = np.concatenate([pose0[:1], pose0[1:][keep]])
    n = len(layers)
    break
  else:
    raise RuntimeError(f"make_scene({seed!r}): no valid layout in {max_tries} tries; "
                       "loosen min_area / min_depth or num_objects")

  # -- own motions (about each object's centre, before the camera)
  moved = np.zeros(n + 1, bool)
  moved[1:] = rng.random(n) < p_move
  short = min(min_moving, n) - int(moved.sum())
  if short > 0:
    moved[1 + rng.choice(np.nonzero(~moved[1:])[0], short, replace=False)] = True
  trans = np.zeros((n + 1, 2))
  rot = np.zeros(n + 1)
  for k in np.nonzero(moved)[0]:
    trans[k], rot[k] = _motion(rng, res, min_translation, max_translation, max_rotation,
                               integer_motion)

  # -- the agent: its hand on top of one object's edge; both share that object's motion
  agent_id = dragged_id = 0
  if agent_prob > 0 and rng.random() < agent_prob:
    w = max(1.5, float(rng.uniform(0.035, 0.055) * res))
    tex_a = sample_texture(rng, res, kinds=[PLAIN, NOISE, STRIPES], contrast=(0.05, 0.3))
    tex_b = sample_texture(rng, res, kinds=[PLAIN, NOISE], contrast=(0.05, 0.2))
    for _ in range(6):
      k = int(rng.integers(1, n + 1))
      _, alone = render(bg, [layers[k - 1]], pose0[[0, k]], res, colour=False)
      got = _sample_agent(rng, res, alone == 1, pose0[k, :2], w, tex_a, tex_b)
      if got is None:
        continue
      arm, hand = got
      pose_a = np.concatenate([pose0, [[hand[0], hand[1], 0.0]]])
      _, ids = render(bg, layers + [arm], pose_a, res, colour=False)
      _, depth, area = safe_points(ids, n + 2)
      touch = int((ndimage.binary_dilation(ids == n + 1) & (ids == k)).sum())
      if np.all((area >= min_area_px) & (depth >= min_depth_px)) and touch >= max(2.0, w):
        layers = layers + [arm]
        pose0 = pose_a
        agent_id, dragged_id = n + 1, k
        if not moved[k]:
          moved[k] = True
          trans[k], rot[k] = _motion(rng, res, min_translation, max_translation, max_rotation,
                                     integer_motion)
        moved = np.append(moved, True)
        trans = np.concatenate([trans, trans[k][None]])
        rot = np.append(rot, rot[k])
        break

  # -- camera: translates everything, background included
  cam = np.zeros(2)
  if camera_motion > 0 and rng.random() < camera_prob:
    ang = rng.uniform(0, 2 * np.pi)
    cam = rng.uniform(0, camera_motion) * res * np.array([np.cos(ang), np.sin(ang)])
    if integer_motion:
      cam = np.round(cam)

  # -- frame-1 poses and the per-id frame-0 -> frame-1 maps
  num_ids = len(layers) + 1
  pose1 = pose0.copy()
  affine = np.zeros((num_ids, 2, 3))
  for k in range(num_ids):
    src = dragged_id if k == agent_id and k else k
    if k and moved[k]:
      pivot = pose0[src, :2]
      pose1[k, :2] = _rigid(rot[src]) @ (pose0[k, :2] - pivot) + pivot + trans[src]
      pose1[k, 2] = pose0[k, 2] + rot[src]
    pose1[k, :2] += cam
    a = _rigid(pose1[k, 2] - pose0[k, 2])
    affine[k, :, :2] = a
    affine[k, :, 2] = pose1[k, :2] - a @ pose0[k, :2]

  img0, ids0 = render(bg, layers, pose0, res)
  img1, ids1 = render(bg, layers, pose1, res)
  if noise_std > 0:
    img0 = img0 + rng.normal(0, noise_std, img0.shape)
    img1 = img1 + rng.normal(0, noise_std, img1.shape)
  xs, ys = _grid(res)
  a = affine[ids0]                                          # [R,R,2,3]
  fx = a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2] - xs
  fy = a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2] - ys
  points, _, _ = safe_points(ids0, num_ids)
  return Scene(frame0=_to_uint8(img0), frame1=_to_uint8(img1),
               flow=np.stack([fx, fy], -1).astype(np.float32), instance_ids=ids0,
               instance_ids1=ids1, moved=moved, agent_id=agent_id, dragged_id=dragged_id,
               points=points, depth_order=np.arange(num_ids, dtype=np.int32),
               affine=affine.astype(np.float32), camera=cam.astype(np.float32),
               seed=seed if not isinstance(seed, list) else tuple(seed))


def _motion(rng, res, min_t, max_t, max_rot, integer):
  """A rigid motion: translation (dx, dy) px of norm in [min_t, max_t] * res, rotation rad."""
  ang = rng.uniform(0, 2 * np.pi)
  t = max(1.0, rng.uniform(min_t, max_t) * res) * np.array([np.cos(ang), np.sin(ang)])
  if integer:
    t = np.round(t)
  return t, float(np.deg2rad(rng.uniform(-max_rot, max_rot))) if max_rot > 0 else 0.0


# ------------------------------------------------------------------------------------ h5 files
def write_synthetic_h5(path: str | os.PathLike, scenes: Iterable[Scene | tuple[str, Scene]], *,
                       compression: str | None = "gzip", compression_opts: int | None = 4) -> int:
  """Writes `scenes` as a SpelkeBench-format .h5 (to a temp name beside `path`, then renamed);
  returns the number written. Items are Scenes (key `synth_<i:06d>`) or (key, Scene) pairs, as
  `generate` yields; `scenes` may be a generator (one scene in memory at a time).

  Per group: the SpelkeBench keys `rgb` uint8 [R,R,3] (frame 0), `segment` uint8 [N,R,R] (visible
  object masks, agent excluded), `centroid` int64 [N,2] (x, y) and `segment_ids` int32 [N] (their
  ids), plus `frame1` uint8 [R,R,3], `flow` float32 [R,R,2], `instance_ids` / `instance_ids1` int32
  [R,R], `moved_ids` int32 [M], `probe_points` int32 [K,2] (every id's point, agent included),
  `affine` float32 [K+1,2,3], `camera` float32 [2] and scalars `agent_id`, `dragged_id`, `num_ids`
  (int32); attribute `seed` (the seed's repr).
  """
  import h5py  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  tmp = os.path.join(d, f".{os.path.basename(path)}.tmp-{os.getpid()}")
  kw = dict(compression=compression, compression_opts=compression_opts if compression else None)
  n = 0
  try:
    with h5py.File(tmp, "w") as f:
      for i, item in enumerate(scenes):
        key, sc = item if isinstance(item, tuple) else (f"synth_{i:06d}", item)
        if key in f:
          raise ValueError(f"duplicate key {key!r}")
        ex = sc.to_example(key)
        g = f.create_group(key)
        g.create_dataset("rgb", data=ex.image, **kw)
        g.create_dataset("segment", data=ex.segments.astype(np.uint8), **kw)
        g.create_dataset("centroid", data=ex.points.astype(np.int64))
        g.create_dataset("segment_ids", data=sc.object_ids.astype(np.int32))
        g.create_dataset("frame1", data=sc.frame1, **kw)
        g.create_dataset("flow", data=sc.flow.astype(np.float32), **kw)
        g.create_dataset("instance_ids", data=sc.instance_ids.astype(np.int32), **kw)
        g.create_dataset("instance_ids1", data=sc.instance_ids1.astype(np.int32), **kw)
        g.create_dataset("moved_ids", data=sc.moved_ids.astype(np.int32))
        g.create_dataset("probe_points", data=sc.points.astype(np.int32))
        g.create_dataset("affine", data=sc.affine.astype(np.float32))
        g.create_dataset("camera", data=sc.camera.astype(np.float32))
        g.create_dataset("agent_id", data=np.int32(sc.agent_id))
        g.create_dataset("dragged_id", data=np.int32(sc.dragged_id))
        g.create_dataset("num_ids", data=np.int32(sc.num_ids))
        g.attrs["seed"] = repr(sc.seed)
        n += 1
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return n


def read_synthetic_scene(path: str | os.PathLike, key: str) -> Scene:
  """The Scene stored under `key` by `write_synthetic_h5` (seed: the stored repr string)."""
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(os.fspath(path), "r") as f:
    if key not in f:
      raise KeyError(f"{path}: no group {key!r}")
    g = f[key]
    missing = [k for k in ("frame1", "flow", "instance_ids", "num_ids") if k not in g]
    if missing:
      raise KeyError(f"{path}: group {key!r} is not a synthetic scene (no {missing})")
    k = int(g["num_ids"][()])
    moved = np.zeros(k, bool)
    moved[g["moved_ids"][()]] = True
    return Scene(frame0=g["rgb"][()], frame1=g["frame1"][()], flow=g["flow"][()],
                 instance_ids=g["instance_ids"][()], instance_ids1=g["instance_ids1"][()],
                 moved=moved, agent_id=int(g["agent_id"][()]),
                 dragged_id=int(g["dragged_id"][()]), points=g["probe_points"][()],
                 depth_order=np.arange(k, dtype=np.int32), affine=g["affine"][()],
                 camera=g["camera"][()], seed=g.attrs.get("seed"))


def generate(seed: int, num: int, resolution: int = 128, *, start: int = 0, stream: str = "file",
             **scene_kwargs) -> Iterator[tuple[str, Scene]]:
  """Yields (`synth_<seed>_<i:06d>`, make_scene(scene_seed(seed, i, stream), resolution,
  **scene_kwargs)) for i in [start, start + num)."""
  for i in range(start, start + num):
    yield f"synth_{seed}_{i:06d}", make_scene(scene_seed(seed, i, stream), resolution,
                                               **scene_kwargs)
