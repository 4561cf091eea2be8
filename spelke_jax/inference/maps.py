"""SpelkeNet's structure extractions from LRAS step-0 flow logits (motion affordance, expected
displacement, dot-product maps) and a flow colour wheel.

Inputs are the step-0 logits of the parallel decoder: for every patch p (row-major, p = row*side
+ col on a square grid of G = side**2 patches) the logits of its first flow sub-token, either
over the whole vocabulary `[B, G, V]` or only at the K columns of the flow table `[B, G, K]`
(`table_columns`). Patches without decoded logits (the prompt's revealed patches) hold zero rows,
as in the original's `flow_logits` [1024, 4, V].

* `prob_no_motion`: softmax over the flow range, summed over the two no-motion codes
  (`_compute_flow_grid_cumulative_probability`); revealed patches are set to 1.
  `motion_affordance = 1 - prob_no_motion`.
* `expected_displacement` (`segment.compute_avg_flow_from_logits`): zero rows copy the logits of
  their nearest grid neighbour (self excluded; torch.cdist + argmin, whose exact distance ties
  resolve to the lowest flat index, i.e. up, left, right, down), softmax over the table columns
  only, expectation of the table's [s, s, 2] per-patch flow, laid out as a [side*s, side*s, 2] map
  divided by 2 (pixels of the 128-px map for s = 4).

bf16 rounding is done with `round_bf16` (integer bit arithmetic, round-to-nearest-even) instead
of `astype(bfloat16)`: XLA may compute bf16 arithmetic in f32 and drop f32->bf16->f32 convert
pairs ("excess precision"), which silently loses the roundings the parity recipe needs.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spelke_jax.models.lras_config import NO_MOTION_FLOW_CODES, LRASConfig

PATCH_PX = 8            # one patch covers 8x8 pixels of the 256-px image
DISPLACEMENT_SCALE = 0.5  # the original's final `/ 2` (256-px flow -> 128-px map units)


# ---------------------------------------------------------------------------- helpers


def round_bf16(x: jax.Array) -> jax.Array:
  """float32 -> float32 holding the nearest bfloat16 value (ties to even), as c10::BFloat16.

  Implemented on the bits so XLA cannot elide it (see the module docstring). NaN stays NaN.
  """
  x = jnp.asarray(x, jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  lsb = (bits >> 16) & jnp.uint32(1)
  bits = (bits + jnp.uint32(0x7FFF) + lsb) & jnp.uint32(0xFFFF0000)
  y = jax.lax.bitcast_convert_type(bits, jnp.float32)
  return jnp.where(jnp.isnan(x), x, y)


def grid_side(num_patches: int) -> int:
  """Side of the square patch grid holding `num_patches` patches (1024 -> 32)."""
  side = math.isqrt(int(num_patches))
  if side * side != num_patches or side == 0:
    raise ValueError(f"{num_patches} patches do not form a square grid")
  return side


def nearest_neighbour_index(num_patches: int) -> np.ndarray:
  """[G] int32: for each patch, the nearest other grid patch as the original picks it.

  torch.cdist over integer grid coordinates gives exact ties at distance 1 and argmin takes the
  first, i.e. the lowest flat index among up (p-side), left (p-1), right (p+1), down (p+side).
  A 1-patch grid maps to itself (all distances inf -> argmin 0).
  """
  side = grid_side(num_patches)
  p = np.arange(num_patches)
  r, c = p // side, p % side
  nn = p.copy()
  done = np.zeros(num_patches, bool)
  for ok, q in ((r > 0, p - side), (c > 0, p - 1), (c < side - 1, p + 1), (r < side - 1, p + side)):
    take = ok & ~done
    nn[take] = q[take]
    done |= take
  return nn.astype(np.int32)


def revealed_mask(pokes: Any, num_patches: int = 1024, patch_px: int = PATCH_PX) -> np.ndarray:
  """Host helper: pokes [n, 4] (x1, y1, x2, y2) in pixels -> [G] bool of revealed patches.

  Patch of a poke = int(x1 // patch_px) + side * int(y1 // patch_px), as
  `quantized_flow_prediction` builds its `unmask_indices` (duplicates collapse).
  """
  side = grid_side(num_patches)
  pokes = np.asarray(pokes, np.float64).reshape(-1, 4)
  mask = np.zeros(num_patches, bool)
  for x1, y1, _, _ in pokes:
    mask[int(x1 // patch_px) + side * int(y1 // patch_px)] = True
  return mask


def _flow_range(config: LRASConfig | None) -> tuple[int, int]:
  return tuple(config.flow_range) if config is not None else (67584, 100352)


# ---------------------------------------------------------------------------- motion affordance


def flow_lse(step0_logits: jax.Array, config: LRASConfig) -> jax.Array:
  """[B, G, V] -> [B, G] float32 logsumexp over the flow range columns."""
  start, end = _flow_range(config)
  x = jnp.asarray(step0_logits)[..., start:end].astype(jnp.float32)
  return jax.nn.logsumexp(x, axis=-1)


def prob_no_motion_from_lse(l_codes: jax.Array, lse_flow: jax.Array, revealed: jax.Array | None,
                            bf16: bool = False) -> jax.Array:
  """No-motion probability from the no-motion logits and the flow-range logsumexp.

  l_codes [B, G, n] (logits at the n no-motion codes), lse_flow [B, G], revealed [B, G] bool
  (or None) -> [B, side, side] float32: sum_i exp(l_i - lse), 1.0 at revealed patches.
  bf16=True reproduces the original's bf16 softmax: each probability rounded to bf16, their sum
  (float accumulation) rounded to bf16.
  """
  l_codes = jnp.asarray(l_codes, jnp.float32)
  lse_flow = jnp.asarray(lse_flow, jnp.float32)
  if l_codes.ndim != 3 or lse_flow.shape != l_codes.shape[:2]:
    raise ValueError(f"expected l_codes [B, G, n] and lse_flow [B, G], got {l_codes.shape} and "
                     f"{lse_flow.shape}")
  p = jnp.exp(l_codes - lse_flow[..., None])
  if bf16:
    tot = round_bf16(jnp.sum(round_bf16(p), axis=-1))
  else:
    tot = jnp.sum(p, axis=-1)
  if revealed is not None:
    tot = jnp.where(jnp.asarray(revealed, bool), jnp.float32(1.0), tot)
  b, g = tot.shape
  side = grid_side(g)
  return tot.reshape(b, side, side)


def prob_no_motion(step0_logits: jax.Array, revealed: jax.Array | None, config: LRASConfig, *,
                   no_motion_codes: Sequence[int] = NO_MOTION_FLOW_CODES,
                   bf16: bool = False) -> jax.Array:
  """[B, G, V] full-vocabulary step-0 logits, revealed [B, G] bool -> [B, side, side] float32.

  Softmax over the flow range (in float32 from the given values; pass bf16 logits' values for
  the bf16 chain with bf16=True), summed over `no_motion_codes` (relative flow codes).
  """
  start, end = _flow_range(config)
  x = jnp.asarray(step0_logits)
  if x.ndim != 3 or x.shape[-1] < end:
    raise ValueError(f"step0_logits must be [B, G, V] covering the flow range [{start}, {end}), "
                     f"got shape {x.shape}")
  if min(no_motion_codes) < 0 or max(no_motion_codes) >= end - start:
    raise ValueError(f"no-motion codes {tuple(no_motion_codes)} are outside the flow range")
  cols = jnp.asarray(np.asarray(no_motion_codes, np.int32) + start)
  l_codes = jnp.take(x, cols, axis=-1).astype(jnp.float32)
  # Shift by the row max (as torch's softmax does) so exp(l - lse) does not lose the float32
  # precision of a large lse: p near 1 would otherwise be off by ~|lse| * 2^-24.
  m = jax.lax.stop_gradient(jnp.max(x[..., start:end].astype(jnp.float32), axis=-1))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  lse = jax.nn.logsumexp(x[..., start:end].astype(jnp.float32) - m[..., None], axis=-1)
  return prob_no_motion_from_lse(l_codes - m[..., None], lse, revealed, bf16=bf16)


def motion_affordance(prob_no_motion_map: jax.Array) -> jax.Array:
  """Motion affordance = 1 - prob_no_motion (same shape)."""
  return 1.0 - jnp.asarray(prob_no_motion_map)


def min_filter2(m: Any) -> np.ndarray:
  """Host: scipy.ndimage.minimum_filter(size=2) over the last two axes (the notebook's erosion)."""
  from scipy.ndimage import minimum_filter  # pylint: disable=g-import-not-at-top
  m = np.asarray(m)
  size = (1,) * (m.ndim - 2) + (2, 2)
  return minimum_filter(m, size=size)


def sample_poke_location(m: Any, rng: np.random.Generator | np.random.RandomState,
                         patch_px: int = PATCH_PX) -> tuple[int, int]:
  """Host: samples a patch with probability proportional to the [h, w] map -> (x, y) pixels.

  As the notebook's `sample_from_heatmap`: p = flat / (sum + 1e-8), `rng.choice(len, p=p)`,
  (x, y) = (col * 8, row * 8). `np.random.RandomState(42)` reproduces `np.random.seed(42)`.
  """
  m = np.asarray(m)
  if m.ndim != 2:
    raise ValueError(f"sample_poke_location expects an [h, w] map, got shape {m.shape}")
  flat = m.ravel()
  if np.any(flat < 0) or not np.all(np.isfinite(flat)):
    raise ValueError("sample_poke_location: the map must be finite and non-negative")
  prob = flat / (np.sum(flat) + 1e-8)
  idx = int(rng.choice(flat.size, p=prob))
  row, col = np.unravel_index(idx, m.shape)
  return int(col) * patch_px, int(row) * patch_px


# ---------------------------------------------------------------------------- flow table


@dataclasses.dataclass(frozen=True)
class FlowTable:
  """The flow-token "epigraphy" table (`flow_token_to_flow_vector_mapping.pt`).

  token_ids [K] int64 relative flow codes; vectors [K, s, s, 2] float32 pixels (256-px flow of
  the token's s x s sub-patch, channel 0 = dx; s = 4 in the released table). Rows are in the
  original's dict-key order. Registered as a pytree (both fields are leaves), so it can be a jit
  argument; build it with `from_arrays` / `from_dict` / `load_flow_table` (they validate).
  """
  token_ids: Any
  vectors: Any

  @classmethod
  def from_arrays(cls, token_ids: Any, vectors: Any) -> "FlowTable":
    ids = np.asarray(token_ids)
    vec = np.asarray(vectors)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"flow table token_ids must be a 1-D integer array, got {ids.dtype} "
                       f"{ids.shape}")
    if vec.ndim != 4 or vec.shape[-1] != 2 or vec.shape[1] != vec.shape[2]:
      raise ValueError(f"flow table vectors must be [K, s, s, 2], got shape {vec.shape}")
    if vec.shape[0] != ids.shape[0]:
      raise ValueError(f"flow table has {ids.shape[0]} token ids but {vec.shape[0]} vectors")
    if ids.size == 0:
      raise ValueError("flow table is empty")
    if np.unique(ids).size != ids.size:
      raise ValueError("flow table token_ids contain duplicates")
    if ids.min() < 0:
      raise ValueError("flow table token_ids must be relative (non-negative) flow codes")
    return cls(ids.astype(np.int64), vec.astype(np.float32))

  @classmethod
  def from_dict(cls, mapping: Any) -> "FlowTable":
    """{code: [s, s, 2] array-like or TensorRef} -> table in the dict's key order."""
    if not hasattr(mapping, "items") or len(mapping) == 0:
      raise ValueError(f"flow table must be a non-empty dict {{code: (s, s, 2) flow}}, got "
                       f"{type(mapping).__name__}")
    ids, vecs = [], []
    for k, v in mapping.items():
      ids.append(int(_as_array(k)))
      vecs.append(np.asarray(_as_array(v), np.float32))
    shapes = {v.shape for v in vecs}
    if len(shapes) != 1:
      raise ValueError(f"flow table vectors have different shapes: {sorted(shapes)}")
    return cls.from_arrays(np.asarray(ids, np.int64), np.stack(vecs))

  @property
  def size(self) -> int:
    return int(np.shape(self.token_ids)[0])

  def index_of(self, code: int) -> int:
    """Column of relative flow `code` in the table; KeyError if absent."""
    hits = np.nonzero(np.asarray(self.token_ids) == int(code))[0]
    if hits.size == 0:
      raise KeyError(f"flow code {code} is not in the flow table")
    return int(hits[0])


jax.tree_util.register_dataclass(FlowTable, data_fields=["token_ids", "vectors"], meta_fields=[])


def _as_array(v: Any) -> Any:
  if hasattr(v, "read") and callable(v.read):  # TensorRef from torch_reader
    v = v.read()
  a = np.asarray(v)
  if a.dtype.kind not in "biuf":  # e.g. ml_dtypes.bfloat16 reports kind 'V'
    a = a.astype(np.float32)
  return a


def load_flow_table(path: str | os.PathLike) -> FlowTable:
  """`flow_token_to_flow_vector_mapping.pt` (pickled dict {int code: tensor (s, s, 2)}, read with
  the torch-free reader) or an `.npz` with arrays `token_ids` [K] and `vectors` [K, s, s, 2]."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"flow table not found: {path}")
  if path.suffix.lower() == ".npz":
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in ("token_ids", "vectors") if k not in z.files]
      if missing:
        raise ValueError(f"{path}: flow table .npz lacks {missing} (has {sorted(z.files)})")
      return FlowTable.from_arrays(z["token_ids"], z["vectors"])
  from spelke_jax.convert.torch_reader import load_checkpoint  # pylint: disable=g-import-not-at-top
  root = load_checkpoint(path).root
  try:
    return FlowTable.from_dict(root)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: not a flow-token table: {e}") from e


def table_columns(logits: jax.Array, table: FlowTable, config: LRASConfig) -> jax.Array:
  """[..., V] full-vocabulary logits -> [..., K] logits at the table's tokens
  (columns flow_range[0] + token_id)."""
  start, end = _flow_range(config)
  logits = jnp.asarray(logits)
  ids = table.token_ids
  if isinstance(ids, np.ndarray) and (ids.max() >= end - start
                                      or start + ids.max() >= logits.shape[-1]):
    # jnp.take would clamp an out-of-range column silently.
    raise ValueError(f"flow table code {ids.max()} is outside the flow range [{start}, {end}) of "
                     f"logits with {logits.shape[-1]} columns")
  cols = jnp.asarray(ids).astype(jnp.int32) + start
  return jnp.take(logits, cols, axis=-1)


# ---------------------------------------------------------------------------- expected displacement


def expected_displacement(step0_logits: jax.Array, revealed: jax.Array | None, table: FlowTable,
                          config: LRASConfig | None = None, *, bf16_parity: bool,
                          scale: float = DISPLACEMENT_SCALE) -> jax.Array:
  """Expected flow under the step-0 token distribution (`compute_avg_flow_from_logits`).

  step0_logits: [B, G, V] full-vocabulary logits (V != K) or [B, G, K] logits at the table's
  columns (`table_columns`; `config` is then unused; for full logits None means the released
  flow range). revealed: [B, G] bool or None. Rows filled from their nearest
  neighbour are `revealed | all-zero rows` (the original fills rows whose flow-range logits sum to
  0, i.e. the prompt patches; the copy reads the unfilled logits, so a neighbour that is itself
  empty gives a zero row = uniform softmax). Returns [B, side*s, side*s, 2] float32, the expected
  256-px flow of each sub-patch times `scale` (0.5: units of the 128-px map for s = 4).

  bf16_parity=True mimics every bf16 step of the original (logits and table cast to bf16, torch's
  CPU bf16 logsumexp  m = max x, lse = rb(rb(log(rb(sum_f32 rb(exp(rb(x - m)))))) + m),
  p = rb(exp(rb(x - lse))), avg = rb(p @ table) with float32 accumulation); it matches the
  original to about 1 bf16 ulp. bf16_parity=False is a clean float32 softmax and expectation:
  it differs from the original by up to a few bf16 ulps per probability (torch's bf16 logsumexp
  can be 2 ulps off, which rescales a whole patch's distribution), about 0.16 px on the fixtures.
  """
  x = jnp.asarray(step0_logits)
  if x.ndim != 3:
    raise ValueError(f"step0_logits must be [B, G, V] or [B, G, K], got shape {x.shape}")
  k = table.size
  vec = jnp.asarray(table.vectors, jnp.float32)
  s = vec.shape[1]
  b, g = x.shape[:2]
  side = grid_side(g)
  if x.shape[-1] == k:
    cols = x.astype(jnp.float32)
    empty = jnp.all(cols == 0, axis=-1)
  else:
    start, end = _flow_range(config)
    if x.shape[-1] < end:
      raise ValueError(f"logits have {x.shape[-1]} columns: neither the table's {k} columns "
                       f"nor a vocabulary covering the flow range [{start}, {end})")
    empty = jnp.sum(x[..., start:end].astype(jnp.float32), axis=-1) == 0
    cols = table_columns(x, table, config).astype(jnp.float32)
  fill = empty if revealed is None else (empty | jnp.asarray(revealed, bool))
  if bf16_parity:
    cols = round_bf16(cols)
    vec = round_bf16(vec)
  nn = jnp.asarray(nearest_neighbour_index(g))
  cols = jnp.where(fill[..., None], jnp.take(cols, nn, axis=1), cols)
  v2 = vec.reshape(k, s * s * 2)
  hi = jax.lax.Precision.HIGHEST
  if bf16_parity:
    m = jnp.max(cols, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = round_bf16(jnp.exp(round_bf16(cols - m)))
    lse = round_bf16(round_bf16(jnp.log(round_bf16(jnp.sum(e, axis=-1, keepdims=True)))) + m)
    p = round_bf16(jnp.exp(round_bf16(cols - lse)))
    avg = round_bf16(jnp.matmul(p, v2, precision=hi, preferred_element_type=jnp.float32))
  else:
    p = jax.nn.softmax(cols, axis=-1)
    avg = jnp.matmul(p, v2, precision=hi, preferred_element_type=jnp.float32)
  avg = avg.reshape(b, side, side, s, s, 2).transpose(0, 1, 3, 2, 4, 5)
  return avg.reshape(b, side * s, side * s, 2) * jnp.float32(scale)


def dot_map(displacement: jax.Array, direction: jax.Array) -> jax.Array:
  """[B, H, W, 2] displacement, [B, 2] poke (dx, dy) -> [B, H, W] float32 sum_c d[..., c] dir[c]
  (`get_dot_product_map`: no normalisation)."""
  d = jnp.asarray(displacement, jnp.float32)
  u = jnp.asarray(direction, jnp.float32)[:, None, None, :]
  return d[..., 0] * u[..., 0] + d[..., 1] * u[..., 1]


def mean_dot_map(dot_maps: jax.Array, axis: int = 0) -> jax.Array:
  """[R, H, W] dot maps of the R probing runs -> [H, W] float32 mean (get_segment's mean_dot)."""
  return jnp.mean(jnp.asarray(dot_maps, jnp.float32), axis=axis)


# ---------------------------------------------------------------------------- flow colours


def make_colorwheel() -> np.ndarray:
  """[55, 3] float64 Middlebury colour wheel (Baker et al. ICCV 2007; the hue segments
  red-yellow 15, yellow-green 6, green-cyan 4, cyan-blue 11, blue-magenta 13, magenta-red 6),
  the wheel of the original's utils/flow.py."""
  segs = ((15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)),
          (4, (0, 255, 0), (0, 255, 255)), (11, (0, 255, 255), (0, 0, 255)),
          (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0)))
  rows = []
  for n, a, bnd in segs:
    ramp = np.floor(255 * np.arange(n) / n)
    a, bnd = np.asarray(a, np.float64), np.asarray(bnd, np.float64)
    # The changing channel moves from a to b by floor(255 i / n); constant channels stay.
    seg = np.where(bnd > a, ramp[:, None], np.where(bnd < a, 255 - ramp[:, None], a[None]))
    rows.append(seg)
  return np.concatenate(rows, 0)


def flow_to_rgb(flow: Any, max_mag: float | None = None) -> np.ndarray:
  """Host: [H, W, 2] flow (dx, dy) -> [H, W, 3] uint8 Middlebury colour coding.

  As the original's `flow_to_image` (utils/flow.py): the flow is divided by
  max_mag (default: the map's largest magnitude + 1e-5); hue = angle of (-dx, -dy) on the
  55-colour wheel (linear between entries); saturation = magnitude, so zero flow is white
  (255, 255, 255); magnitudes above 1 (only with an explicit max_mag) keep full colour dimmed by
  0.75; value = floor(255 * colour).
  """
  f = np.asarray(flow, np.float64)
  if f.ndim != 3 or f.shape[-1] != 2:
    raise ValueError(f"flow_to_rgb expects [H, W, 2], got shape {f.shape}")
  u, v = f[..., 0], f[..., 1]
  if max_mag is None:
    max_mag = float(np.max(np.sqrt(u * u + v * v), initial=0.0)) + 1e-5
  elif max_mag <= 0:
    raise ValueError(f"max_mag must be positive, got {max_mag}")
  u, v = u / max_mag, v / max_mag
  wheel = make_colorwheel()
  n = wheel.shape[0]
  rad = np.sqrt(u * u + v * v)
  ang = np.arctan2(-v, -u) / np.pi
  fk = (ang + 1) / 2 * (n - 1)
  k0 = np.floor(fk).astype(np.int64)
  k1 = np.where(k0 + 1 == n, 0, k0 + 1)
  frac = (fk - k0)[..., None]
  col = (1 - frac) * wheel[k0] / 255.0 + frac * wheel[k1] / 255.0
  inside = (rad <= 1)[..., None]
  col = np.where(inside, 1 - rad[..., None] * (1 - col), col * 0.75)
  return np.floor(255 * col).astype(np.uint8)
