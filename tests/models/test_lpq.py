"""LPQ tokenizers: fixture parity, LFQ bit order, shapes at released sizes, checkpoint mapping."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spelke_jax.convert import lpq_mapping
from spelke_jax.convert.mapping import CONV_OIHW_TO_HWIO, LINEAR, MappingError, plan
from spelke_jax.models import lpq
from spelke_jax.models.lpq_config import LPQConfig, lpq_flow, lpq_rgb
from spelke_jax.convert.load import load_torch
from spelke_jax.convert.mapping import flat_shapes
from tests.fixture_packs import assert_pack_passes, pack_params

@pytest.mark.parametrize("pack", pack_params("lpq_rgb", "lpq_flow"))
def test_fixture_parity(pack):
  assert_pack_passes(pack)


def _tiny(kind="rgb", **kw) -> LPQConfig:
  base = dict(encoder_blocks=(("ResBlock", 8, 8, 16, 1, 1, 0),),
              decoder_blocks=(("ResBlock", 8, 8, 16, 3, 1, 1), ("Upsample", 8, 4),
                              ("ResBlock", 4, 4, 8, 3, 1, 1), ("Upsample", 4, 4)))
  base.update(kw)
  return (lpq_rgb if kind == "rgb" else lpq_flow)(**base)


@pytest.mark.parametrize("kind,bits", [("rgb", 16), ("flow", 15)])
def test_lfq_bits_round_trip(kind, bits):
  q = lpq.LFQ(8, _tiny(kind).codebook_bits)  # zero-initialised projections (no rngs)
  assert q.codebook_bits == bits
  rng = np.random.default_rng(0)
  idx = np.concatenate([[0, 1, 2**bits - 1, 2**(bits - 1)],
                        rng.integers(0, 2**bits, size=500)]).astype(np.int32)
  unit = q.unit_codes(jnp.asarray(idx))
  assert unit.shape == (idx.size, bits)
  np.testing.assert_allclose(np.abs(np.asarray(unit)), 1.0 / np.sqrt(np.float32(bits)), rtol=1e-7)
  back = q.indices_from_preact(unit)
  assert back.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(back), idx)
  # MSB first: 2**(D-1) sets bit 0 only; 1 sets the last bit only.
  b = np.asarray(q.bits(jnp.asarray([2**(bits - 1), 1])))
  assert b[0, 0, 0] and b[0, 0, 1:].sum() == 0
  assert b[1, 0, -1] and b[1, 0, :-1].sum() == 0
  # A pre-activation of exactly 0 gives bit 0; positive gives 1.
  p = np.zeros((2, bits), np.float32)
  p[1, 0] = 1e-30
  np.testing.assert_array_equal(np.asarray(q.indices_from_preact(jnp.asarray(p))),
                                [0, 2**(bits - 1)])


def test_lfq_multiple_codebooks():
  q = lpq.LFQ(8, 8, num_codebooks=2)
  idx = jnp.asarray([[3, 255], [128, 0]], jnp.int32)
  assert q.unit_codes(idx).shape == (2, 16)
  np.testing.assert_array_equal(np.asarray(q.indices_from_preact(q.unit_codes(idx))), idx)


def test_released_shapes_nonsquare():
  """Released-size config, eval_shape only: 160x96 image -> 40x24 codes -> 160x96 image."""
  for cfg, c_in in ((lpq_rgb(), 3), (lpq_flow(), 2)):
    graphdef, state = nnx.split(lpq.abstract(cfg))
    img = jax.ShapeDtypeStruct((2, 96, 160, c_in), jnp.float32)
    idx = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).quantize(x), state, img)
    assert idx.shape == (2, 24, 40) and idx.dtype == jnp.int32
    feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).encode_features(x), state, img)
    assert feats.shape == (2, 24, 40, 512)
    out = jax.eval_shape(lambda s, i: nnx.merge(graphdef, s).decode(i), state, idx)
    assert out.shape == (2, 96, 160, c_in) and out.dtype == jnp.float32
    n = sum(int(np.prod(s)) for s in flat_shapes(nnx.to_pure_dict(state)).values())
    assert n == {"rgb": 39_743_891, "flow": 39_733_521}[cfg.kind]  # the original's counts


def _torch_shape(entry, flax_shape):
  if entry.transform is CONV_OIHW_TO_HWIO:
    kh, kw, i, o = flax_shape
    return (o, i, kh, kw)
  if entry.transform is LINEAR:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def _torch_state(model: lpq.LPQ) -> dict[str, np.ndarray]:
  """The model's parameters in the original's names and layouts (plus quantizer.mask)."""
  flat = {}

  def walk(tree, prefix=""):
    for k, v in tree.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}/")
      else:
        flat[f"{prefix}{k}"] = np.asarray(v)
  walk(nnx.to_pure_dict(nnx.split(model)[1]))
  out = {}
  for e in lpq_mapping.table(model.config).entries:
    a = flat[e.flax_path]
    if e.transform is CONV_OIHW_TO_HWIO:
      a = a.transpose(3, 2, 0, 1)
    elif e.transform is LINEAR:
      a = a.T
    out[e.torch_name] = np.ascontiguousarray(a)
  d = model.config.codebook_bits
  out["quantizer.mask"] = 2 ** np.arange(d - 1, -1, -1, dtype=np.int64)
  return out


@pytest.mark.parametrize("cfg", [_tiny("rgb"), _tiny("flow"), lpq_rgb(), lpq_flow()],
                         ids=["tiny_rgb", "tiny_flow", "rgb_quantizer", "flow_quantizer"])
def test_mapping_reports_missing_key(cfg):
  table = lpq_mapping.table(cfg)
  fshapes = flat_shapes(nnx.to_pure_dict(nnx.split(lpq.abstract(cfg))[1]))
  by_path = {e.flax_path: e for e in table.entries}
  tshapes = {e.torch_name: _torch_shape(e, fshapes[e.flax_path]) for e in table.entries}
  tshapes["quantizer.mask"] = (cfg.codebook_bits,)
  assert len(plan(table, tshapes, fshapes)) == len(fshapes) == len(by_path)
  dropped = f"decoder.{len(cfg.decoder_blocks)}.weight"
  with pytest.raises(MappingError, match=dropped.replace(".", r"\.")):
    plan(table, {k: v for k, v in tshapes.items() if k != dropped}, fshapes)
  with pytest.raises(MappingError, match=r"unexpected key in checkpoint: quantizer\.zero"):
    plan(table, {**tshapes, "quantizer.zero": ()}, fshapes)


def test_no_projection_when_dim_equals_bits():
  """LFQ has no project_in/out when the encoder width equals D (e.g. 16 wide, 16 bits)."""
  cfg = _tiny(encoder_blocks=(("ResBlock", 16, 16, 8, 1, 1, 0),),
              decoder_blocks=(("ResBlock", 16, 16, 8, 3, 1, 1),))
  assert not cfg.has_projections
  names = [e.torch_name for e in lpq_mapping.table(cfg).entries]
  assert not any(n.startswith("quantizer.") for n in names)
  model = lpq.create(cfg)
  idx = model.quantize(jnp.ones((1, 8, 8, 3)))
  assert model.indices_to_codes(idx).shape == (1, 2, 2, 16)


def test_load_round_trip_and_missing_key(tmp_path):
  """A checkpoint written in the original layout (.npz) loads back to the same outputs."""
  cfg = _tiny("flow")
  model = lpq.create(cfg, seed=3)
  state = _torch_state(model)
  path = tmp_path / "lpq.npz"
  np.savez(path, **state)
  loaded = load_torch(path, "lpq", config=cfg.to_dict())
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 24, 2)), jnp.float32)
  np.testing.assert_array_equal(np.asarray(loaded.quantize(x)), np.asarray(model.quantize(x)))
  np.testing.assert_array_equal(np.asarray(loaded.decode(model.quantize(x))),
                                np.asarray(model.decode(model.quantize(x))))
  del state["encoder.2.ln1.bias"]
  np.savez(path, **state)
  with pytest.raises(MappingError, match=r"missing in checkpoint: encoder\.2\.ln1\.bias"):
    load_torch(path, "lpq", config=cfg.to_dict())


def test_jit_matches_eager_and_user_api():
  cfg = _tiny("rgb")
  model = lpq.create(cfg, seed=1)
  img = np.random.default_rng(2).integers(0, 256, (2, 20, 12, 3), dtype=np.uint8)
  graphdef, state = nnx.split(model)
  enc = jax.jit(lambda s, u: lpq.encode_image(nnx.merge(graphdef, s), u))
  dec = jax.jit(lambda s, i: lpq.decode_image(nnx.merge(graphdef, s), i))
  idx = enc(state, img)
  assert idx.shape == (2, 5, 3) and idx.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(idx), np.asarray(lpq.encode_image(model, img)))
  rgb = dec(state, idx)
  assert rgb.shape == (2, 20, 12, 3)
  assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
  with pytest.raises(ValueError, match="rgb tokenizer"):
    lpq.encode_flow(model, np.zeros((1, 8, 8, 2), np.float32))


def test_normalisation_recipes():
  u = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
  mean = np.asarray([0.485, 0.456, 0.406], np.float32)
  std = np.asarray([0.229, 0.224, 0.225], np.float32)
  want = (u.astype(np.float32) / np.float32(255) - mean) / std
  np.testing.assert_array_equal(np.asarray(jax.jit(lpq.normalize_rgb)(u)), want)
  np.testing.assert_allclose(np.asarray(lpq.denormalize_rgb(want)), u / 255.0, atol=1e-6)
  f = np.random.default_rng(0).normal(size=(1, 4, 4, 2)).astype(np.float32) * 30
  np.testing.assert_array_equal(np.asarray(jax.jit(lpq.normalize_flow)(f)), f / np.float32(20))
  np.testing.assert_array_equal(np.asarray(jax.jit(lpq.denormalize_flow)(f)),
                                f / np.float32(1 / 20))


def test_config_from_dict():
  cfg = {"config_class": "spelke_net.local_patch_quantizer.config.LPQFlowConfig",
         "model_class": "x", "patch_size": 4, "vocab_size": 32768, "num_in_channels": 2,
         "num_out_channels": 2, "encoder_blocks": [["ResBlock", 24, 24, 48, 1, 1, 0]],
         "decoder_blocks": [["ResBlock", 24, 24, 48, 3, 1, 1], ["Upsample", 24, 12]]}
  c = LPQConfig.from_dict(cfg)
  assert c.kind == "flow" and c.codebook_bits == 15 and c.decoder_blocks[1] == ("Upsample", 24, 12)
  assert LPQConfig.from_dict({**cfg, "config_class": "LPQConfig"}).kind == "rgb"
  with pytest.raises(ValueError, match="power of two"):
    LPQConfig.from_dict({**cfg, "vocab_size": 30000})
  assert lpq_rgb() == LPQConfig.from_dict(lpq_rgb().to_dict())
