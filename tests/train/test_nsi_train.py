"""NSI trainer: one train step equal on 1 and 8 devices, the loss falls, image-side-only
clipping, warmup/plateau learning rate, train -> resume -> eval from the config."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from spelke_jax import sharding as sh
from spelke_jax.data import clevrtex, nsi_standin
from spelke_jax.train import nsi as trainer

MODEL = dict(vit=dict(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                      mlp_ratio=2.0, resize_size=32, crop_size=32),
             num_iterations=2, num_slots=4, slot_dim=16, mlp_hidden_size=16, embed_dim=8,
             decoder_hidden=32, decoder_layers=2, program_blocks=1, program_d_model=16,
             program_heads=2, num_materials=5)
STANDIN = dict(dir="", seed=1, resolution=32, num_train=16, num_val=8, num_test=8,
               num_materials=5, min_objects=2, max_objects=4)


def _config(**kw):
  import configs.nsi_clevrtex as cfg_file  # pylint: disable=g-import-not-at-top
  c = cfg_file.get_config()
  c.model = ml_collections.ConfigDict(MODEL)
  c.standin = ml_collections.ConfigDict(STANDIN)
  c.batch_size = 8
  c.num_epochs = 1
  c.warmup_steps = 2
  c.log_every = 1
  c.eval_batch_size = 8
  c.num_figures = 2
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
  root = nsi_standin.write_standin(tmp_path_factory.mktemp("nsi") / "d",
                                   **{k: v for k, v in STANDIN.items() if k != "dir"})
  return clevrtex.CLEVRTexSplit(root, "train").batch(np.arange(8))


def _run_steps(config, batch, devices, n):
  mesh = sh.make_mesh({"data": len(devices)}, devices)
  model = trainer.build_model(config)
  optimizer = trainer.make_optimizer(model, config)
  model.train()
  graphdef, state = nnx.split((model, optimizer))
  state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  put = lambda x: jax.device_put(x, sh.batch_sharding(mesh, sh.RULES["dp"], np.ndim(x)))
  step = trainer.make_train_step(graphdef, trainer.model_config(config), config.grad_clip)
  losses = []
  for i in range(n):
    state, metrics = step(state, put(batch["images"]), put(batch["programs"]),
                          put(batch["lengths"]), np.float32(trainer.learning_rate(i, config, 1.0)),
                          jax.random.key(i))
    losses.append(float(metrics["loss"]))
  return state, losses


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_train_step_equal_on_1_and_8_devices(batch):
  config = _config()
  (s1, l1), (s8, l8) = (_run_steps(config, batch, d, 2)
                        for d in (jax.devices()[:1], jax.devices()))
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  a = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(s1)}
  b = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(s8)}
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=str(k))


def test_a_few_steps_reduce_the_loss(batch):
  _, losses = _run_steps(_config(lr=2e-3), batch, jax.devices()[:1], 12)
  assert losses[-1] < 0.7 * losses[0], losses


def test_clipping_touches_the_image_side_only():
  g = nnx.State({"slot_attn": {"w": jnp.full((4,), 3.0)}, "decoder": {"w": jnp.full((4,), 4.0)},
                 "image_head": {"w": jnp.zeros((2,))},
                 "program_encoder": {"w": jnp.full((3,), 100.0)}})
  out, norm = trainer.clip_image_side(g, 1.0)
  assert float(norm) == pytest.approx(10.0)
  np.testing.assert_allclose(out["slot_attn"]["w"], 3.0 / (10 + 1e-6), rtol=1e-6)
  np.testing.assert_allclose(out["decoder"]["w"], 4.0 / (10 + 1e-6), rtol=1e-6)
  np.testing.assert_array_equal(out["program_encoder"]["w"], 100.0)
  small, _ = trainer.clip_image_side(nnx.State({"decoder": {"w": jnp.full((1,), 0.5)}}), 1.0)
  np.testing.assert_array_equal(small["decoder"]["w"], 0.5)


def test_learning_rate_warmup_and_decay():
  c = _config(lr=1e-3, warmup_steps=4)
  assert [trainer.learning_rate(s, c, 1.0) for s in range(6)] == pytest.approx(
      [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
  assert trainer.learning_rate(10, c, 0.25) == pytest.approx(2.5e-4)


def test_train_resume_eval_and_vocabulary_check(tmp_path):
  wd = tmp_path / "run"
  trainer.train(_config(), wd)
  rows = [json.loads(l) for l in (wd / "train_metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
  trainer.train(_config(num_epochs=2), wd)             # resumes after epoch 1
  rows = [json.loads(l) for l in (wd / "train_metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]
  val = [json.loads(l) for l in (wd / "val_metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in val] == [1, 2]
  saved = json.loads((wd / "eval_test" / "metrics.json").read_text())
  assert saved["num"] == 8 and 0 <= saved["img2schema_R@1"] <= 1
  out = tmp_path / "eval"
  m = trainer.evaluate(_config(mode="eval", checkpoint=str(wd), eval_best=False,
                               standin={**STANDIN, "dir": str(wd / "nsi_standin")}), out)
  assert json.loads((out / "metrics.json").read_text())["schema2img_R@5"] == m["schema2img_R@5"]
  assert (out / "slot_masks.png").exists() and (out / "slot_attention.png").exists()
  with pytest.raises(ValueError, match="num_materials: checkpoint 5 != config 6"):
    trainer.evaluate(_config(mode="eval", checkpoint=str(wd),
                             model={**MODEL, "num_materials": 6}), tmp_path / "bad")
  with pytest.raises(clevrtex.DatasetError, match="material vocabulary has 4"):
    trainer.train(_config(model={**MODEL, "num_materials": 4}), tmp_path / "bad2")
