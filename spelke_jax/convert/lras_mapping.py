"""torch state-dict names of LRAS (spelke_net/spelke_net/model.py) -> spelke_jax.models.lras paths."""
from __future__ import annotations

from spelke_jax.convert.mapping import IDENTITY, LINEAR, Entry, Table, attn_out, fused_qkv
from spelke_jax.models.lras_config import LRASConfig


def table(config: LRASConfig) -> Table:
  """4 + 6 * n_layer entries; the original has no biases and no buffers."""
  h = config.n_head
  entries = [
      Entry("transformer.token_embedding.weight", "token_embedding/embedding", IDENTITY),
      Entry("transformer.positional_embedding.weight", "positional_embedding/embedding", IDENTITY),
  ]
  for i in range(config.n_layer):
    t, f = f"transformer.h.{i}", f"blocks/{i}"
    entries += [
        Entry(f"{t}.ln_1.weight", f"{f}/ln_1/scale", IDENTITY),
        Entry(f"{t}.attn.c_attn.weight", f"{f}/attn/qkv", fused_qkv(h)),
        Entry(f"{t}.attn.c_proj.weight", f"{f}/attn/out", attn_out(h)),
        Entry(f"{t}.ln_2.weight", f"{f}/ln_2/scale", IDENTITY),
        Entry(f"{t}.mlp.c_fc.weight", f"{f}/mlp/fc/kernel", LINEAR),
        Entry(f"{t}.mlp.c_proj.weight", f"{f}/mlp/proj/kernel", LINEAR),
    ]
  entries += [
      Entry("transformer.ln_f.weight", "ln_f/scale", IDENTITY),
      Entry("lm_head.weight", "lm_head/kernel", LINEAR),
  ]
  return Table(system="lras", entries=tuple(entries))
