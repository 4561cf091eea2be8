"""KProp (EISEN's kernel propagation, `GraphPropagation`) as a `jax.lax.scan` recurrence.

The graph is the sampled affinity graph of EISEN: node i samples S nodes `sample_idx[b, i, k]`
(the sentinel N marks an out-of-image sample, which is dropped) with affinity `adj[b, i, k]`
(softmax-then-max-normalised logits, row max 1). A message flows from the sampling node i
(sender) to the sampled node j (receiver). One iteration, with `a` the sender activation mask:

    A+ = A       where A > t          (excitation weights, per sample; duplicates summed)
    A- = 1 - A   where 1 - A > t      (inhibition weights)
    h'  = h  + sum_i a_i A+_ij h_i  / max(1, sum_i a_i A+_ij)
    h'' = h' - sum_i a_i A-_ij h'_i / max(1, sum_i a_i A-_ij)     (inhibition on h')
    h   = l2_normalise(relu(h'') + 1e-16)                          (eps 1e-12)
    a   = a OR (j sampled by any active sender, whatever its affinity)

Two formulations give the same numbers (up to float32 summation order):
- `segment`: messages over the sampled graph with `jax.ops.segment_sum` over receivers
  (optionally `chunk` samples per step); memory O(B*N*S*(Q+1)) (chunked: O(B*N*(S+chunk*Q))),
  never N x N.
- `dense`: sender-major [B, N, N] excitation/inhibition matrices built once by scatter-add,
  then one batched matmul per half step (memory O(B*N^2)); receivers still by segment max.
`method='auto'` (see `auto_method`) picks `segment` on CPU unless the graph is small next to its
samples (N <= 6 S, where dense was measured faster), and `dense` on accelerators while the two
[B, N, N] matrices fit in DENSE_BUDGET_BYTES.

Measured on CPU (2 shared cores, jax 0.10.2, B=1, 128x128, S=1024 = 25x25 window + 399
global, Q=32, 25 iterations, random logits; `benchmark_kprop`, best of 2-3; the machine was
shared, loaded runs were up to 2x slower):
  segment, all samples at once   11.0 s   (2.4 GB of XLA temporaries)
  segment, chunk=128             12.7 s   (0.48 GB)
  dense                          24.3 s   (3.4 GB)
Competition (32 pointers, 3 rounds) on the same map takes ~0.03 s. A window-shift variant of
the 625 local samples (shifted adds; segment sums for the 399 global ones only) was tried and
was no faster on CPU (13.0 s), so it was dropped.
A node whose only active inhibitory sender is itself (e.g. the seed at the first iteration)
gets h' - h' = rounding noise before normalisation; its value is arbitrary in the reference
too, and formulations may disagree there.
"""
from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Two float32 [B, N, N] matrices at most this large for `auto` to use the dense formulation on
# an accelerator (2 GiB = B=1 at 128x128).
DENSE_BUDGET_BYTES = 2 * 2**30
METHODS = ("auto", "segment", "dense")
# The segment-sum formulation scatters all S samples at once while its message tensor
# [B, N, S, Q+1] (float32) fits in MESSAGE_BUDGET_BYTES (B=1 at 128x128, S=1024, Q=32: 2.2 GB;
# 2.4 GB of XLA temporaries), else DEFAULT_CHUNK samples per step (0.48 GB of temporaries at
# that size, 1.1-1.7x slower on CPU).
MESSAGE_BUDGET_BYTES = 4 * 2**30
DEFAULT_CHUNK = 128


def auto_chunk(b: int, n: int, s: int, q: int) -> int:
  """Samples per scatter step `chunk=None` uses: 0 (all) within the budget, else DEFAULT_CHUNK."""
  return 0 if 4 * b * n * s * (q + 1) <= MESSAGE_BUDGET_BYTES else DEFAULT_CHUNK


class KPropResult(NamedTuple):
  """plateau [B,N,Q] (last iteration); all [T,B,N,Q] or None; activated [T,B,N] bool
  (sender mask entering each iteration)."""
  plateau: jax.Array
  all: jax.Array | None
  activated: jax.Array


