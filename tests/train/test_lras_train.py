"""LRAS trainer: sequence layout, probe-like flow order, loss weights, loss falls, export."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from spelke_jax.data import synthetic
from spelke_jax.inference import camera, prompt
from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig, compact_layout
from spelke_jax.train import lras as trainer

CFG = LRASConfig(n_layer=1, n_head=2, n_embd=32, **compact_layout(16, 16, num_patches=16))


def _codes(seed, b=2):
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.integers(0, 16, (b, 8, 8)), jnp.int32),
          jnp.asarray(rng.integers(0, 16, (b, 8, 8)), jnp.int32))


def test_sequences_match_the_prompt_layout():
  rgb, flow = _codes(0)
  moving = jnp.zeros((2, 16), bool)
  tokens, positions, weights = trainer.make_sequences(rgb, flow, moving, jax.random.key(0), CFG,
                                                      0.0, 0.25)
  t, p = np.asarray(tokens), np.asarray(positions)
  assert t.shape == (2, 2 * 16 * 5 + 8) == p.shape
  # Rows of 5: the pointer then its 4 codes, at 5*patch + j; every patch exactly once.
  for row, pos, start, ptr0, val0, pos0 in ((t[0, :80], p[0, :80], 0, *CFG.rgb_patch_0_idx_range[:1],
                                             CFG.rgb_range[0], CFG.frame_0_rgb_pos_range[0]),
                                            (t[0, 88:], p[0, 88:], 88, CFG.flow_patch_idx_range[0],
                                             CFG.flow_range[0], CFG.flow_pos_range[0])):
    rows, prow = row.reshape(16, 5), pos.reshape(16, 5)
    patches = rows[:, 0] - ptr0
    assert sorted(patches.tolist()) == list(range(16))
    np.testing.assert_array_equal(prow, pos0 + 5 * patches[:, None] + np.arange(5))
    codes = rgb if ptr0 == CFG.rgb_patch_0_idx_range[0] else flow
    ref = prompt.patchify(np.asarray(codes[0]), 2)
    np.testing.assert_array_equal(rows[:, 1:] - val0, ref[patches])
  cam_tok, cam_pos = camera.campose_tokens(camera.IDENTITY_POSE, CFG)
  np.testing.assert_array_equal(t[0, 80:88], cam_tok)
  np.testing.assert_array_equal(p[0, 80:88], cam_pos)
  # Weights: 0 for pointer and camera targets, 1 for flow codes, 0.25 for frame-0 codes.
  w, tgt = np.asarray(weights[0]), t[0, 1:]
  is_ptr = (tgt >= CFG.rgb_patch_0_idx_range[0]) & (tgt < CFG.rgb_patch_0_idx_range[1]) | (
      (tgt >= CFG.flow_patch_idx_range[0]) & (tgt < CFG.flow_patch_idx_range[1]))
  assert (w[is_ptr] == 0).all() and (w[79:87] == 0).all()  # targets t[80:88] = camera
  flow_code = (tgt >= CFG.flow_range[0]) & (tgt < CFG.flow_range[1])
  assert (w[flow_code] == 1).all() and np.allclose(w[~flow_code & ~is_ptr & (w > 0)], 0.25)


def test_probe_order_puts_corners_then_a_moving_patch_first():
  moving = np.zeros((16,), bool)
  moving[[5, 6]] = True
  order = np.asarray(trainer.flow_order(jax.random.key(3), jnp.asarray(moving), 4, 4, 1.0))
  np.testing.assert_array_equal(order[:4], [3, 0, 12, 15])
  assert order[4] in (5, 6) and sorted(order.tolist()) == list(range(16))
  plain = np.asarray(trainer.flow_order(jax.random.key(3), jnp.asarray(moving), 4, 4, 0.0))
  assert not np.array_equal(plain[:4], [3, 0, 12, 15])


def test_moving_patches():
  flow = np.zeros((1, 16, 16, 2), np.float32)
  flow[0, 8:16, 0:8] = (2.0, 0.0)
  np.testing.assert_array_equal(np.asarray(trainer.moving_patches(jnp.asarray(flow), 8)),
                                [[False, False, True, False]])


def test_code_target_steps_are_the_weighted_targets():
  """The restricted loss's static steps are exactly the targets the weights select."""
  rgb, flow = _codes(1)
  tokens, _, weights = trainer.make_sequences(rgb, flow, jnp.ones((2, 16), bool),
                                              jax.random.key(3), CFG, 0.5, 0.25)
  rgb_steps, flow_steps = trainer.code_target_steps(16, CFG.patch_size)
  w = np.asarray(weights)
  np.testing.assert_array_equal(np.flatnonzero(w[0] == 1.0), flow_steps)
  np.testing.assert_array_equal(np.flatnonzero(w[0] == 0.25), rgb_steps)
  tgt = np.asarray(tokens)[:, 1:]
  assert ((tgt[:, flow_steps] >= CFG.flow_range[0]) & (tgt[:, flow_steps] < CFG.flow_range[1])).all()
  assert ((tgt[:, rgb_steps] >= CFG.rgb_range[0]) & (tgt[:, rgb_steps] < CFG.rgb_range[1])).all()


