"""Parity runner for the `lras` packs: full forward, KV-cache prefill/decode, bf16 forward.

The pack's model.pt goes through the real converter (torch file -> Orbax -> load_converted).
Cache layouts are returned as the original's [L, B, H, T, hs].
"""
from __future__ import annotations

import tempfile

import jax.numpy as jnp
import numpy as np

from spelke_jax.convert.convert import convert_checkpoint
from spelke_jax.convert.load import load_converted
from spelke_jax.models import lras


def _cache_layout(cache: lras.KVCache, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Our per-layer [B, S, H, hs] -> the original's stacked [L, B, H, length, hs]."""
  stack = lambda xs: np.stack([np.asarray(x[:, :length]).transpose(0, 2, 1, 3) for x in xs])
  return stack(cache.k), stack(cache.v)


def run(pack) -> dict[str, np.ndarray]:
  seq = jnp.asarray(pack["seq"], jnp.int32)
  pos = jnp.asarray(pack["pos"], jnp.int32)
  p, d = int(pack["prefill_len"]), int(pack["decode_steps"])
  out: dict[str, np.ndarray] = {}
  with tempfile.TemporaryDirectory() as tmp:
    path = convert_checkpoint(pack.file("model.pt"), f"{tmp}/lras", "lras", progress=False)
    model = load_converted(path)
    model_bf16 = load_converted(path, param_dtype="bfloat16", dtype="bfloat16")

  out["logits"] = np.asarray(model(seq, pos))
  cache = lras.init_cache(model.config, seq.shape[0], p + d)
  last, cache = model.prefill(seq[:, :p], pos[:, :p], cache)
  out["prefill_last_logits"] = np.asarray(last)
  out["prefill_k_cache"], out["prefill_v_cache"] = _cache_layout(cache, p)
  steps = []
  for t in range(p, p + d):
    logits, cache = model.extend(seq[:, t:t + 1], pos[:, t:t + 1], cache)
    steps.append(np.asarray(logits))
  out["decode_logits"] = np.concatenate(steps, axis=1)
  out["final_k_cache"], out["final_v_cache"] = _cache_layout(cache, p + d)
  out["logits_bf16"] = np.asarray(model_bf16(seq, pos).astype(jnp.float32))
  return out
