"""EISEN's Competition (`core/competition.py::Competition`) as a `jax.lax.scan` over rounds.

M agents ("pointers") are drawn at the borders of the plateau map (Sobel edge magnitude), read
the plateau where they stand, and compete: agents whose binarised masks overlap (IoU > 0.2) fight,
the fitter survives (sticky: last round's winners beat last round's losers), winners' phenotypes
move towards the mean plateau vector of their mask (x100), losers are re-drawn on the uncovered
territory with distance-weighted phenotypes. The last round's masks go through a softmax with
temperature 1/mask_beta over the living agents.

Conventions kept from the reference (they change the numbers):
- Sobel = kornia's normalised kernel (1/8), cross-correlation, replicate padding; the edge map
  is sum over channels of sqrt(gx^2 + gy^2); draws ~ edges + 1e-8 (with replacement).
- Pixel (r, c) -> normalised (2r/(H-1) - 1, 2c/(W-1) - 1); `soft_index` reads at
  (p + 1) * H / 2 (H, not H-1), clamped to [0, H-1], and returns the zero vector when a
  coordinate is integral (floor == ceil).
- Masks = relu(cosine(plateau, vector)); fitness = <l2(phenotype), l2(availability-weighted
  plateau at the pointer + 0.1 * U[0,1))>, times in_bounds, minus 0.001 * agent index.
- Every random draw can be injected: `draws` (R+1 pixel draws [B,M,2] (row, col)) and `noise`
  ([B,M,Q] for the unused initial fitness, then R x [B,M,M*Q]) replay a recorded run exactly.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

_HI = jax.lax.Precision.HIGHEST


class CompetitionResult(NamedTuple):
  """masks [B,H,W,M]; agents [B,M,2] normalised (h, w); alive [B,M,1]; phenotypes [B,M,Q];
  unharvested [B,H,W,1]; round_masks [R,B,N,M]; round_fitness [R,B,M]; round_alive [R,B,M]
  (compete_agents output before the in_bounds factor); edges [R+1,B,H,W] (the Sobel maps each
  draw was taken from); draws [R+1,B,M,2] int32 (row, col) pixel draws used."""
  masks: jax.Array
  agents: jax.Array
  alive: jax.Array
  phenotypes: jax.Array
  unharvested: jax.Array
  round_masks: jax.Array
  round_fitness: jax.Array
  round_alive: jax.Array
  edges: jax.Array
  draws: jax.Array


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x / max(||x||_2, eps) over the last axis (torch F.normalize)."""
  return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)), eps)


