"""EISEN trainer: one train step equal on 1 and 8 devices; train -> resume -> eval from config."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from spelke_jax import sharding as sh
from spelke_jax.data import synthetic, video_folders
from spelke_jax.evals import matched_miou
from spelke_jax.train import eisen as trainer
from spelke_jax.train import eisen_configs


def _config(**kw):
  c = eisen_configs.base()
  c.model.backbone = "tiny"
  c.model.local_window_size = 5
  c.model.num_affinity_samples = 48
  c.model.min_cc_area = 2
  c.data.resolution = 32
  c.targets.kind = "motion"
  c.batch_size = 8
  c.num_steps = 2
  c.warmup_steps = 2
  c.log_every = 1
  c.checkpoint_every = 2
  c.eval_batch_size = 4
  for k, v in kw.items():
    c[k] = v
  return c


def _batch(n=8):
  scenes = [synthetic.make_scene(synthetic.scene_seed(3, i, "file"), 32) for i in range(n)]
  return {"image": np.stack([s.frame0 for s in scenes]), "flow": np.stack([s.flow for s in scenes])}


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_train_step_equal_on_1_and_8_devices():
  config = _config()
  mcfg = trainer.model_config(config)
  batch = _batch()
  target = trainer.make_targets_fn(config, None)(batch, jax.random.key(0))
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = sh.make_mesh({"data": len(devices)}, devices)
    model = trainer.build_model(config)
    optimizer = trainer.make_optimizer(model, config)
    model.train()
    graphdef, state = nnx.split((model, optimizer))
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    put = lambda x: jax.device_put(x, sh.batch_sharding(mesh, sh.RULES["dp"], np.ndim(x)))
    step = trainer.make_train_step(graphdef, mcfg, 3)
    for i in range(2):
      state, metrics = step(state, put(batch["image"]), put(np.asarray(target)),
                            jax.random.key(i))
    flat = {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}
    results.append((flat, float(metrics["loss"])))
  (a, la), (b, lb) = results
  assert la == pytest.approx(lb, rel=1e-5)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=2e-5, err_msg=str(k))


def test_train_resume_and_eval(tmp_path):
  wd = tmp_path / "run"
  trainer.train(_config(), wd)
  rows = [json.loads(l) for l in (wd / "train_metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
  assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
  trainer.train(_config(num_steps=3), wd)  # resumes at step 2, runs one more
  rows = [json.loads(l) for l in (wd / "train_metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3]
  path = tmp_path / "eval.h5"
  scenes = list(synthetic.generate(7, 4, 32))
  synthetic.write_synthetic_h5(path, scenes)
  m = trainer.evaluate(_config(mode="eval", checkpoint=str(wd), dataset_path=str(path)),
                       tmp_path / "eval")
  saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
  assert saved["num_images"] == 4 and 0 <= saved["mIoU"] <= 1 and m["mIoU"] == saved["mIoU"]
  agent = [r["has_agent"] for r in saved["per_image"]]
  assert agent == [s.agent_id > 0 for _, s in sorted(scenes, key=lambda ks: ks[0])]
  assert saved["num_agent_scenes"] == sum(agent)
  # The dragged object: its id in the source's ids is the scene's dragged instance, and its row
  # holds that object's best IoU (None without an agent).
  src = video_folders.SyntheticH5Source(path)
  by_key = dict(scenes)
  for i, row in enumerate(saved["per_image"]):
    ex, sc = src[i], by_key[row["key"]]
    if sc.agent_id > 0 and sc.dragged_id > 0:
      np.testing.assert_array_equal(ex["ids"] == ex["dragged"], sc.instance_ids == sc.dragged_id)
      assert 0.0 <= row["dragged_IoU"] <= 1.0
    else:
      assert ex["dragged"] == 0 and row["dragged_IoU"] is None
  dragged = [r["dragged_IoU"] for r in saved["per_image"] if r["dragged_IoU"] is not None]
  assert (saved["IoU_dragged_objects"] == pytest.approx(np.mean(dragged)) if dragged
          else np.isnan(saved["IoU_dragged_objects"]))
  assert len(list((tmp_path / "eval" / "figures").glob("*.png"))) == 4
  # Centred segment upsampling scores the same images (the shipped config's choice).
  centred = trainer.evaluate(_config(mode="eval", checkpoint=str(wd), dataset_path=str(path),
                                     segment_upsample="cell_centred"), tmp_path / "centred")
  assert [r["key"] for r in centred["per_image"]] == [r["key"] for r in saved["per_image"]]
  assert 0 <= centred["mIoU"] <= 1


def test_segment_upsampler_names():
  assert trainer.segment_upsampler("nearest") is matched_miou.upsample_nearest
  assert trainer.segment_upsampler("cell_centred") is matched_miou.upsample_cell_centred
  with pytest.raises(ValueError, match="unknown segment_upsample 'bilinear'"):
    trainer.segment_upsampler("bilinear")


def test_bad_configs(tmp_path):
  with pytest.raises(ValueError, match="teacher"):
    trainer.train(_config(targets={"kind": "explain_away"}), tmp_path / "a")
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    trainer.evaluate(_config(mode="eval", checkpoint=str(tmp_path / "none")), tmp_path / "b")


def test_round2_with_a_target_cache(tmp_path):
  """A bootstrapping round computes its teacher's targets once per cached batch, cycles over
  them, resumes the cache and refuses a cache built for other settings."""
  teacher = tmp_path / "round1"
  trainer.train(_config(num_steps=1, checkpoint_every=1), teacher)
  targets = dict(_config().targets.to_dict(), kind="explain_away", min_area=2, cache_batches=2,
                 teacher_runs=1)
  wd = tmp_path / "round2"
  trainer.train(_config(targets=targets, teacher=str(teacher), num_steps=3), wd)
  cache = wd / "target_cache"
  files = sorted(p.name for p in cache.glob("*.npz"))
  assert files == ["00000.npz", "00001.npz"]
  with np.load(cache / "00000.npz") as z:
    assert z["image"].shape == (8, 32, 32, 3) and z["target"].shape == (8, 8, 8)
    assert z["target"].dtype == np.int32 and (z["target"] >= 0).all()
  rows = [json.loads(l) for l in (wd / "train_metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
  with pytest.raises(ValueError, match="other settings"):
    trainer.train(_config(targets=dict(targets, min_area=3), teacher=str(teacher), num_steps=4),
                  wd)


def test_init_from_starts_from_those_weights(tmp_path):
  """--config.init_from: a run starts from another run's weights (lr 0 keeps them exactly);
  without it the same run starts from the random init."""
  trainer.train(_config(num_steps=1, checkpoint_every=1), tmp_path / "source")

  def params(path):
    model = trainer.build_model(_config())
    trainer.restore_weights(path, model, _config())
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}

  trainer.train(_config(num_steps=1, checkpoint_every=1, lr=0.0,
                        init_from=str(tmp_path / "source")), tmp_path / "tuned")
  trainer.train(_config(num_steps=1, checkpoint_every=1, lr=0.0), tmp_path / "scratch")
  src, tuned, scratch = (params(tmp_path / n) for n in ("source", "tuned", "scratch"))
  for k in src:
    np.testing.assert_array_equal(tuned[k], src[k], err_msg=str(k))
  assert any(not np.array_equal(scratch[k], src[k]) for k in src)
