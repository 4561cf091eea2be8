"""Token sampling and the jitted KV-cache decoder for LRAS.

`filter_logits` / `sample_logits` follow the original's order (LRAS.sample_logits):
blacklist -> temperature (0 = argmax) -> top-k -> top-p -> allowed tokens -> softmax -> sample.
`generate` prefills a batch of independent prompts and decodes `num_new` tokens with one
`lax.fori_loop` inside one `jax.jit` (static shapes), with per-row RNG keys, so a row's tokens
do not depend on what else is in the batch. Tokens can be forced at given steps (the probing
code overwrites pointer tokens instead of sampling them).
"""
from __future__ import annotations

import dataclasses
import functools
import jax
import jax.numpy as jnp
from flax import nnx

from spelke_jax.models.lras import KVCache, init_cache

NEG_INF = -jnp.inf


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Sampling settings. temperature 0 means argmax; top_k / top_p None disable the filters.

  SpelkeBench uses temperature=1.0, top_k=None, top_p=None; the original predictor's defaults
  (the notebooks) are temperature=1.0, top_k=1000, top_p=0.9.
  """
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None


def filter_logits(logits: jax.Array, cfg: SamplingConfig, blacklist: jax.Array | None = None,
                  allowed: jax.Array | None = None) -> jax.Array:
  """[..., V] logits -> float32 logits with filtered entries at -inf (temperature applied).

  blacklist / allowed: [V] (or broadcastable) bool masks of tokens to exclude / to keep.
  """
  x = logits.astype(jnp.float32)
  if blacklist is not None:
    x = jnp.where(blacklist, NEG_INF, x)
  x = x / cfg.temperature
  if cfg.top_k is not None:
    k = min(int(cfg.top_k), x.shape[-1])
    kth = jax.lax.top_k(x, k)[0][..., -1:]
    x = jnp.where(x < kth, NEG_INF, x)
  if cfg.top_p is not None:
    order = jnp.argsort(-x, axis=-1, stable=True)
    sorted_x = jnp.take_along_axis(x, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_x, axis=-1), axis=-1)
    # Remove a token when the mass *before* it already exceeds top_p (keeps the crossing one).
    remove_sorted = jnp.concatenate(
        [jnp.zeros_like(cum[..., :1], bool), cum[..., :-1] > cfg.top_p], axis=-1)
    remove = jnp.take_along_axis(remove_sorted, jnp.argsort(order, axis=-1), axis=-1)
    x = jnp.where(remove, NEG_INF, x)
  if allowed is not None:
    x = jnp.where(allowed, x, NEG_INF)
  return x


def sample_logits(logits: jax.Array, keys: jax.Array | None, cfg: SamplingConfig,
                  blacklist: jax.Array | None = None, allowed: jax.Array | None = None,
                  uniform: jax.Array | None = None) -> jax.Array:
  """Samples one token per row. logits [B, V]; keys [B] (one PRNG key per row) -> int32 [B].

  With `uniform` [B] (recorded draws in [0, 1)) the token is the inverse-CDF sample instead of a
  keyed draw, so external randomness replays exactly.
  """
  if cfg.temperature == 0:
    x = logits.astype(jnp.float32)
    if blacklist is not None:
      x = jnp.where(blacklist, NEG_INF, x)
    return jnp.argmax(x, axis=-1).astype(jnp.int32)
  x = filter_logits(logits, cfg, blacklist, allowed)
  if uniform is not None:
    cdf = jnp.cumsum(jax.nn.softmax(x, axis=-1), axis=-1)
    idx = jnp.sum(cdf <= uniform[:, None] * cdf[:, -1:], axis=-1)
    return jnp.minimum(idx, x.shape[-1] - 1).astype(jnp.int32)
  return jax.vmap(lambda k, row: jax.random.categorical(k, row))(keys, x).astype(jnp.int32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Generation:
  """Result of `generate`. tokens [B, N] int32; cache holds prompt + all N tokens;
  logits [B, N, V] float32 (the distribution each token was drawn from) or None."""
  tokens: jax.Array
  cache: KVCache
  logits: jax.Array | None


def generate(model: nnx.Module, prompt_tokens: jax.Array, prompt_positions: jax.Array,
             new_positions: jax.Array, keys: jax.Array, *, sampling: SamplingConfig,
             cache_size: int | None = None, forced_tokens: jax.Array | None = None,
             forced_mask: jax.Array | None = None, blacklist: jax.Array | None = None,
             blacklist_steps: jax.Array | None = None, allowed: jax.Array | None = None,
             uniform: jax.Array | None = None, return_logits: bool = False) -> Generation:
  """Prefills prompts [B, P] and decodes N = new_positions.shape[1] tokens, all in one jit.

  new_positions [B, N]: the position id of each generated token, in generation order.
  keys [B]: per-row PRNG keys (step i uses fold_in(key, i)). forced_tokens/forced_mask [B, N]:
  where the mask is set, the token is taken from forced_tokens instead of sampled.
  blacklist [V] bool applies at the steps where blacklist_steps [N] is set (all by default).
  uniform [B, N]: optional recorded uniform draws replacing the keys.
  cache_size: slots to allocate (default P + N); a larger cache leaves room for appending.
  """
  graphdef, state = nnx.split(model)
  return _generate(graphdef, state, prompt_tokens, prompt_positions, new_positions, keys,
                   forced_tokens, forced_mask, blacklist, blacklist_steps, allowed, uniform,
                   sampling=sampling, cache_size=cache_size, return_logits=return_logits)


@functools.partial(jax.jit, static_argnames=("graphdef", "sampling", "cache_size", "return_logits"))
def _generate(graphdef, state, prompt_tokens, prompt_positions, new_positions, keys,
              forced_tokens, forced_mask, blacklist, blacklist_steps, allowed, uniform, *,
              sampling: SamplingConfig, cache_size: int | None, return_logits: bool) -> Generation:
  model = nnx.merge(graphdef, state)
  b, p = prompt_tokens.shape
  n = new_positions.shape[1]
  size = cache_size or (p + n)
  if size < p + n:
    raise ValueError(f"cache_size {size} < prompt {p} + new tokens {n}")
  cache = init_cache(model.config, b, size)
  logits, cache = model.prefill(prompt_tokens, prompt_positions, cache)
  return decode_loop(model, logits[:, -1], cache, new_positions, keys, sampling=sampling,
                     forced_tokens=forced_tokens, forced_mask=forced_mask, blacklist=blacklist,
                     blacklist_steps=blacklist_steps, allowed=allowed, uniform=uniform,
                     return_logits=return_logits)


def decode_loop(model, logits: jax.Array, cache: KVCache, new_positions: jax.Array,
                keys: jax.Array, *, sampling: SamplingConfig, forced_tokens=None, forced_mask=None,
                blacklist=None, blacklist_steps=None, allowed=None, uniform=None,
                return_logits: bool = False) -> Generation:
  """The decode loop on an already-filled cache (call inside jit).

  logits [B, V]: next-token logits after the cache's last token. Each of the N steps samples a
  token, then feeds it at new_positions[:, i] so the cache ends holding all N tokens.
  """
  b, n = new_positions.shape
  v = logits.shape[-1]
  if forced_tokens is None:
    forced_tokens = jnp.zeros((b, n), jnp.int32)
    forced_mask = jnp.zeros((b, n), bool)

  def body(i, carry):
    logits, cache, tokens, all_logits = carry
    bl = None
    if blacklist is not None:
      bl = blacklist if blacklist_steps is None else (blacklist & blacklist_steps[i])
    step_keys = None if uniform is not None else jax.vmap(lambda k: jax.random.fold_in(k, i))(keys)
    u = None if uniform is None else uniform[:, i]
    tok = sample_logits(logits, step_keys, sampling, bl, allowed, u)
    tok = jnp.where(forced_mask[:, i], forced_tokens[:, i].astype(jnp.int32), tok)
    tokens = tokens.at[:, i].set(tok)
    if all_logits is not None:
      all_logits = all_logits.at[:, i].set(logits.astype(jnp.float32))
    pos = jax.lax.dynamic_slice_in_dim(new_positions, i, 1, axis=1)
    next_logits, cache = model.extend(tok[:, None], pos, cache)
    return next_logits[:, -1], cache, tokens, all_logits

  tokens = jnp.zeros((b, n), jnp.int32)
  all_logits = jnp.zeros((b, n, v), jnp.float32) if return_logits else None
  _, cache, tokens, all_logits = jax.lax.fori_loop(0, n, body, (logits, cache, tokens, all_logits))
  return Generation(tokens=tokens, cache=cache, logits=all_logits)


def row_keys(seed: int | jax.Array, batch: int) -> jax.Array:
  """`batch` independent PRNG keys from one seed (row r gets fold_in(key(seed), r))."""
  base = jax.random.key(seed)
  return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(batch))
