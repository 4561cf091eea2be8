"""The `kprop` bench workload: KProp + Competition on one EISEN-sized affinity graph.

Default shapes (issue 4): one 128x128 map, S=1024 samples per node (25x25 window + 399 uniform
global samples), Q=32, 25 KProp iterations (threshold 0.7), Competition with 32 pointers and 3
rounds; random logits (N(0, 2^2)), timed after compilation, best of `repeats`. Reported:
the whole grouping step (one jitted KProp + Competition), each stage alone, throughput and the
ratio of the counted FLOP/s to the machine's matmul peak (spelke_jax.bench.MatmulPeak).

FLOPs counted (useful work on the sampled graph, whatever formulation runs):
  KProp:       iters * 2 half steps * 2 * E * (Q + 1)       E = valid (node, sample) pairs
  Competition: 2*N*M*Q (initial masks) + R * (3 * 2*N*M*Q + 2*N*M*M)
               (masks, winner means, homing vectors; pairwise mask overlaps)

Config fields (all optional, defaults above): kprop_batch, kprop_height, kprop_width,
kprop_samples, kprop_window, kprop_q, kprop_iters, kprop_thresh, kprop_masks, kprop_rounds,
kprop_method ('auto' | 'segment' | 'dense'), kprop_chunk (samples per scatter step of
'segment'; default kprop.auto_chunk), repeats, seed, matmul_size, matmul_repeats, dtype
(matmul peak only; the workload is float32).
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from spelke_jax.grouping import competition as comp_lib
from spelke_jax.grouping import kprop as kprop_lib

FLOP_FORMULA = ("kprop: iters*2*2*E*(Q+1) with E = valid (node, sample) pairs; competition: "
                "2*N*M*Q + R*(3*2*N*M*Q + 2*N*M*M)")


def _get(config, name, default):
  try:
    v = config[name] if isinstance(config, dict) else getattr(config, name)
  except (KeyError, AttributeError):
    return default
  return default if v is None else v


def kprop_flops(num_valid: int, q: int, iters: int) -> float:
  return float(iters) * 2.0 * 2.0 * num_valid * (q + 1)


def competition_flops(b: int, n: int, m: int, q: int, r: int) -> float:
  return float(b) * (2.0 * n * m * q + r * (3 * 2.0 * n * m * q + 2.0 * n * m * m))


def bench_kprop(config, peak_flops_per_s: float | None = None) -> dict[str, Any]:
  """Times KProp + Competition (see module doc); returns a JSON-able dict with best seconds,
  throughput, FLOP/s and (peak measured here unless given) `ratio_to_matmul_peak`."""
  from spelke_jax import bench as bench_lib  # pylint: disable=g-import-not-at-top
  b = int(_get(config, "kprop_batch", 1))
  h = int(_get(config, "kprop_height", 128))
  w = int(_get(config, "kprop_width", 128))
  s = int(_get(config, "kprop_samples", 1024))
  window = int(_get(config, "kprop_window", 25))
  q = int(_get(config, "kprop_q", 32))
  iters = int(_get(config, "kprop_iters", 25))
  thresh = float(_get(config, "kprop_thresh", 0.7))
  m = int(_get(config, "kprop_masks", 32))
  r = int(_get(config, "kprop_rounds", 3))
  method = str(_get(config, "kprop_method", "auto"))
  chunk = _get(config, "kprop_chunk", None)
  repeats = int(_get(config, "repeats", 3))
  seed = int(_get(config, "seed", 0))
  n = h * w
  if method == "auto":
    method = kprop_lib.auto_method(b, n, s=s)
  if method not in ("segment", "dense"):
    raise ValueError(f"kprop_method must be auto, segment or dense, got {method!r}")

  k_idx, k_log, k_h0, k_seed, k_comp = jax.random.split(jax.random.key(seed), 5)
  idx = kprop_lib.synthetic_sample_idx(k_idx, b, h, w, s, window)
  adj = kprop_lib.affinities_from_logits(2.0 * jax.random.normal(k_log, (b, n, idx.shape[-1])))
  h0 = kprop_lib.init_plateau(k_h0, b, n, q)
  a0 = jax.nn.one_hot(kprop_lib.random_seed_nodes(k_seed, b, n), n, dtype=jnp.bool_)
  num_valid = int(jnp.sum(idx < n))
  chunk = kprop_lib.auto_chunk(b, n, int(idx.shape[-1]), q) if chunk is None else int(chunk)

  @jax.jit
  def kprop_only(adj, idx, h0, a0):
    return kprop_lib.kprop(adj, idx, h0, iters=iters, thresh=thresh, method=method,
                           chunk=chunk, activated=a0).plateau

  @jax.jit
  def comp_only(plateau, key):
    return comp_lib.competition(plateau, num_masks=m, num_rounds=r, key=key).masks

  @jax.jit
  def grouping(adj, idx, h0, a0, key):
    plateau = kprop_only(adj, idx, h0, a0).reshape(b, h, w, q)
    return comp_only(plateau, key)

  t_all = bench_lib.compile_and_time(grouping, (adj, idx, h0, a0, k_comp), repeats)
  t_kp = bench_lib.compile_and_time(kprop_only, (adj, idx, h0, a0), repeats)
  plateau = t_kp["compiled"](adj, idx, h0, a0).reshape(b, h, w, q)
  t_comp = bench_lib.compile_and_time(comp_only, (plateau, k_comp), repeats)

  f_kp = kprop_flops(num_valid, q, iters)
  f_comp = competition_flops(b, n, m, q, r)
  flops = f_kp + f_comp
  best = t_all["best_seconds"]
  out: dict[str, Any] = {
      "shapes": {"B": b, "H": h, "W": w, "N": n, "S": int(idx.shape[-1]), "window": window,
                 "Q": q, "iters": iters, "thresh": thresh, "M": m, "R": r,
                 "valid_samples": num_valid},
      "method": method, "chunk": chunk if method == "segment" else None,
      **{k: t_all[k] for k in ("compile_seconds", "first_run_seconds", "best_seconds",
                               "times_seconds")},
      "kprop_best_seconds": t_kp["best_seconds"],
      "competition_best_seconds": t_comp["best_seconds"],
      "maps_per_s": b / best,
      "kprop_messages_per_s": iters * 2.0 * num_valid / t_kp["best_seconds"],
      "flop_per_call": flops, "kprop_flop_per_call": f_kp, "competition_flop_per_call": f_comp,
      "flops_per_s": flops / best, "flop_formula": FLOP_FORMULA,
  }
  if peak_flops_per_s is None:
    peak = bench_lib.MatmulPeak(jnp.dtype(_get(config, "dtype", "float32")),
                                size=int(_get(config, "matmul_size", 0)),
                                repeats=int(_get(config, "matmul_repeats", 10)))
    peak.measure()
    out["matmul_peak"] = peak.summary()
    peak_flops_per_s = peak.flops_per_s
  out["ratio_to_matmul_peak"] = float(out["flops_per_s"] / peak_flops_per_s)
  return out
