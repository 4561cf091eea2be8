"""LRAS, SpelkeNet's flow-completion transformer, in flax.nnx.

A pre-norm GPT exactly as the original (spelke_net/spelke_net/model.py + utils/modeling.py):
weight-only LayerNorm (eps 1e-5), one fused qkv projection split q|k|v with heads contiguous,
scale 1/sqrt(head_dim), causal attention, MLP 4x with exact (erf) GELU, no biases, learned
absolute positions indexed by explicit position ids (prompts use the canonical positions of
shuffled patches, not 0..T-1), and an untied lm_head.

Three entry points share the same blocks:
  model(tokens, positions)                     full causal forward -> [B, T, V] logits
  model.prefill(tokens, positions, cache)      causal pass that also fills an empty KV cache
  model.extend(tokens, positions, cache)       appends n tokens to a filled cache (n = 1 for a
                                               decode step, n > 1 for a block, causal inside)
The cache is a plain pytree (`KVCache`), passed in and out, so jitted loops carry it.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from spelke_jax.models import layers
from spelke_jax.models.lras_config import LRASConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Preallocated keys/values of every layer.

  k, v: tuple (one per layer) of [B, S, H, hs] arrays; `index` (int32 scalar) is the number of
  filled slots, shared by all rows (prompts of a batch are aligned).
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  index: jax.Array

  @property
  def size(self) -> int:
    return self.k[0].shape[1]

  @property
  def batch(self) -> int:
    return self.k[0].shape[0]


def init_cache(config: LRASConfig, batch: int, size: int, dtype=None) -> KVCache:
  """An empty cache of `size` slots for `batch` rows (dtype: the compute dtype by default)."""
  dtype = jnp.dtype(dtype or config.dtype)
  shape = (batch, size, config.n_head, config.head_dim)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
  return KVCache(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer)),
                 index=jnp.zeros((), jnp.int32))


def broadcast_cache(cache: KVCache, batch: int) -> KVCache:
  """Repeats a 1-row cache (e.g. a shared image prefix) to `batch` rows."""
  rep = lambda x: jnp.broadcast_to(x, (batch,) + x.shape[1:])
  return KVCache(k=tuple(map(rep, cache.k)), v=tuple(map(rep, cache.v)), index=cache.index)


class Attention(nnx.Module):
  """Causal multi-head self-attention with a fused qkv kernel [d, 3, H, hs] and out [H, hs, d]."""

  def __init__(self, config: LRASConfig, *, rngs: nnx.Rngs | None = None):
    d, h, hs = config.n_embd, config.n_head, config.head_dim
    pdt = jnp.dtype(config.param_dtype)
    self.qkv = layers.param(rngs, (d, 3, h, hs), ("embed", None, "heads", "head_dim"), pdt,
                            layers.normal(0.02))
    self.out = layers.param(rngs, (h, hs, d), ("heads", "head_dim", "embed"), pdt,
                            layers.normal(0.02 / (2 * config.n_layer) ** 0.5))
    self.dtype = jnp.dtype(config.dtype)
    self.impl = config.attention_impl
    self.scale = 1.0 / hs**0.5

  def project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, T, d] -> q, k, v each [B, T, H, hs]."""
    qkv = jnp.einsum("btd,dchk->cbthk", x.astype(self.dtype), self.qkv[...].astype(self.dtype))
    return qkv[0], qkv[1], qkv[2]

  def output(self, y: jax.Array) -> jax.Array:
    return jnp.einsum("bthk,hkd->btd", y, self.out[...].astype(self.dtype))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Causal self-attention over x [B, T, d]; also returns this block's k, v [B, T, H, hs]."""
    q, k, v = self.project(x)
    y = jax.nn.dot_product_attention(q, k, v, scale=self.scale, is_causal=True,
                                     implementation=self.impl)
    return self.output(y), k, v

  def attend_cache(self, x: jax.Array, k_cache: jax.Array, v_cache: jax.Array, index: jax.Array):
    """x [B, n, d] at cache slots index..index+n-1 attends to slots <= its own.

    Returns (out [B, n, d], updated k_cache, v_cache [B, S, H, hs]).
    """
    q, k, v = self.project(x)
    k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
    v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
    n, s = x.shape[1], k_cache.shape[1]
    mask = jnp.arange(s)[None, :] <= (index + jnp.arange(n))[:, None]  # [n, S]
    y = jax.nn.dot_product_attention(q, k_cache.astype(self.dtype), v_cache.astype(self.dtype),
                                     mask=mask[None, None], scale=self.scale, implementation="xla")
    return self.output(y), k_cache, v_cache


