"""Sampler: original filter order, per-row keys, forced tokens, decode == full forward."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spelke_jax.inference import sampling as S
from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig

CFG = LRASConfig(vocab_size=97, block_size=64, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def model():
  return lras.create(CFG, seed=1)


def _prompts(b, p, n, seed=0):
  rng = np.random.default_rng(seed)
  tokens = jnp.asarray(rng.integers(0, CFG.vocab_size, (b, p)), jnp.int32)
  pos = jnp.asarray(np.stack([rng.permutation(CFG.block_size)[:p + n] for _ in range(b)]), jnp.int32)
  return tokens, pos[:, :p], pos[:, p:]


def _reference_filter(logits, temp, top_k, top_p):
  """numpy restatement of LRAS.sample_logits' filters (blacklist omitted)."""
  x = logits.astype(np.float64) / temp
  if top_k is not None:
    kth = np.sort(x, axis=-1)[..., -top_k][..., None]
    x = np.where(x < kth, -np.inf, x)
  if top_p is not None:
    order = np.argsort(-x, axis=-1, kind="stable")
    sx = np.take_along_axis(x, order, -1)
    p = np.exp(sx - sx.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    remove = np.cumsum(p, -1) > top_p
    remove[..., 1:] = remove[..., :-1].copy()
    remove[..., 0] = False
    back = np.zeros_like(remove)
    np.put_along_axis(back, order, remove, -1)
    x = np.where(back, -np.inf, x)
  return x


@pytest.mark.parametrize("temp,top_k,top_p", [(1.0, None, None), (0.7, 10, None),
                                              (1.0, None, 0.9), (1.3, 50, 0.5)])
def test_filters_match_reference(temp, top_k, top_p):
  logits = np.random.default_rng(1).normal(size=(4, 300)).astype(np.float32) * 3
  got = np.asarray(S.filter_logits(jnp.asarray(logits), S.SamplingConfig(temp, top_k, top_p)))
  want = _reference_filter(logits, temp, top_k, top_p)
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  finite = np.isfinite(want)
  np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6)


def test_blacklist_and_argmax():
  logits = jnp.asarray([[0.0, 5.0, 1.0], [3.0, 2.0, 1.0]])
  bl = jnp.asarray([False, True, False])
  tok = S.sample_logits(logits, None, S.SamplingConfig(temperature=0.0), blacklist=bl)
  np.testing.assert_array_equal(np.asarray(tok), [2, 0])


def test_uniform_replay_is_inverse_cdf():
  logits = jnp.log(jnp.asarray([[0.2, 0.5, 0.3]] * 3))
  u = jnp.asarray([0.1, 0.69, 0.71])
  tok = S.sample_logits(logits, None, S.SamplingConfig(), uniform=u)
  np.testing.assert_array_equal(np.asarray(tok), [0, 1, 2])


def test_sampling_follows_the_distribution():
  logits = jnp.log(jnp.asarray([[0.1, 0.6, 0.3]]))
  keys = jax.random.split(jax.random.key(0), 4000)
  toks = jax.vmap(lambda k: S.sample_logits(logits, k[None], S.SamplingConfig())[0])(keys)
  freq = np.bincount(np.asarray(toks), minlength=3) / 4000
  np.testing.assert_allclose(freq, [0.1, 0.6, 0.3], atol=0.03)


def test_batched_equals_row_by_row(model):
  tokens, pos, new_pos = _prompts(4, 9, 7)
  keys = S.row_keys(11, 4)
  sc = S.SamplingConfig(1.0, 30, 0.95)
  batch = S.generate(model, tokens, pos, new_pos, keys, sampling=sc)
  for r in range(4):
    row = S.generate(model, tokens[r:r + 1], pos[r:r + 1], new_pos[r:r + 1], keys[r:r + 1],
                     sampling=sc)
    np.testing.assert_array_equal(np.asarray(row.tokens), np.asarray(batch.tokens[r:r + 1]))


def test_decode_logits_equal_full_forward(model):
  tokens, pos, new_pos = _prompts(3, 8, 6, seed=2)
  out = S.generate(model, tokens, pos, new_pos, S.row_keys(0, 3), sampling=S.SamplingConfig(),
                   return_logits=True, cache_size=20)
  seq = jnp.concatenate([tokens, out.tokens], axis=1)
  full = model(seq, jnp.concatenate([pos, new_pos], axis=1))
  np.testing.assert_allclose(np.asarray(out.logits), np.asarray(full[:, 7:13]), atol=2e-5)
  assert int(out.cache.index) == 14 and out.cache.size == 20


def test_greedy_equals_stepwise_argmax(model):
  tokens, pos, new_pos = _prompts(2, 5, 5, seed=3)
  out = S.generate(model, tokens, pos, new_pos, S.row_keys(0, 2),
                   sampling=S.SamplingConfig(temperature=0.0))
  seq = tokens
  for i in range(5):
    nxt = jnp.argmax(model(seq, jnp.concatenate([pos, new_pos[:, :i]], 1))[:, -1], -1)
    np.testing.assert_array_equal(np.asarray(out.tokens[:, i]), np.asarray(nxt))
    seq = jnp.concatenate([seq, nxt[:, None].astype(jnp.int32)], 1)


def test_forced_tokens_and_step_blacklist(model):
  tokens, pos, new_pos = _prompts(2, 5, 10, seed=4)
  forced = jnp.full((2, 10), 42, jnp.int32)
  mask = jnp.zeros((2, 10), bool).at[:, ::5].set(True)  # pointer slots every 5th token
  blacklist = jnp.ones((CFG.vocab_size,), bool).at[7].set(False)  # only token 7 allowed...
  steps = jnp.zeros((10,), bool).at[1].set(True)  # ...and only at step 1
  out = S.generate(model, tokens, pos, new_pos, S.row_keys(5, 2), sampling=S.SamplingConfig(),
                   forced_tokens=forced, forced_mask=mask, blacklist=blacklist,
                   blacklist_steps=steps)
  t = np.asarray(out.tokens)
  assert (t[:, ::5] == 42).all()
  assert (t[:, 1] == 7).all()
  assert not (t[:, 2:5] == 7).all()


def test_cache_too_small_is_an_error(model):
  tokens, pos, new_pos = _prompts(1, 5, 5)
  with pytest.raises(ValueError, match="cache_size"):
    S.generate(model, tokens, pos, new_pos, S.row_keys(0, 1), sampling=S.SamplingConfig(),
               cache_size=8)