@jax.jit
def affinities_from_logits(logits: jax.Array) -> jax.Array:
  """EISEN's `softmax_max_norm`: softmax over samples, divided by the row max (clamp 1e-12)."""
  a = jax.nn.softmax(logits, axis=-1)
  return a / jnp.maximum(jnp.max(a, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def init_plateau(rng_key: jax.Array, b: int, n: int, q: int) -> jax.Array:
  """h0 [b,n,q] = softmax of a standard normal draw (EISEN's random plateau init)."""
  return jax.nn.softmax(jax.random.normal(rng_key, (b, n, q), jnp.float32), axis=-1)


@functools.partial(jax.jit, static_argnums=(1, 2))
def random_seed_nodes(rng_key: jax.Array, b: int, n: int) -> jax.Array:
  """One uniformly random seed node per image: [b] int32 in [0, n)."""
  return jax.random.randint(rng_key, (b,), 0, n, jnp.int32)


def check_inputs(adj, sample_idx, h0, seed_idx=None, activated=None) -> tuple[int, int, int, int]:
  """Validates the shapes; returns (B, N, S, Q)."""
  if adj.ndim != 3:
    raise ValueError(f"adj must be [B, N, S], got shape {tuple(adj.shape)}")
  b, n, s = adj.shape
  if sample_idx.ndim != 3 or tuple(sample_idx.shape[1:]) != (n, s) or \
      sample_idx.shape[0] not in (1, b):
    raise ValueError(f"sample_idx shape {tuple(sample_idx.shape)} does not match adj [B, N, S] = "
                     f"{(b, n, s)} (a batch of 1 broadcasts)")
  if not jnp.issubdtype(sample_idx.dtype, jnp.integer):
    raise ValueError(f"sample_idx must be integer, got {sample_idx.dtype}")
  if h0.ndim != 3 or tuple(h0.shape[:2]) != (b, n):
    raise ValueError(f"h0 must be [B, N, Q] = [{b}, {n}, Q], got shape {tuple(h0.shape)}")
  if activated is not None:
    if tuple(activated.shape) != (b, n):
      raise ValueError(f"activated must be [B, N] = {(b, n)}, got {tuple(activated.shape)}")
  elif seed_idx is None:
    raise ValueError("give seed_idx [B] (one seed node per image) or activated [B, N]")
  elif tuple(jnp.shape(seed_idx)) != (b,):
    raise ValueError(f"seed_idx must be [B] = [{b}], got shape {tuple(jnp.shape(seed_idx))}")
  return b, n, s, int(h0.shape[-1])


def _relu_norm(h: jax.Array) -> jax.Array:
  h = jax.nn.relu(h) + 1e-16
  return h / jnp.maximum(jnp.sqrt(jnp.sum(h * h, axis=-1, keepdims=True)), 1e-12)


def _weights(adj, sample_idx, thresh):
  """Per-sample excitation / inhibition weights (0 where invalid or under threshold)."""
  n = adj.shape[1]
  valid = sample_idx < n
  adj = adj.astype(jnp.float32)
  inh = 1.0 - adj
  we = jnp.where(valid & (adj > thresh), adj, 0.0)
  wi = jnp.where(valid & (inh > thresh), inh, 0.0)
  recv = jnp.where(valid, sample_idx, n).astype(jnp.int32)  # sentinel -> dump bucket N
  return we, wi, valid, recv


def _scatter_receivers(values, recv, n):
  """values [B,N,S,C] (or [B,N,S]) summed into receivers -> [B,N,C] (bucket N dropped)."""
  def one(v, r):
    return jax.ops.segment_sum(v.reshape((-1,) + v.shape[2:]), r.reshape(-1), num_segments=n + 1)
  return jax.vmap(one)(values, recv)[:, :n]


def _receivers(a, valid, recv, n):
  """[B,N] bool: nodes sampled (validly) by at least one active sender."""
  sent = (a[:, :, None] & valid).astype(jnp.int32)
  def one(v, r):
    return jax.ops.segment_max(v.reshape(-1), r.reshape(-1), num_segments=n + 1)
  return jax.vmap(one)(sent, recv)[:, :n] > 0


def _agg_segment(w, recv, h, a, chunk=0):
  """Normalised messages sum_i a_i w_ij h_i / max(1, sum_i a_i w_ij) via segment sums.

  chunk > 0: the S samples are scattered `chunk` at a time (fori_loop), so the message tensor
  is [B, N, chunk, Q+1] instead of [B, N, S, Q+1]; w / recv must have S % chunk == 0."""
  af = a.astype(h.dtype)[..., None]
  x = jnp.concatenate([h * af, af], axis=-1)                       # [B,N,Q+1]
  n, s = h.shape[1], w.shape[-1]
  if chunk <= 0 or chunk >= s:
    y = _scatter_receivers(w[..., None] * x[:, :, None, :], recv, n)
  else:
    def body(c, acc):
      wc = jax.lax.dynamic_slice_in_dim(w, c * chunk, chunk, axis=2)
      rc = jax.lax.dynamic_slice_in_dim(recv, c * chunk, chunk, axis=2)
      return acc + _scatter_receivers(wc[..., None] * x[:, :, None, :], rc, n)
    y = jax.lax.fori_loop(0, s // chunk, body, jnp.zeros(x.shape, x.dtype))
  return y[..., :-1] / jnp.maximum(y[..., -1:], 1.0)


def _pad_samples(w_list, recv, chunk):
  """Pads the sample axis to a multiple of `chunk` with zero-weight sentinel samples."""
  s = recv.shape[-1]
  pad = (-s) % chunk if 0 < chunk < s else 0
  if not pad:
    return w_list, recv
  n = recv.shape[1]
  widths = ((0, 0), (0, 0), (0, pad))
  return ([jnp.pad(x, widths) for x in w_list],
          jnp.pad(recv, widths, constant_values=n))


def _dense_matrix(w, recv, n):
  """Sender-major [B, N, N] matrix with duplicates summed (sentinel column dropped)."""
  b, _, s = w.shape
  rows = jnp.broadcast_to(jnp.arange(n)[None, :, None], (b, n, s))
  bi = jnp.broadcast_to(jnp.arange(b)[:, None, None], (b, n, s))
  m = jnp.zeros((b, n, n + 1), w.dtype).at[bi, rows, recv].add(w)
  return m[:, :, :n]


def _agg_dense(m, h, a):
  af = a.astype(h.dtype)[..., None]
  x = jnp.concatenate([h * af, af], axis=-1)
  y = jnp.einsum("bij,bic->bjc", m, x, precision=jax.lax.Precision.HIGHEST)
  return y[..., :-1] / jnp.maximum(y[..., -1:], 1.0)


def auto_method(b: int, n: int, backend: str | None = None, s: int | None = None) -> str:
  """The formulation `method='auto'` uses for B graphs of N nodes and S samples per node.

  CPU: the dense matmuls cost ~N^2 per node row against ~S scatter-adds for `segment`; measured
  (2 shared cores, Q=32, 25 iterations; best of 2, seconds segment / dense): B=8 32x32 S=256
  (N/S=4) 6.3 / 4.2, B=2 64x64 S=1024 (N/S=4) 21.8 / 15.1, B=1 96x96 S=1024 (N/S=9) 24.2 / 36.6,
  B=8 64x64 S=256 (N/S=16) 26.8 / 56.1, B=1 128x128 S=1024 (N/S=16) 11.0 / 24.3. So `dense` when
  N <= 6 S (and both matrices fit in DENSE_BUDGET_BYTES), else `segment`; `segment` when S is
  not given. GPU/TPU: the dense matmuls stream the two [N, N] matrices (bandwidth bound), the
  segment sums are scatters with atomics; `dense` while both matrices fit, else `segment`. The
  accelerator choice is not measured (no accelerator was available); `benchmark_kprop` measures
  both on the spot.
  """
  backend = backend or jax.default_backend()
  fits = 2 * 4 * b * n * n <= DENSE_BUDGET_BYTES
  if backend == "cpu":
    return "dense" if s is not None and n <= 6 * s and fits else "segment"
  return "dense" if fits else "segment"


def _kprop(adj, sample_idx, h0, a0, thresh, *, iters, return_all, method, chunk=0):
  n = adj.shape[1]
  we, wi, valid, recv = _weights(adj, sample_idx, thresh)
  if method == "dense":
    me, mi = _dense_matrix(we, recv, n), _dense_matrix(wi, recv, n)
    excite = lambda h, a: _agg_dense(me, h, a)
    inhibit = lambda h, a: _agg_dense(mi, h, a)
  else:
    (we_c, wi_c), recv_c = _pad_samples([we, wi], recv, chunk)
    excite = lambda h, a: _agg_segment(we_c, recv_c, h, a, chunk)
    inhibit = lambda h, a: _agg_segment(wi_c, recv_c, h, a, chunk)

  def step(carry, _):
    h, a = carry
    h = h + excite(h, a)
    h = h - inhibit(h, a)
    h = _relu_norm(h)
    a_next = jax.lax.cond(jnp.all(a), lambda: a, lambda: a | _receivers(a, valid, recv, n))
    return (h, a_next), ((h if return_all else None), a)

  (h, _), (hs, acts) = jax.lax.scan(step, (h0.astype(jnp.float32), a0), None, length=iters)
  return h, hs, acts


def kprop(adj: jax.Array, sample_idx: jax.Array, h0: jax.Array, seed_idx: jax.Array | None = None,
          *, iters: int, thresh: float, return_all: bool = False, method: str = "auto",
          activated: jax.Array | None = None, chunk: int | None = None) -> KPropResult:
  """Runs `iters` KProp iterations.

  adj [B,N,S] affinities in [0,1] (e.g. `affinities_from_logits(logits)`); sample_idx [B,N,S]
  (or [1,N,S], broadcast) int (sentinel N = invalid sample); h0 [B,N,Q]; seed_idx [B] seed
  node per image (or activated [B,N] bool: the initial sender mask). Returns KPropResult(plateau [B,N,Q],
  all [T,B,N,Q] if return_all, activated [T,B,N] bool). method: 'segment' | 'dense' | 'auto'
  (see auto_method); chunk: samples scattered per step by 'segment' (0: all S at once, memory
  B*N*S*(Q+1) floats; None: auto_chunk).
  """
  if method not in METHODS:
    raise ValueError(f"unknown KProp method {method!r}; known: {METHODS}")
  adj, sample_idx, h0 = jnp.asarray(adj), jnp.asarray(sample_idx), jnp.asarray(h0)
  b, n, s, q = check_inputs(adj, sample_idx, h0, seed_idx, activated)
  if int(iters) < 1:
    raise ValueError(f"iters must be >= 1, got {iters}")
  sample_idx = jnp.broadcast_to(sample_idx, adj.shape)
  if activated is None:
    a0 = jax.nn.one_hot(jnp.asarray(seed_idx), n, dtype=jnp.bool_)
  else:
    a0 = jnp.asarray(activated).astype(jnp.bool_)
  if method == "auto":
    method = auto_method(b, n, s=s)
  h, hs, acts = _kprop(adj, sample_idx.astype(jnp.int32), h0, a0, jnp.float32(thresh),
                       iters=int(iters), return_all=bool(return_all), method=method,
                       chunk=(auto_chunk(b, n, s, q) if chunk is None else int(chunk))
                       if method == "segment" else 0)
  return KPropResult(plateau=h, all=hs, activated=acts)


def benchmark_kprop(*, b: int = 1, h: int = 128, w: int = 128, s: int = 1024, q: int = 32,
                    iters: int = 25, thresh: float = 0.7, window: int = 25, repeats: int = 3,
                    methods: tuple[str, ...] = ("segment", "dense"), chunk: int | None = None,
                    seed: int = 0) -> dict[str, Any]:
  """Times each formulation (after compilation, best of `repeats`) on a random EISEN-like graph
  (local `window` x `window` + uniform global samples); also reports the max abs difference of
  the plateaus between formulations. Returns {method: {best_seconds, compile_seconds, ...}}."""
  n = h * w
  k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(seed), 5)
  idx = synthetic_sample_idx(k1, b, h, w, s, window)
  adj = affinities_from_logits(2.0 * jax.random.normal(k2, (b, n, s)))
  h0 = init_plateau(k3, b, n, q)
  seed_idx = random_seed_nodes(k4, b, n)
  del k5
  out: dict[str, Any] = {"shapes": {"B": b, "H": h, "W": w, "S": s, "Q": q, "iters": iters},
                         "backend": jax.default_backend(), "auto": auto_method(b, n, s=s)}
  plateaus = {}
  a0 = jax.nn.one_hot(seed_idx, n, dtype=jnp.bool_)
  args = (adj, idx, h0, a0, jnp.float32(thresh))
  for m in methods:
    t0 = time.perf_counter()
    c = auto_chunk(b, n, s, q) if chunk is None else chunk
    compiled = _kprop.lower(*args, iters=iters, return_all=False, method=m,
                            chunk=c if m == "segment" else 0).compile()
    compile_s = time.perf_counter() - t0
    res = jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(max(1, repeats)):
      t0 = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - t0)
    plateaus[m] = np.asarray(res[0])
    out[m] = {"best_seconds": min(times), "times_seconds": times, "compile_seconds": compile_s}
  if len(plateaus) > 1:
    ref = plateaus[methods[0]]
    out["max_abs_diff"] = {m: float(np.abs(p - ref).max()) for m, p in plateaus.items()}
  return out


def synthetic_sample_idx(key, b, h, w, s, window):
  """EISEN-like [b, n, s] sample indices (benchmarks, tests): the row-major window x window
  local window (sentinel N outside the image), then uniform global samples up to s."""
  n = h * w
  r = window // 2
  dy, dx = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
  yy, xx = np.divmod(np.arange(n), w)
  ny, nx = yy[:, None] + dy.reshape(1, -1), xx[:, None] + dx.reshape(1, -1)
  inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
  local = np.where(inside, ny * w + nx, n).astype(np.int32)[:, :s]
  glob = jax.random.randint(key, (b, n, max(0, s - local.shape[1])), 0, n, jnp.int32)
  return jnp.concatenate([jnp.broadcast_to(jnp.asarray(local), (b, n, local.shape[1])), glob], -1)


# Old private name, still used by other tests.
_random_sample_idx = synthetic_sample_idx
