"""LRAS: fixture parity, cache paths equal the full forward, released sizes."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spelke_jax.models import lras
from spelke_jax.models import lras_config
from tests.fixture_packs import assert_pack_passes, pack_params

SMALL = lras_config.LRASConfig(vocab_size=101, block_size=96, n_layer=2, n_head=4, n_embd=32)


@pytest.mark.parametrize("pack", pack_params("lras"))
def test_fixture_parity(pack):
  assert_pack_passes(pack)


def _inputs(b, t, cfg=SMALL, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, t)), jnp.int32)
  positions = jnp.asarray(np.stack([rng.permutation(cfg.block_size)[:t] for _ in range(b)]),
                          jnp.int32)
  return tokens, positions


def test_prefill_then_decode_equals_full_forward():
  model = lras.create(SMALL, seed=3)
  tokens, positions = _inputs(2, 20)
  full = np.asarray(model(tokens, positions))
  cache = lras.init_cache(SMALL, 2, 20)
  last, cache = model.prefill(tokens[:, :12], positions[:, :12], cache, num_logits=3)
  np.testing.assert_allclose(np.asarray(last), full[:, 9:12], atol=2e-5)
  for t in range(12, 20):
    logits, cache = model.extend(tokens[:, t:t + 1], positions[:, t:t + 1], cache)
    np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, t], atol=2e-5)
  assert int(cache.index) == 20


def test_appending_blocks_is_causal_and_equals_full_forward():
  """The parallel decoding stage appends blocks of several tokens to an existing cache."""
  model = lras.create(SMALL, seed=4)
  tokens, positions = _inputs(3, 30)
  full = np.asarray(model(tokens, positions))
  cache = lras.init_cache(SMALL, 3, 40)  # larger than needed: unused slots must not leak in
  _, cache = model.prefill(tokens[:, :10], positions[:, :10], cache)
  for start, stop in ((10, 17), (17, 25), (25, 30)):
    logits, cache = model.extend(tokens[:, start:stop], positions[:, start:stop], cache)
    np.testing.assert_allclose(np.asarray(logits), full[:, start:stop], atol=2e-5)


def test_cache_prefix_shared_across_rows():
  model = lras.create(SMALL, seed=5)
  tokens, positions = _inputs(1, 16)
  cache = lras.init_cache(SMALL, 1, 20)
  _, cache = model.prefill(tokens[:, :12], positions[:, :12], cache)
  wide = lras.broadcast_cache(cache, 4)
  nxt = jnp.asarray([[1], [2], [3], [4]], jnp.int32)
  logits, _ = model.extend(nxt, jnp.broadcast_to(positions[:, 12:13], (4, 1)), wide)
  for r in range(4):
    seq = jnp.concatenate([tokens[:, :12], nxt[r:r + 1]], axis=1)
    ref = model(seq, positions[:, :13])[:, -1]
    np.testing.assert_allclose(np.asarray(logits[r, 0]), np.asarray(ref[0]), atol=2e-5)


def test_positions_are_explicit_not_order():
  model = lras.create(SMALL, seed=6)
  tokens, positions = _inputs(1, 8)
  a = model(tokens, positions)
  b = model(tokens, positions.at[0, 3].set((positions[0, 3] + 1) % SMALL.block_size))
  assert not np.allclose(np.asarray(a[:, 3:]), np.asarray(b[:, 3:]))
  np.testing.assert_array_equal(np.asarray(a[:, :3]), np.asarray(b[:, :3]))  # causal


def _num_params(cfg) -> int:
  _, state = nnx.split(lras.abstract(cfg))
  return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(state))


@pytest.mark.parametrize("preset,total", [("1b", 1_022_465_280), ("7b", 7_449_382_912),
                                          ("3d_7b", 7_088_640_000)])
def test_released_sizes(preset, total):
  assert _num_params(lras_config.PRESETS[preset]()) == total


def test_bf16_policy_dtypes():
  cfg = SMALL.replace(param_dtype="bfloat16", dtype="bfloat16")
  model = lras.create(cfg)
  assert model.blocks[0].attn.qkv[...].dtype == jnp.bfloat16
  tokens, positions = _inputs(1, 5)
  assert model(tokens, positions).dtype == jnp.bfloat16


def test_bad_config_is_rejected():
  with pytest.raises(ValueError, match="not divisible"):
    lras_config.LRASConfig(n_embd=30, n_head=4)
  with pytest.raises(ValueError, match="attention_impl"):
    lras_config.LRASConfig(attention_impl="flash")


def test_logical_axes_on_every_param():
  _, state = nnx.split(lras.abstract(SMALL))
  for path, var in nnx.to_flat_state(state):
    axes = var.get_metadata().get("logical_axes")
    assert axes is not None and len(axes) == len(var.shape), path


@pytest.mark.parametrize("num_patches,patch_size,grid", [(1024, 4, 32), (36, 4, 6), (64, 2, 8)])
def test_patch_grid(num_patches, patch_size, grid):
  released = lras_config.lras_1b()
  assert (released.patches_per_frame, released.patch_grid) == (1024, 32)
  cfg = lras_config.LRASConfig(**lras_config.compact_layout(8, 8, num_patches, patch_size))
  assert (cfg.patches_per_frame, cfg.patch_grid) == (num_patches, grid)


def test_patch_grid_not_square_raises():
  cfg = lras_config.LRASConfig(**lras_config.compact_layout(8, 8, 24))
  with pytest.raises(ValueError, match="24 patches per frame do not make a square grid"):
    _ = cfg.patch_grid