def test_restricted_ce_is_the_softmax_over_the_target_range():
  model = lras.create(CFG, seed=1)
  rgb, flow = _codes(2)
  tokens, positions, _ = trainer.make_sequences(rgb, flow, jnp.zeros((2, 16), bool),
                                                jax.random.key(0), CFG, 0.0, 0.1)
  x = model.embed(tokens[:, :-1], positions[:, :-1])
  for block in model.blocks:
    x, _, _ = block(x)
  _, flow_steps = trainer.code_target_steps(16, CFG.patch_size)
  ce = trainer.restricted_ce(model, x, tokens[:, 1:], flow_steps, CFG.flow_range)
  full = np.asarray(model(tokens[:, :-1], positions[:, :-1]), np.float64)[:, flow_steps]
  lo, hi = CFG.flow_range
  sub = full[..., lo:hi]
  tgt = np.asarray(tokens)[:, 1:][:, flow_steps] - lo
  ref = (np.log(np.exp(sub - sub.max(-1, keepdims=True)).sum(-1)) + sub.max(-1)
         - np.take_along_axis(sub, tgt[..., None], -1)[..., 0])
  np.testing.assert_allclose(np.asarray(ce), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("restricted", [False, True])
def test_a_few_steps_reduce_the_loss(restricted):
  from spelke_jax.inference import spelkenet_model  # pylint: disable=g-import-not-at-top
  _, rgb_lpq, flow_lpq, _, _ = spelkenet_model.build_tiny(seed=0)
  cfg = LRASConfig(n_layer=1, n_head=2, n_embd=32, **compact_layout(256, 256, num_patches=16))
  config = ml_collections.ConfigDict(dict(probe_order_prob=0.5, frame0_loss_weight=0.1,
                                          restricted_softmax=restricted))
  model = lras.create(cfg, seed=0)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  graphdef, state = nnx.split((model, optimizer))
  step = trainer.make_train_step(graphdef, rgb_lpq, flow_lpq, cfg, config)
  scenes = [synthetic.make_scene(synthetic.scene_seed(0, i, "file"), 32) for i in range(4)]
  frames = jnp.asarray(np.stack([s.frame0 for s in scenes]))
  flow = jnp.asarray(np.stack([s.flow for s in scenes]))
  losses = []
  for i in range(8):
    state, metrics = step(state, frames, flow, jax.random.key(0))  # same sequences every step
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses


def test_train_stop_after_resume_and_export_from_converted_tokenizers(tmp_path):
  """The trainer on converted (Orbax) tokenizers: stop_after ends a run early with a checkpoint
  and an export in the original layout; a rerun resumes from that checkpoint."""
  import json  # pylint: disable=g-import-not-at-top
  from spelke_jax import config_files  # pylint: disable=g-import-not-at-top
  from spelke_jax.convert.load import load_torch  # pylint: disable=g-import-not-at-top
  from spelke_jax.convert.save import save_converted  # pylint: disable=g-import-not-at-top
  from spelke_jax.inference import spelkenet_model  # pylint: disable=g-import-not-at-top
  _, rgb_lpq, flow_lpq, table, no_motion = spelkenet_model.build_tiny(seed=0)
  save_converted(rgb_lpq, "lpq", tmp_path / "rgb")
  save_converted(flow_lpq, "lpq", tmp_path / "flow")
  spelkenet_model.write_flow_table(tmp_path / "table.npz", table, no_motion)
  c = config_files.load("configs/train_lras_synth.py")
  c.model.update(n_layer=1, n_head=2, n_embd=32)
  c.tokenizers.update(rgb=str(tmp_path / "rgb"), flow=str(tmp_path / "flow"),
                      flow_table=str(tmp_path / "table.npz"))
  c.data.resolution = 32
  c.batch_size = 8
  c.num_steps = 6
  c.stop_after = 2
  c.log_every = 1
  c.checkpoint_every = 4
  wd = tmp_path / "run"
  trainer.train(c, wd)
  rows = [json.loads(l) for l in (wd / "train_metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2]
  assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
  exported = load_torch(wd / "export" / "rgb_quantizer.pt", "lpq")
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(rgb_lpq)),
                            nnx.to_flat_state(nnx.state(exported))):
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))
  model = load_torch(wd / "export" / "lras.pt", "lras")
  assert model.config.n_embd == 32
  c.stop_after = 0
  trainer.train(c, wd)  # resumes at step 2 and runs to num_steps
  rows = [json.loads(l) for l in (wd / "train_metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
