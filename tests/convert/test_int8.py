"""int8 storage of converted checkpoints: the quantizer's bound, exact save/load round trips
(single device and sharded), smaller files, and clear refusals of inconsistent checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spelke_jax import sharding
from spelke_jax.convert import int8
from spelke_jax.convert.load import load_converted, read_meta
from spelke_jax.convert.save import save_converted
from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig

TINY = LRASConfig(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32)


def _flat(model: nnx.Module) -> dict[str, np.ndarray]:
  return {"/".join(str(p) for p in path): np.asarray(var[...])
          for path, var in nnx.to_flat_state(nnx.state(model))}


def _size(folder: Path) -> int:
  return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def tiny_model():
  return lras.create(TINY, seed=5)


def test_quantize_bound_range_and_zero_channels():
  rng = np.random.default_rng(0)
  w = rng.standard_normal((3, 5, 7)).astype(np.float32) * np.linspace(0.01, 10, 7, dtype=np.float32)
  w[..., 2] = 0.0
  q, scale = int8.quantize(w)
  assert q.dtype == np.int8 and scale.dtype == np.float32 and scale.shape == (7,)
  assert q.min() >= -127 and q.max() <= 127
  assert np.all(np.abs(q).reshape(-1, 7).max(axis=0)[[0, 1, 3, 4, 5, 6]] == 127)
  assert scale[2] == 1.0 and not q[..., 2].any()
  back = np.asarray(int8.dequantize(q, scale, jnp.float32))
  assert np.all(np.abs(back - w) <= scale / 2 * (1 + 1e-6))
  with pytest.raises(ValueError, match=">= 2 dims"):
    int8.quantize(np.ones(4, np.float32))
  with pytest.raises(ValueError, match="inf or nan"):
    int8.quantize(np.array([[1.0, np.nan]], np.float32))


def test_int8_round_trip_is_exact_and_smaller(tmp_path, tiny_model):
  want = _flat(tiny_model)
  out = save_converted(tiny_model, "lras", tmp_path / "int8", store_dtype="int8")
  f32 = save_converted(tiny_model, "lras", tmp_path / "f32")
  meta = read_meta(out)
  assert meta["store_dtype"] == "int8"
  assert sorted(meta[int8.META_KEY]) == sorted(k for k, v in want.items() if v.ndim >= 2)
  got = _flat(load_converted(out))
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
    if v.ndim >= 2:
      q, scale = int8.quantize(v)
      np.testing.assert_array_equal(got[k], q.astype(np.float32) * scale, err_msg=k)
      assert np.abs(got[k] - v).max() <= scale.max() / 2 * (1 + 1e-6), k
    else:
      np.testing.assert_array_equal(got[k], v, err_msg=k)
  assert _size(out) < 0.5 * _size(f32)
  # The model's dtype policy still applies: int8 storage, bfloat16 parameters.
  bf16 = load_converted(out, param_dtype="bfloat16", dtype="bfloat16")
  assert bf16.blocks[0].mlp.fc.kernel[...].dtype == jnp.bfloat16
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, TINY.vocab_size, (2, 8)), jnp.int32)
  positions = jnp.tile(jnp.arange(8, dtype=jnp.int32), (2, 1))
  np.testing.assert_allclose(np.asarray(load_converted(out)(tokens, positions)),
                             np.asarray(tiny_model(tokens, positions)), atol=0.05)


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS="
                    "--xla_force_host_platform_device_count=8)")
def test_int8_sharded_load_equals_single_device(tmp_path, tiny_model):
  out = save_converted(tiny_model, "lras", tmp_path / "int8", store_dtype="int8")
  mesh = sharding.make_mesh({"data": 2, "model": 4}, jax.devices()[:8])
  model = load_converted(out, mesh=mesh, rules="tp")
  qkv = model.blocks[0].attn.qkv[...]
  assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, None, "model", None)
  single = _flat(load_converted(out))
  for k, v in _flat(model).items():
    assert v.tobytes() == single[k].tobytes(), k


def test_inconsistent_int8_checkpoints_are_refused(tmp_path, tiny_model):
  out = save_converted(tiny_model, "lras", tmp_path / "int8", store_dtype="int8")
  cfg = out / "config.json"
  meta = json.loads(cfg.read_text())
  cfg.write_text(json.dumps({**meta, int8.META_KEY: meta[int8.META_KEY] + ["blocks/9/mlp/fc/kernel"]}))
  with pytest.raises(ValueError, match="blocks/9/mlp/fc/kernel"):
    load_converted(out)
  cfg.write_text(json.dumps({k: v for k, v in meta.items() if k != int8.META_KEY}))
  with pytest.raises(ValueError, match="int8_variables"):
    load_converted(out)
  with pytest.raises(ValueError, match="int4"):
    save_converted(tiny_model, "lras", tmp_path / "bad", store_dtype="int4")
  assert not (tmp_path / "bad").exists()
  assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_streaming_converter_stores_int8_like_save_converted(tmp_path, tiny_model):
  from spelke_jax.convert.convert import convert_checkpoint  # pylint: disable=g-import-not-at-top
  from tests import torch_files as tf  # pylint: disable=g-import-not-at-top
  from tests.convert.test_convert import export_torch_state_dict, torch_cfg  # pylint: disable=g-import-not-at-top
  params = _flat(tiny_model)
  src = tf.write_torch_checkpoint(tmp_path / "lras.pt", export_torch_state_dict(params, TINY),
                                  cfg=torch_cfg(TINY))
  out = convert_checkpoint(src, tmp_path / "converted", "lras", progress=False, store_dtype="int8")
  ref = save_converted(tiny_model, "lras", tmp_path / "saved", store_dtype="int8")
  assert sorted(read_meta(out)[int8.META_KEY]) == sorted(read_meta(ref)[int8.META_KEY])
  got, want = _flat(load_converted(out)), _flat(load_converted(ref))
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    assert got[k].tobytes() == v.tobytes(), k
  with pytest.raises(ValueError, match="store_dtype 'int4'"):
    convert_checkpoint(src, tmp_path / "bad", "lras", progress=False, store_dtype="int4")
  assert not (tmp_path / "bad").exists()


def test_convert_mode_with_store_dtype_int8(tmp_path):
  from spelke_jax import config_files  # pylint: disable=g-import-not-at-top
  from spelke_jax.convert import run as convert_run  # pylint: disable=g-import-not-at-top
  config = config_files.load("configs/convert.py")
  config.store_dtype = "int8"
  report = convert_run.run(config, tmp_path)
  assert report["smoke_test"]["finite"]
  assert read_meta(tmp_path / "model")["store_dtype"] == "int8"
  assert (tmp_path / "convert_report.json").exists()
