"""export_torch writes the original layout: converting it back gives identical parameters."""
from __future__ import annotations

import numpy as np
from flax import nnx

from spelke_jax.convert import convert_checkpoint, load_checkpoint, load_converted
from spelke_jax.convert.export import export_torch
from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig


def _flat(model):
  _, state = nnx.split(model)
  return {path: np.asarray(var[...]) for path, var in nnx.to_flat_state(state)}


def test_export_then_convert_is_exact(tmp_path):
  cfg = LRASConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=16)
  model = lras.create(cfg, seed=7)
  pt = export_torch(model, "lras", tmp_path / "m.pt")
  sd = load_checkpoint(pt).state_dict()
  assert sd["transformer.h.1.attn.c_attn.weight"].shape == (48, 16)
  assert sd["lm_head.weight"].shape == (40, 16)
  assert not list(tmp_path.glob(".*tmp*"))
  back = load_converted(convert_checkpoint(pt, tmp_path / "conv", "lras", progress=False))
  a, b = _flat(model), _flat(back)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
  assert back.config.n_layer == 2 and back.config.vocab_size == 40