def sobel_edges(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """x [B,H,W,C] (times mask [B,H,W,1] if given) -> edge magnitude [B,H,W] (times mask):
  sum over channels of sqrt(gx^2 + gy^2), kornia's normalised Sobel, replicate padding."""
  if mask is not None:
    x = x * mask
  p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  # kernel_x = [[-1,0,1],[-2,0,2],[-1,0,1]] / 8, kernel_y = its transpose (cross-correlation),
  # applied separably: a central difference along one axis, a [1,2,1] smoothing along the other
  dx = p[:, :, 2:] - p[:, :, :-2]                                  # [B,H+2,W,C]
  dy = p[:, 2:] - p[:, :-2]                                        # [B,H,W+2,C]
  gx = (dx[:, :-2] + 2.0 * dx[:, 1:-1] + dx[:, 2:]) / 8.0
  gy = (dy[:, :, :-2] + 2.0 * dy[:, :, 1:-1] + dy[:, :, 2:]) / 8.0
  edges = jnp.sum(jnp.sqrt(gx * gx + gy * gy), axis=-1)
  if mask is not None:
    edges = edges * mask[..., 0]
  return edges


def sample_from_edges(key: jax.Array, edges: jax.Array, num_points: int) -> jax.Array:
  """Categorical draws (with replacement) of pixels ~ edges + 1e-8: [B,P,2] int32 (row, col)."""
  b, h, w = edges.shape
  e = edges.reshape(b, h * w)
  probs = jnp.maximum(e + 1e-8, 0.0) / (jnp.sum(e, axis=-1, keepdims=True) + 1e-8)
  idx = jax.random.categorical(key, jnp.log(probs), axis=-1, shape=(num_points, b)).T
  return jnp.stack([idx // w, idx % w], axis=-1).astype(jnp.int32)


def pixels_to_coords(pix: jax.Array, h: int, w: int) -> jax.Array:
  """[...,2] int (row, col) -> normalised float32 (2r/(H-1) - 1, 2c/(W-1) - 1)."""
  c = pix.astype(jnp.float32) / jnp.asarray([h - 1, w - 1], jnp.float32)
  return 2.0 * c - 1.0


def _corners(h: int, w: int, pos: jax.Array):
  """Bilinear corner indices and weights of the reference `soft_index` (H scaling, zero weights
  at integral coordinates). pos [B,P,2] -> idx [B,P,4] flat pixel ids, wts [B,P,4] in the order
  top-left, top-right, bottom-left, bottom-right."""
  hi = (pos[..., 0] + 1.0) * jnp.float32(h) * 0.5
  wi = (pos[..., 1] + 1.0) * jnp.float32(w) * 0.5
  hi = jnp.maximum(jnp.minimum(hi, jnp.float32(h - 1)), 0.0)
  wi = jnp.maximum(jnp.minimum(wi, jnp.float32(w - 1)), 0.0)
  hf, wf, hc, wc = jnp.floor(hi), jnp.floor(wi), jnp.ceil(hi), jnp.ceil(wi)
  wts = jnp.stack([(hc - hi) * (wc - wi), (hc - hi) * (wi - wf),
                   (hi - hf) * (wc - wi), (hi - hf) * (wi - wf)], axis=-1)
  hf, wf, hc, wc = (v.astype(jnp.int32) for v in (hf, wf, hc, wc))
  idx = jnp.stack([hf * w + wf, hf * w + wc, hc * w + wf, hc * w + wc], axis=-1)
  return idx, wts


def _weighted_corner_sum(vals: jax.Array, wts: jax.Array) -> jax.Array:
  """vals [B,P,4,C], wts [B,P,4] -> [B,P,C] summed in the reference's order."""
  out = vals[:, :, 0] * wts[..., 0:1]
  for c in range(1, 4):
    out = out + vals[:, :, c] * wts[..., c:c + 1]
  return out


def soft_index(img: jax.Array, pos: jax.Array) -> jax.Array:
  """img [B,H,W,C] read at normalised positions pos [B,P,2] -> [B,P,C] (reference soft_index)."""
  b, h, w, c = img.shape
  idx, wts = _corners(h, w, pos)
  flat = img.reshape(b, h * w, c)
  vals = jax.vmap(lambda f, i: f[i])(flat, idx)  # [B,P,4,C]
  return _weighted_corner_sum(vals, wts)


def masks_from_vectors(plateau: jax.Array, vectors: jax.Array) -> jax.Array:
  """relu(cosine) between plateau [B,N,Q] and vectors [B,M,Q] (l2 eps 1e-8) -> [B,N,M]."""
  p = l2_normalize(plateau, 1e-8)
  v = l2_normalize(vectors, 1e-8)
  return jax.nn.relu(jnp.einsum("bnq,bmq->bnm", p, v, precision=_HI))


def compatibility(pos: jax.Array, plateau: jax.Array, phenotypes: jax.Array,
                  availability: jax.Array, noise: jax.Array) -> jax.Array:
  """Fitness [B,M]: <l2(phenotype_p), l2(soft_index(availability_p * plateau, pos_p) +
  0.1 * noise_p)>; availability [B,H,W,M], noise [B,M,M*Q] (pointer p uses its block p)."""
  b, h, w, q = plateau.shape
  m = pos.shape[1]
  idx, wts = _corners(h, w, pos)
  flat = plateau.reshape(b, h * w, q)
  av = availability.reshape(b, h * w, m)
  pv = jax.vmap(lambda f, i: f[i])(flat, idx)                                 # [B,M,4,Q]
  avv = jax.vmap(lambda a, i: a[i, jnp.arange(m)[:, None]])(av, idx)          # [B,M,4]
  vals = _weighted_corner_sum(avv[..., None] * pv, wts)                      # [B,M,Q]
  diag = noise.reshape(b, m, m, q)[:, jnp.arange(m), jnp.arange(m)]           # [B,M,Q]
  vals = l2_normalize(vals + 0.1 * diag)
  return jnp.sum(l2_normalize(phenotypes) * vals, axis=-1)


def compete_agents(masks: jax.Array, fitness: jax.Array, alive: jax.Array, *,
                   mask_thresh: float = 0.5, compete_thresh: float = 0.2,
                   sticky_winners: bool = True) -> jax.Array:
  """masks [B,N,M], fitness [B,M], alive [B,M] -> new alive [B,M] float32 (1 = survived)."""
  m = masks.shape[-1]
  bm = (masks > mask_thresh).astype(jnp.float32)
  inter = jnp.einsum("bnm,bnk->bmk", bm, bm, precision=_HI)
  area = jnp.sum(bm, axis=1)
  union = area[:, :, None] + area[:, None, :] - inter
  iou = inter / jnp.maximum(union, 1e-6)
  disputes = (iou > compete_thresh) & ~jnp.eye(m, dtype=bool)[None]
  killed = disputes & (fitness[:, :, None] < fitness[:, None, :])
  if sticky_winners:
    winners = alive > 0.5
    losers = ~winners
    killed = killed & ~(winners[:, :, None] & losers[:, None, :])
    killed = killed | (losers[:, :, None] & winners[:, None, :] & disputes)
  return (~jnp.any(killed, axis=-1)).astype(jnp.float32)


def coordinate_grid(h: int, w: int) -> jax.Array:
  """[H*W, 2] normalised (h, w) pixel coordinates 2*(i/(H-1) - 0.5)."""
  hh = 2.0 * (jnp.arange(h, dtype=jnp.float32) / jnp.float32(h - 1) - 0.5)
  ww = 2.0 * (jnp.arange(w, dtype=jnp.float32) / jnp.float32(w - 1) - 0.5)
  g = jnp.stack(jnp.meshgrid(hh, ww, indexing="ij"), axis=-1)
  return g.reshape(h * w, 2)


def distance_weighted_vectors(plateau: jax.Array, pos: jax.Array, mask: jax.Array,
                              beta: float) -> jax.Array:
  """plateau [B,H,W,Q], pos [B,P,2], mask [B,H,W,1] -> [B,P,Q] = sum_n softmax_n(beta *
  (2*sqrt(2) / (d + 1e-8)) * mask_n) plateau_n with d = sqrt(dh^2 + dw^2 + 1e-8)."""
  b, h, w, q = plateau.shape
  grid = coordinate_grid(h, w)
  dh = grid[None, None, :, 0] - pos[:, :, None, 0]
  dw = grid[None, None, :, 1] - pos[:, :, None, 1]
  d = jnp.sqrt(dh * dh + dw * dw + 1e-8)
  inv = (1.0 / (d + 1e-8)) * jnp.float32(2.0 * math.sqrt(2.0))
  wts = jax.nn.softmax(jnp.float32(beta) * inv * mask.reshape(b, 1, h * w), axis=-1)
  return jnp.einsum("bpn,bnq->bpq", wts, plateau.reshape(b, h * w, q), precision=_HI)


def _check(plateau, num_masks, num_rounds, draws, noise):
  if plateau.ndim != 4:
    raise ValueError(f"plateau must be [B, H, W, Q], got shape {tuple(plateau.shape)}")
  b, h, w, q = plateau.shape
  if h < 2 or w < 2:
    raise ValueError(f"Competition needs H, W >= 2, got {(h, w)}")
  if num_masks < 1 or num_rounds < 0:
    raise ValueError(f"num_masks must be >= 1 and num_rounds >= 0, got {num_masks}, {num_rounds}")
  if draws is not None:
    if len(draws) != num_rounds + 1:
      raise ValueError(f"draws: need num_rounds + 1 = {num_rounds + 1} arrays, got {len(draws)}")
    for j, d in enumerate(draws):
      if tuple(jnp.shape(d)) != (b, num_masks, 2):
        raise ValueError(f"draws[{j}] must be [B, M, 2] = {(b, num_masks, 2)}, "
                         f"got {tuple(jnp.shape(d))}")
  if noise is not None:
    if len(noise) != num_rounds + 1:
      raise ValueError(f"noise: need num_rounds + 1 = {num_rounds + 1} arrays, got {len(noise)}")
    for j, z in enumerate(noise):
      want = (b, num_masks, q) if j == 0 else (b, num_masks, num_masks * q)
      if tuple(jnp.shape(z)) != want:
        raise ValueError(f"noise[{j}] must be {want}, got {tuple(jnp.shape(z))}")


def competition(plateau: jax.Array, *, num_masks: int, num_rounds: int,
                draws: Sequence[jax.Array] | None = None, noise: Sequence[jax.Array] | None = None,
                key: jax.Array | None = None, mask_beta: float = 10.0, mask_thresh: float = 0.5,
                compete_thresh: float = 0.2, sticky_winners: bool = True,
                selection_strength: float = 100.0, homing_strength: float = 10.0,
                mask_dead_segments: bool = True) -> CompetitionResult:
  """Runs Competition on plateau [B,H,W,Q].

  draws: R+1 arrays [B,M,2] int (row, col) replayed instead of sampling; noise: [B,M,Q] then
  R arrays [B,M,M*Q] of U[0,1) replayed instead of drawing. What is not given is drawn from
  `key` (required then). Returns CompetitionResult.
  """
  plateau = jnp.asarray(plateau, jnp.float32)
  _check(plateau, num_masks, num_rounds, draws, noise)
  b, h, w, q = plateau.shape
  m, r = int(num_masks), int(num_rounds)
  if (draws is None or noise is None) and key is None:
    raise ValueError("competition: give `key` when `draws` or `noise` is not given")
  noise_rounds = None
  if noise is not None and r:
    noise_rounds = jnp.stack([jnp.asarray(z, jnp.float32) for z in noise[1:]])
  draw_arr = None if draws is None else jnp.stack([jnp.asarray(d, jnp.int32) for d in draws])
  params = dict(mask_beta=mask_beta, mask_thresh=mask_thresh, compete_thresh=compete_thresh,
                sticky_winners=sticky_winners, selection_strength=selection_strength,
                homing_strength=homing_strength, mask_dead_segments=mask_dead_segments)
  return _competition(plateau, noise_rounds, draw_arr, key if (draws is None or noise is None)
                      else None, m=m, r=r, noise_given=noise is not None,
                      params=tuple(sorted(params.items())))


@functools.partial(jax.jit, static_argnames=("m", "r", "noise_given", "params"))
def _competition(plateau, noise_rounds, draw_arr, key, *, m, r, noise_given, params):
  p = dict(params)
  b, h, w, q = plateau.shape
  n = h * w
  if key is not None:
    kd, kn = jax.random.split(key)
  if not noise_given:
    # (the initial fitness' noise is never drawn: its result is unused in the reference)
    noise_rounds = jax.random.uniform(kn, (r, b, m, m * q), jnp.float32)
  elif noise_rounds is None:
    noise_rounds = jnp.zeros((0, b, m, m * q), jnp.float32)
  keys = None if draw_arr is not None else jax.random.split(kd, r + 1)
  plateau = l2_normalize(plateau)
  flat = plateau.reshape(b, n, q)

  def draw(j, edges):
    if draw_arr is not None:
      return draw_arr[j]
    return sample_from_edges(keys[j], edges, m)

  edges0 = sobel_edges(plateau)
  pix0 = draw(0, edges0)
  agents = pixels_to_coords(pix0, h, w)
  alive = jnp.ones((b, m), jnp.float32)
  phen = l2_normalize(soft_index(plateau, agents))
  # (the reference computes an initial fitness here; its result is unused, its noise consumed)
  masks = masks_from_vectors(flat, phen)
  unh = 1.0 - jnp.minimum(jnp.max(masks, axis=-1), 1.0)                     # [B,N]
  tie = jnp.float32(0.001) * jnp.arange(m, dtype=jnp.float32)

  def round_fn(carry, xs):
    agents, alive, phen, masks, unh = carry
    noise_r, j = xs
    avail = alive[:, None, :] * masks + (1.0 - alive[:, None, :]) * unh[..., None]
    fit = compatibility(agents, plateau, phen, avail.reshape(b, h, w, m), noise_r)
    in_bounds = jnp.all((agents < 1.0) & (agents > -1.0), axis=-1).astype(jnp.float32)
    fit = fit * in_bounds - tie
    occupied = soft_index(plateau, agents)
    masks = masks_from_vectors(flat, occupied)
    alive_c = compete_agents(masks, fit, alive, mask_thresh=p["mask_thresh"],
                             compete_thresh=p["compete_thresh"],
                             sticky_winners=p["sticky_winners"])
    alive = alive_c * in_bounds
    unh = 1.0 - jnp.minimum(jnp.max(masks * alive[:, None, :], axis=-1), 1.0)
    ind = (masks > p["mask_thresh"]).astype(jnp.float32)
    win = l2_normalize(jnp.einsum("bnm,bnq->bmq", ind, flat, precision=_HI) / jnp.float32(n))
    phen = phen + (alive[..., None] * win) * jnp.float32(p["selection_strength"])
    alive_mask = (alive > 0.5).astype(jnp.float32)[..., None]
    unh_map = unh.reshape(b, h, w, 1)
    edges = sobel_edges(plateau, unh_map)
    pix = draw(j, edges)
    loser = pixels_to_coords(pix, h, w)
    agents = agents * alive_mask + loser * (1.0 - alive_mask)
    loser_phen = l2_normalize(distance_weighted_vectors(plateau, agents, unh_map,
                                                        p["homing_strength"]))
    phen = l2_normalize(alive_mask * phen + (1.0 - alive_mask) * loser_phen)
    return (agents, alive, phen, masks, unh), (masks, fit, alive_c, edges, pix)

  carry = (agents, alive, phen, masks, unh)
  (agents, alive, phen, masks, unh), (rm, rf, ra, redges, rpix) = jax.lax.scan(
      round_fn, carry, (noise_rounds, jnp.arange(1, r + 1)), length=r)
  at = alive[:, None, :]
  final = masks
  if p["mask_beta"] is not None:
    final = jax.nn.softmax(p["mask_beta"] * final * at - p["mask_beta"] * (1.0 - at), axis=-1)
  if p["mask_dead_segments"]:
    final = final * at
  return CompetitionResult(
      masks=final.reshape(b, h, w, m), agents=agents, alive=alive[..., None], phenotypes=phen,
      unharvested=unh.reshape(b, h, w, 1), round_masks=rm, round_fitness=rf, round_alive=ra,
      edges=jnp.concatenate([edges0[None], redges], 0),
      draws=jnp.concatenate([pix0[None], rpix], 0))
