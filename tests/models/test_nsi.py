"""NSI: fixture parity, slot attention permutation-equivariance over slots, clear errors on a
vocabulary that does not match (checkpoint tables, label ids)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spelke_jax.convert import nsi_mapping
from spelke_jax.convert.load import load_torch
from spelke_jax.convert.torch_writer import write_torch_checkpoint
from spelke_jax.models import nsi
from spelke_jax.models import slots as slots_lib
from spelke_jax.models.vit import ViTConfig
from tests.fixture_packs import assert_pack_passes, pack_params

TINY = dict(vit=ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                          resize_size=32, crop_size=32),
            num_slots=3, num_iterations=2, slot_dim=16, mlp_hidden_size=16, embed_dim=8,
            decoder_hidden=32, decoder_layers=2, program_blocks=1, program_d_model=16,
            program_heads=2, num_materials=5)


@pytest.mark.parametrize("pack", pack_params("nsi"))
def test_parity(pack):
  assert_pack_passes(pack)


@pytest.mark.parametrize("variant,heads", [("nsi", 1), ("nsi", 2), ("savi", 1), ("savi", 2)])
def test_slot_attention_is_permutation_equivariant_over_slots(variant, heads):
  cfg = slots_lib.SlotAttentionConfig(num_slots=5, num_iterations=3, num_heads=heads,
                                      input_size=12, slot_size=8, mlp_hidden_size=16,
                                      variant=variant)
  module = slots_lib.SlotAttention(cfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  inputs = jnp.asarray(rng.normal(size=(2, 20, 12)), jnp.float32)
  init = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  perm = np.array([3, 0, 4, 1, 2])
  a, b = module(inputs, init), module(inputs, init[:, perm])
  np.testing.assert_allclose(b.slots, a.slots[:, perm], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(b.slots_per_iter, a.slots_per_iter[:, :, perm], rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(b.attn, a.attn[..., perm], rtol=1e-5, atol=1e-6)
  assert not np.allclose(a.slots[:, 0], a.slots[:, 1])  # the slots really differ


def _torch_state_dict(model: nsi.NSI) -> dict[str, np.ndarray]:
  """The model's weights in the original flat layout (the converter's table run backwards)."""
  table = nsi_mapping.table(model.config)
  values = {"/".join(str(p) for p in path): np.asarray(v[...])
            for path, v in nnx.to_flat_state(nnx.state(model))}
  return {e.torch_name: np.ascontiguousarray(e.transform.inverse(values[e.flax_path]))
          for e in table.entries}


def test_checkpoint_with_another_vocabulary_size_is_a_clear_error(tmp_path):
  model = nsi.create(nsi.NSIConfig(**TINY), seed=0)
  path = write_torch_checkpoint(tmp_path / "best_model.pt", _torch_state_dict(model))
  wrong = nsi.NSIConfig(**{**TINY, "num_materials": 7}).to_dict()
  with pytest.raises(ValueError, match="material_embedding"):
    load_torch(path, "nsi", config=wrong)


def test_label_ids_outside_the_vocabulary_are_a_clear_error():
  model = nsi.create(nsi.NSIConfig(**TINY), seed=0)
  rows = np.zeros((1, 10, 6), np.float32)
  rows[0, 0, :3] = (2, 3, 4)                        # the largest valid ids
  prog, _ = model.encode_program(jnp.asarray(rows))
  assert np.isfinite(np.asarray(prog)).all()
  for col, value, name in ((2, 5, "material"), (1, 4, "shape"), (0, -1, "size")):
    bad = rows.copy()
    bad[0, 1, col] = value
    with pytest.raises(ValueError, match=f"{name} id out of range"):
      model.encode_program(jnp.asarray(bad))


def test_mismatched_embedding_widths_are_rejected():
  with pytest.raises(ValueError, match="embed_dim"):
    nsi.NSIConfig.from_dict({"ImageEncoder_args": {"embed_dim": 16},
                             "CLEVRTexProgramEncoder": {"embed_dim": 8}})
