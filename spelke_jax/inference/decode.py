"""The device side of one probing stage: every run's flow completion in one jitted call.

A run is one seq2par completion of the original (quantized_flow_prediction): prefill the prompt
[frame 0 | camera | revealed flow patches], optionally roll out `num_seq` patches with the
KV-cache sampler (pointer tokens forced), then decode the remaining N patches in parallel:
append the N pointer tokens as one block, argmax, append the N first codes, ... (T-1 blocks,
causal inside each block; the original's four full forwards, computed once with a cache).

All R runs of a stage are rows of one batch. When they share the frame-0 prefix (same patch
order), it is prefilled once and broadcast to the R rows.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from spelke_jax.inference import sampling
from spelke_jax.models import lras


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class StageInputs:
  """Token arrays of R runs (int32). Shapes: Rp = 1 (shared prefix) or R.

  prefix_tokens/positions [Rp, Lp]: prefilled first (frame 0 + camera when shared).
  rest_tokens/positions [R, Lr]: the rest of each prompt (may be empty).
  seq_positions [R, T*S], seq_pointers [R, S]: sequential rollout (S patches; may be empty).
  target_pointers [R, N]: pointer tokens of the parallel targets.
  target_positions [R, T-1, N]: positions of slot 0 (pointer) .. T-2 of every target.
  keys [R]: PRNG keys of the sequential sampler.
  """
  prefix_tokens: jax.Array
  prefix_positions: jax.Array
  rest_tokens: jax.Array
  rest_positions: jax.Array
  seq_positions: jax.Array
  seq_pointers: jax.Array
  target_pointers: jax.Array
  target_positions: jax.Array
  keys: jax.Array


@dataclasses.dataclass(frozen=True)
class DecodeSettings:
  """Static settings of a stage (hashable: part of the jit cache key)."""
  sampling: sampling.SamplingConfig
  flow_range: tuple[int, int]
  table_ids: tuple[int, ...]        # absolute token ids whose step-0 logits are kept
  restrict_to_flow: bool = True     # sample/argmax value tokens among flow codes only
  diagnostics: bool = False         # also return lse/argmax over the full vocabulary


def run(model: lras.LRAS, inputs: StageInputs, settings: DecodeSettings) -> dict[str, jax.Array]:
  """Decodes all runs; returns (all [R, ...]):

  table_logits [R, N, K] float32: step-0 logits at `settings.table_ids` (sub-token 0 of every
  target); lse_flow [R, N]: logsumexp of the step-0 logits over the flow range; values [R, N,
  T-1] int32: decoded codes (absolute ids) of every target; rollout [R, T*S] int32; and with
  diagnostics: lse_all [R, N], argmax_all [R, N], top2_gap [R, N].
  """
  graphdef, state = nnx.split(model)
  return _run(graphdef, state, inputs, settings)


@functools.partial(jax.jit, static_argnames=("graphdef", "settings"))
def _run(graphdef, state, inputs: StageInputs, settings: DecodeSettings) -> dict[str, jax.Array]:
  model = nnx.merge(graphdef, state)
  r, n = inputs.target_pointers.shape
  t = inputs.target_positions.shape[1] + 1
  lp, lr, ls = (inputs.prefix_tokens.shape[1], inputs.rest_tokens.shape[1],
                inputs.seq_positions.shape[1])
  size = lp + lr + ls + (t - 1) * n
  cache = lras.init_cache(model.config, inputs.prefix_tokens.shape[0], size)
  logits, cache = model.prefill(inputs.prefix_tokens, inputs.prefix_positions, cache)
  if inputs.prefix_tokens.shape[0] != r:
    cache = lras.broadcast_cache(cache, r)
    logits = jnp.broadcast_to(logits, (r,) + logits.shape[1:])
  if lr:
    logits, cache = model.extend(inputs.rest_tokens, inputs.rest_positions, cache, num_logits=1)

  lo, hi = settings.flow_range
  vocab = model.config.vocab_size
  allowed = None
  if settings.restrict_to_flow:
    allowed = (jnp.arange(vocab) >= lo) & (jnp.arange(vocab) < hi)
  out: dict[str, jax.Array] = {}
  if ls:
    forced = jnp.repeat(inputs.seq_pointers, t, axis=1)  # pointer at every T-th slot
    forced_mask = jnp.broadcast_to((jnp.arange(ls) % t) == 0, (r, ls))
    gen = sampling.decode_loop(model, logits[:, -1], cache, inputs.seq_positions, inputs.keys,
                               sampling=settings.sampling, forced_tokens=forced,
                               forced_mask=forced_mask, allowed=allowed)
    cache = gen.cache
    out["rollout"] = gen.tokens
  else:
    out["rollout"] = jnp.zeros((r, 0), jnp.int32)

  # Restricted to flow codes (and no full-vocabulary diagnostics), only the flow columns of the
  # head are computed: 3.4x less head work and memory for the released vocabulary.
  flow_only = settings.restrict_to_flow and not settings.diagnostics
  offset = lo if flow_only else 0
  tokens = inputs.target_pointers
  values = []
  for step in range(t - 1):
    logits, cache = model.extend(tokens, inputs.target_positions[:, step], cache,
                                 columns=(lo, hi) if flow_only else None)
    logits = logits.astype(jnp.float32)
    if step == 0:
      out.update(_step0_summaries(logits, settings, offset))
    if flow_only:
      nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32) + lo
    elif settings.restrict_to_flow:
      nxt = jnp.argmax(logits[..., lo:hi], axis=-1).astype(jnp.int32) + lo
    else:
      nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    values.append(nxt)
    if step + 1 < t - 1:
      tokens = nxt
  out["values"] = jnp.stack(values, axis=-1)
  return out


def _step0_summaries(logits: jax.Array, settings: DecodeSettings,
                     offset: int = 0) -> dict[str, jax.Array]:
  """What the maps need from the [R, N, V] step-0 logits (columns from `offset` on), without
  keeping them."""
  lo, hi = settings.flow_range
  ids = jnp.asarray(settings.table_ids) - offset
  out = {"table_logits": jnp.take(logits, ids, axis=-1),
         "lse_flow": jax.nn.logsumexp(logits[..., lo - offset:hi - offset], axis=-1)}
  if settings.diagnostics:
    # max and runner-up by masking the argmax (lax.top_k sorts rows: ~50x slower on CPU).
    best = jnp.argmax(logits, axis=-1)
    top1 = jnp.max(logits, axis=-1)
    hit = jnp.arange(logits.shape[-1]) == best[..., None]
    top2 = jnp.max(jnp.where(hit, -jnp.inf, logits), axis=-1)
    out.update(lse_all=jax.nn.logsumexp(logits, axis=-1), argmax_all=best.astype(jnp.int32),
               top2_gap=top1 - top2)
  return out
