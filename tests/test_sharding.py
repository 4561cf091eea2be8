"""Sharded (8 fake CPU devices) forward and decode equal the single-device ones."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from spelke_jax import sharding as sh
from spelke_jax.inference import sampling as S
from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig

CFG = LRASConfig(vocab_size=96, block_size=64, n_layer=2, n_head=4, n_embd=32)
LAYOUTS = [("dp", {"data": 8}), ("fsdp", {"data": 2, "fsdp": 4}), ("tp", {"data": 2, "model": 4})]

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (tests/conftest.py "
                            "sets XLA_FLAGS=--xla_force_host_platform_device_count=8)")


def _inputs():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, CFG.vocab_size, (8, 14)).astype(np.int32)
  pos = np.stack([rng.permutation(CFG.block_size)[:14] for _ in range(8)]).astype(np.int32)
  return tokens, pos


@needs8
@pytest.mark.parametrize("name,shape", LAYOUTS)
def test_sharded_forward_and_decode_equal_single_device(name, shape):
  tokens, pos = _inputs()
  single = lras.create(CFG, seed=2)
  ref_logits = np.asarray(single(tokens, pos))
  ref = S.generate(single, tokens[:, :9], pos[:, :9], pos[:, 9:], S.row_keys(0, 8),
                   sampling=S.SamplingConfig(1.0, 20, None), return_logits=True)

  mesh, rules = sh.make_mesh(shape), sh.RULES[name]
  model = sh.shard_model(lras.create(CFG, seed=2), mesh, rules)
  batch = sh.batch_sharding(mesh, rules, 2)
  ts, ps = jax.device_put(tokens, batch), jax.device_put(pos, batch)
  graphdef, state = nnx.split(model)
  logits = jax.jit(lambda s, t, p: nnx.merge(graphdef, s)(t, p))(state, ts, ps)
  np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-5)
  out = S.generate(model, ts[:, :9], ps[:, :9], ps[:, 9:], S.row_keys(0, 8),
                   sampling=S.SamplingConfig(1.0, 20, None), return_logits=True)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
  np.testing.assert_allclose(np.asarray(out.logits), np.asarray(ref.logits), atol=1e-5)


@needs8
def test_rules_place_parameters():
  mesh = sh.make_mesh({"data": 2, "model": 4})
  model = sh.shard_model(lras.create(CFG), mesh, sh.RULES["tp"])
  assert model.blocks[0].attn.qkv[...].sharding.spec == jax.sharding.PartitionSpec(
      None, None, "model", None)
  assert model.lm_head.kernel[...].sharding.spec == jax.sharding.PartitionSpec(None, "model")
  mesh = sh.make_mesh({"fsdp": -1})
  model = sh.shard_model(lras.create(CFG), mesh, sh.RULES["fsdp"])
  assert model.blocks[1].mlp.fc.kernel[...].sharding.spec == jax.sharding.PartitionSpec("fsdp", None)


def test_indivisible_dim_is_replicated():
  mesh = sh.make_mesh({"model": 1}, jax.devices()[:1])
  spec = sh.spec_for(("heads",), (5,), mesh, {"heads": "model"})
  assert spec == jax.sharding.PartitionSpec("model")
  if jax.device_count() >= 2:
    mesh = sh.make_mesh({"model": 2}, jax.devices()[:2])
    assert sh.spec_for(("heads",), (5,), mesh, {"heads": "model"}) == jax.sharding.PartitionSpec(None)


def test_bad_mesh_shapes():
  with pytest.raises(ValueError, match="at most one"):
    sh.make_mesh({"a": -1, "b": -1})
  with pytest.raises(ValueError, match="needs"):
    sh.make_mesh({"a": jax.device_count() + 1})
