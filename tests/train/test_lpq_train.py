"""LPQ trainer: the loss falls (rgb, flow), STE gradients, LFQ entropy terms, resume, export."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import train_lpq_synth
from spelke_jax.convert.load import load_torch
from spelke_jax.models import lpq as lpq_lib
from spelke_jax.train import lpq as trainer

TINY_ENC = (("ResBlock", 8, 8, 16, 1, 1, 0),)
TINY_DEC = (("ResBlock", 8, 8, 16, 3, 1, 1), ("Upsample", 8, 4), ("ResBlock", 4, 4, 8, 3, 1, 1),
            ("Upsample", 4, 4))


def _config(kind="rgb", **kw):
  c = train_lpq_synth.get_config(kind)
  c.model.vocab_size = 64
  c.model.encoder_blocks = TINY_ENC
  c.model.decoder_blocks = TINY_DEC
  c.data.resolution = 32
  c.data.crop = 16
  c.data.num_eval = 4
  c.data.flow_aug.max_mag = 10.0
  c.batch_size = 8
  c.num_steps = 4
  c.warmup_steps = 1
  c.lr = 1e-2
  c.log_every = 1
  c.checkpoint_every = 2
  c.eval_batch_size = 4
  c.eval_poke_magnitudes = (5.0,)
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.mark.parametrize("kind", ["rgb", "flow"])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(kind):
  config = _config(kind, lr=3e-2)
  batch = next(trainer.train_batches(config, 0))
  assert batch.shape == (8, 16, 16, 3 if kind == "rgb" else 2)
  model = trainer.build_model(config)
  optimizer = trainer.make_optimizer(model, config)
  graphdef, state = nnx.split((model, optimizer))
  step = trainer.make_train_step(graphdef, kind, trainer.loss_settings(config))
  losses = []
  for _ in range(12):
    state, metrics = step(state, jnp.asarray(batch))
    losses.append(float(metrics["mse"]))
  assert np.isfinite(losses).all()
  assert min(losses[-3:]) < 0.8 * losses[0], losses


def test_ste_gradients_reach_the_encoder_and_match_eval_forward():
  config = _config("flow")
  model = trainer.build_model(config)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 2)), jnp.float32)
  y, aux = model.train_forward(x)
  y_eval, idx = model(x)
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_eval), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(aux["indices"]), np.asarray(idx))
  grads = nnx.grad(lambda m: jnp.mean((m.train_forward(x)[0] - x) ** 2))(model)
  for g in (grads.patch_conv.kernel, grads.encoder_blocks[0].conv1.kernel,
            grads.quantizer.project_in.kernel):
    assert float(jnp.abs(g[...]).max()) > 0


def test_lfq_entropy_terms_follow_the_formula():
  """Per-sample entropy of the full-codebook softmax equals the sum of per-bit binary
  entropies (the softmax factorises); the codebook entropy of one repeated token is its own."""
  q = lpq_lib.LFQ(6, 6, rngs=nnx.Rngs(0))
  z = jnp.asarray(np.random.default_rng(1).normal(size=(5, 7, 6)), jnp.float32)
  _, idx, aux = q.train_quantize(z, inv_temperature=3.0, diversity_gamma=0.5)
  p = q.preact(z)
  x = p / jnp.linalg.norm(p, axis=-1, keepdims=True)
  pb = jax.nn.sigmoid(4 * 3.0 * x / math.sqrt(6))
  hb = -(pb * jnp.log(pb) + (1 - pb) * jnp.log(1 - pb))
  np.testing.assert_allclose(float(aux["per_sample_entropy"]), float(hb.sum(-1).mean()),
                             rtol=2e-3)
  assert float(aux["codebook_entropy"]) >= float(aux["per_sample_entropy"]) - 1e-5
  np.testing.assert_allclose(float(aux["entropy_aux_loss"]), float(
      aux["per_sample_entropy"] - 0.5 * aux["codebook_entropy"]), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(q.indices(z)))
  unit = q.unit_codes(idx)
  np.testing.assert_allclose(float(aux["commit_loss"]), float(jnp.mean((x - unit) ** 2)),
                             rtol=1e-5)
  one = jnp.broadcast_to(z[:1, :1], (4, 1, 6))
  _, _, aux1 = q.train_quantize(one, inv_temperature=3.0)
  np.testing.assert_allclose(float(aux1["codebook_entropy"]),
                             float(aux1["per_sample_entropy"]), rtol=1e-4)


def test_train_resume_and_export(tmp_path):
  config = _config("flow", num_steps=2, export=False)
  trainer.run(config, tmp_path)
  ckpt_dir = tmp_path / "checkpoints"
  assert sorted(p.name for p in ckpt_dir.iterdir() if p.name.isdigit()) == ["2"]
  # Resume: continues at the saved step (2 -> 4), not from scratch.
  config = _config("flow", num_steps=4)
  trainer.run(config, tmp_path)
  rows = [json.loads(l) for l in (tmp_path / "train_metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  # Export: the .pt loads with the converter and gives the same indices; flow table + metrics.
  model = trainer.build_model(config)
  assert trainer.restore_weights(tmp_path, model, config) == 4
  loaded = load_torch(tmp_path / "export" / "flow_quantizer.pt", "lpq")
  assert loaded.config == model.config and loaded.config.kind == "flow"
  flow = np.random.default_rng(0).normal(scale=8.0, size=(2, 32, 32, 2)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(lpq_lib.encode_flow(loaded, flow)),
                                np.asarray(lpq_lib.encode_flow(model, flow)))
  table = np.load(tmp_path / "export" / "flow_table.npz")
  assert table["vectors"].shape == (64, 4, 4, 2)
  np.testing.assert_array_equal(table["token_ids"], np.arange(64))
  # Zero flow maps to the exported no-motion codes.
  zero = np.unique(np.asarray(lpq_lib.encode_flow(loaded, np.zeros((1, 32, 32, 2), np.float32))))
  np.testing.assert_array_equal(zero, table["no_motion_codes"])
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  assert metrics["kind"] == "flow" and metrics["no_motion_codes"] == zero.tolist()
  assert np.isfinite(metrics["epe_px"]) and metrics["codes_used"] >= 1


def test_rgb_eval_mode_exports_a_loadable_tokenizer(tmp_path):
  config = _config("rgb", num_steps=1, export=False)
  trainer.run(config, tmp_path / "train")
  config = _config("rgb", mode="eval", checkpoint=str(tmp_path / "train"))
  res = trainer.run(config, tmp_path / "eval")
  assert res["step"] == 1 and np.isfinite(res["psnr_db"])
  loaded = load_torch(tmp_path / "eval" / "export" / "rgb_quantizer.pt", "lpq")
  model = trainer.build_model(config)
  trainer.restore_weights(tmp_path / "train", model, config)
  img = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
  np.testing.assert_array_equal(np.asarray(lpq_lib.encode_image(loaded, img)),
                                np.asarray(lpq_lib.encode_image(model, img)))


def test_flow_augmentation_covers_poke_magnitudes():
  config = train_lpq_synth.get_config("flow")
  rng = np.random.default_rng(0)
  flow = np.zeros((64, 64, 64, 2), np.float32)
  out = trainer.augment_flow(flow, rng, config.data.flow_aug)
  mag = np.linalg.norm(out, axis=-1)
  assert mag.max() > 20 and mag.max() <= config.data.flow_aug.max_mag + 1e-4
  assert (mag == 0).mean() > 0.3          # zero flow stays exactly zero around the patches
