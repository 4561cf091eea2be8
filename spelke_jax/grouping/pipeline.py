"""Zero-shot grouping: KProp + Competition (+ connected components) on any sampled affinity graph.

`segments_from_affinities` is EISEN's `compute_segments` generalised to affinities given from
outside (issue 4, section 7; the paper's Table 4 groups a ViT's attention queries this way):
any [B, N, S] logits (or affinities in [0, 1]) plus the [B, N, S] indices of the sampled nodes
(sentinel N = no sample). `cosine_affinities` turns features (e.g. ViT queries averaged over
heads) into logits for it.

    idx = sample_idx                                     # [B, N, S] (e.g. local window + global)
    logits = cosine_affinities(queries, idx, temperature=0.1)
    out = segments_from_affinities(logits, idx, h=H, w=W, key=jax.random.key(0))
    out.segments                                         # [B, H, W] int64
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spelke_jax.grouping import competition as comp_lib
from spelke_jax.grouping import components
from spelke_jax.grouping import kprop as kprop_lib


class GroupingResult(NamedTuple):
  """plateau [B,H,W,Q] (last KProp iteration); masks [B,H,W,M] (Competition); instance_seg
  [B,H,W] int64 (argmax over masks); segments [B,H,W] int64 (after connected components, or
  instance_seg when run_cc=False); kprop / competition: the full results of both stages."""
  plateau: jax.Array
  masks: jax.Array
  instance_seg: np.ndarray
  segments: np.ndarray
  kprop: kprop_lib.KPropResult
  competition: comp_lib.CompetitionResult


def cosine_affinities(features: jax.Array, sample_idx: jax.Array, *,
                      temperature: float = 0.1) -> jax.Array:
  """features [B,N,D], sample_idx [B,N,S] or [1,N,S] (sentinel N) -> logits [B,N,S] =
  cos(f_i, f_j) / T;
  sentinel samples get logit 0 (as EISEN's zero key)."""
  features = jnp.asarray(features, jnp.float32)
  sample_idx = jnp.asarray(sample_idx)
  if features.ndim != 3:
    raise ValueError(f"features must be [B, N, D], got shape {tuple(features.shape)}")
  b, n, _ = features.shape
  if sample_idx.ndim != 3 or sample_idx.shape[1] != n or sample_idx.shape[0] not in (1, b):
    raise ValueError(f"sample_idx must be [B, N, S] = [{b}, {n}, S] (or [1, N, S]), got "
                     f"{tuple(sample_idx.shape)}")
  sample_idx = jnp.broadcast_to(sample_idx, (b,) + sample_idx.shape[1:])
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  f = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-8)
  valid = sample_idx < n
  idx = jnp.where(valid, sample_idx, 0)

  def one(fb, ib, vb):
    return jnp.where(vb, jnp.einsum("nd,nsd->ns", fb, fb[ib],
                                    precision=jax.lax.Precision.HIGHEST), 0.0)
  return jax.vmap(one)(f, idx, valid) / jnp.float32(temperature)


def segments_from_affinities(
    affinities: jax.Array, sample_idx: jax.Array, *, h: int, w: int, kind: str = "logits",
    key: jax.Array | None = None, h0: jax.Array | None = None,
    seed_idx: jax.Array | None = None, draws: Sequence[jax.Array] | None = None,
    noise: Sequence[jax.Array] | None = None, iters: int = 25, thresh: float = 0.7,
    q: int = 32, num_masks: int = 32, num_rounds: int = 3, min_area: int = 20,
    parity: bool = False, run_cc: bool = True, method: str = "auto",
    return_all: bool = False) -> GroupingResult:
  """KProp -> Competition -> argmax -> connected components on a sampled affinity graph.

  affinities [B,N,S]: logits (kind='logits', softmax-then-max-normalised as EISEN) or
  affinities in [0,1] (kind='adj'); sample_idx [B,N,S] int (sentinel N); N = h*w row-major.
  Random inputs: h0 [B,N,Q], seed_idx [B], draws / noise (see `competition`) replay recorded
  draws; whatever is missing is drawn from `key`. Defaults are EISEN's released settings
  (Q=32, 25 iterations, threshold 0.7, 32 masks, 3 rounds, min area 20); the paper's are Q=256,
  40 iterations, threshold 0.5.
  """
  affinities = jnp.asarray(affinities, jnp.float32)
  if affinities.ndim != 3:
    raise ValueError(f"affinities must be [B, N, S], got shape {tuple(affinities.shape)}")
  b, n, _ = affinities.shape
  if n != h * w:
    raise ValueError(f"N = {n} affinity rows but h*w = {h}*{w} = {h * w}")
  if kind == "logits":
    adj = kprop_lib.affinities_from_logits(affinities)
  elif kind == "adj":
    adj = affinities
  else:
    raise ValueError(f"kind must be 'logits' or 'adj', got {kind!r}")
  need_key = h0 is None or seed_idx is None or draws is None or noise is None
  if need_key and key is None:
    raise ValueError("give `key`, or every random input (h0, seed_idx, draws, noise)")
  if h0 is not None and jnp.shape(h0)[-1] != q:
    raise ValueError(f"h0 has Q = {jnp.shape(h0)[-1]} channels but q = {q}")
  sample_idx = jnp.asarray(sample_idx)
  kprop_lib.check_inputs(adj, sample_idx,
                         np.broadcast_to(np.float32(0), (b, n, q)) if h0 is None else h0,
                         np.zeros((b,)) if seed_idx is None else seed_idx)
  kh, ks, kc = jax.random.split(key, 3) if key is not None else (None, None, None)
  if h0 is None:
    h0 = kprop_lib.init_plateau(kh, b, n, q)
  if seed_idx is None:
    seed_idx = kprop_lib.random_seed_nodes(ks, b, n)
  kp = kprop_lib.kprop(adj, sample_idx, h0, seed_idx, iters=iters, thresh=thresh,
                       return_all=return_all, method=method)
  plateau = kp.plateau.reshape(b, h, w, -1)
  comp = comp_lib.competition(plateau, num_masks=num_masks, num_rounds=num_rounds, draws=draws,
                              noise=noise, key=kc)
  inst = components.segments_from_masks(comp.masks)
  segs = components.label_batch(inst, min_area, parity) if run_cc else inst
  return GroupingResult(plateau=plateau, masks=comp.masks, instance_seg=inst, segments=segs,
                        kprop=kp, competition=comp)