class MLP(nnx.Module):
  """d -> 4d (exact GELU) -> d, no biases."""

  def __init__(self, config: LRASConfig, *, rngs: nnx.Rngs | None = None):
    pdt, dt = jnp.dtype(config.param_dtype), jnp.dtype(config.dtype)
    self.fc = layers.Linear(config.n_embd, config.mlp_dim, axes=("embed", "mlp"), param_dtype=pdt,
                            dtype=dt, init=layers.normal(0.02), rngs=rngs)
    self.proj = layers.Linear(config.mlp_dim, config.n_embd, axes=("mlp", "embed"), param_dtype=pdt,
                              dtype=dt, init=layers.normal(0.02 / (2 * config.n_layer) ** 0.5),
                              rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.proj(jax.nn.gelu(self.fc(x), approximate=False))


class Block(nnx.Module):
  """x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  def __init__(self, config: LRASConfig, *, rngs: nnx.Rngs | None = None):
    pdt = jnp.dtype(config.param_dtype)
    self.ln_1 = layers.LayerNorm(config.n_embd, use_bias=False, eps=config.ln_eps, param_dtype=pdt,
                                 rngs=rngs)
    self.attn = Attention(config, rngs=rngs)
    self.ln_2 = layers.LayerNorm(config.n_embd, use_bias=False, eps=config.ln_eps, param_dtype=pdt,
                                 rngs=rngs)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x):
    a, k, v = self.attn(self.ln_1(x))
    x = x + a
    return x + self.mlp(self.ln_2(x)), k, v

  def cached(self, x, k_cache, v_cache, index):
    a, k_cache, v_cache = self.attn.attend_cache(self.ln_1(x), k_cache, v_cache, index)
    x = x + a
    return x + self.mlp(self.ln_2(x)), k_cache, v_cache


class LRAS(nnx.Module):
  """The flow-completion transformer. tokens/positions are int [B, T]."""

  def __init__(self, config: LRASConfig, *, rngs: nnx.Rngs | None = None):
    self.config = config
    pdt, dt = jnp.dtype(config.param_dtype), jnp.dtype(config.dtype)
    self.token_embedding = layers.Embed(config.vocab_size, config.n_embd, axes=("vocab", "embed"),
                                        param_dtype=pdt, rngs=rngs)
    self.positional_embedding = layers.Embed(config.block_size, config.n_embd,
                                             axes=("position", "embed"), param_dtype=pdt, rngs=rngs)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layer)])
    self.ln_f = layers.LayerNorm(config.n_embd, use_bias=False, eps=config.ln_eps, param_dtype=pdt,
                                 rngs=rngs)
    self.lm_head = layers.Linear(config.n_embd, config.vocab_size, axes=("embed", "vocab"),
                                 param_dtype=pdt, dtype=dt, init=layers.normal(0.02), rngs=rngs)
    self.dtype = dt

  def embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """[B, T] ids and position ids -> [B, T, d] in the compute dtype."""
    return (self.token_embedding(tokens).astype(self.dtype)
            + self.positional_embedding(positions).astype(self.dtype))

  def logits(self, x: jax.Array, columns: tuple[int, int] | None = None) -> jax.Array:
    """[B, T, d] hidden -> [B, T, V] logits (compute dtype); with columns=(lo, hi) only the
    logits of tokens lo..hi-1 ([B, T, hi - lo]), computing nothing for the others."""
    h = self.ln_f(x)
    if columns is None:
      return self.lm_head(h)
    lo, hi = columns
    kernel = self.lm_head.kernel[...][:, lo:hi].astype(self.dtype)
    return jnp.einsum("btd,dv->btv", h.astype(self.dtype), kernel)

  def __call__(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    """Full causal forward: [B, T] -> logits [B, T, V]."""
    x = self.embed(tokens, positions)
    for block in self.blocks:
      x, _, _ = block(x)
    return self.logits(x)

  def prefill(self, tokens: jax.Array, positions: jax.Array, cache: KVCache,
              num_logits: int = 1) -> tuple[jax.Array, KVCache]:
    """Causal pass over a prompt [B, P] written at slot 0 of an empty `cache`.

    Returns logits of the last `num_logits` tokens [B, num_logits, V] and the filled cache
    (index = P). Attention is over the prompt only, so prefill costs P^2, not P*S.
    """
    x = self.embed(tokens, positions)
    ks, vs = [], []
    for block, kc, vc in zip(self.blocks, cache.k, cache.v):
      x, k, v = block(x)
      ks.append(jax.lax.dynamic_update_slice(kc, k.astype(kc.dtype), (0, 0, 0, 0)))
      vs.append(jax.lax.dynamic_update_slice(vc, v.astype(vc.dtype), (0, 0, 0, 0)))
    new = KVCache(k=tuple(ks), v=tuple(vs), index=jnp.asarray(tokens.shape[1], jnp.int32))
    return self.logits(x[:, -num_logits:]), new

  def extend(self, tokens: jax.Array, positions: jax.Array, cache: KVCache,
             num_logits: int | None = None,
             columns: tuple[int, int] | None = None) -> tuple[jax.Array, KVCache]:
    """Appends n tokens [B, n] after the filled part of `cache` (causal among themselves).

    Returns logits of the last `num_logits` (default all n) appended tokens [B, ., V] (or only
    the vocabulary `columns` (lo, hi)) and the updated cache (index += n). The caller keeps
    index + n <= cache size.
    """
    x = self.embed(tokens, positions)
    ks, vs = [], []
    for block, kc, vc in zip(self.blocks, cache.k, cache.v):
      x, kc, vc = block.cached(x, kc, vc, cache.index)
      ks.append(kc)
      vs.append(vc)
    new = KVCache(k=tuple(ks), v=tuple(vs), index=cache.index + tokens.shape[1])
    if num_logits is not None:
      x = x[:, -num_logits:]
    return self.logits(x, columns), new


def create(config: LRASConfig, seed: int = 0) -> LRAS:
  """A randomly initialised model (the original's N(0, 0.02) init)."""
  return LRAS(config, rngs=nnx.Rngs(seed))


def abstract(config: LRASConfig) -> LRAS:
  """Shapes and dtypes only (no memory), for loading converted weights."""
  return nnx.eval_shape(lambda: LRAS(config, rngs=nnx.Rngs(0)))
