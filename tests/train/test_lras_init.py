"""Spatial initialisation of the LRAS embeddings (train/lras_init.py)."""
from __future__ import annotations

import numpy as np
import pytest

from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig, compact_layout
from spelke_jax.train import lras_init

CFG = LRASConfig(n_layer=1, n_head=2, n_embd=32, **compact_layout(16, 16, num_patches=9))


def _tables(model):
  return (np.asarray(model.positional_embedding.embedding[...]),
          np.asarray(model.token_embedding.embedding[...]))


def test_sincos_2d_values():
  yx = np.array([[0.0, 0.0], [2.0, 3.0]])
  code = lras_init.sincos_2d(yx, 8)
  omega = 1.0 / 10000.0 ** (np.arange(2) / 2)
  ref = np.concatenate([np.sin(yx[:, :1] * omega), np.cos(yx[:, :1] * omega),
                        np.sin(yx[:, 1:] * omega), np.cos(yx[:, 1:] * omega)], axis=1)
  np.testing.assert_allclose(code, ref, rtol=1e-6)
  with pytest.raises(ValueError, match="multiple of 4"):
    lras_init.sincos_2d(yx, 6)


def test_patch_layout_places_codes_row_major_inside_patches():
  p, centre, token_yx = lras_init.patch_layout(CFG)  # 3 x 3 patches of 2 x 2 codes
  assert p == 9 and token_yx.shape == (9, 5, 2)
  np.testing.assert_array_equal(centre[4], [2.5, 2.5])
  np.testing.assert_array_equal(token_yx[5, 1:], [[2, 4], [2, 5], [3, 4], [3, 5]])


def test_codes_go_to_the_rows_that_name_a_place():
  base, moved = lras.create(CFG, seed=0), lras.create(CFG, seed=0)
  lras_init.add_spatial_codes(moved, 0.05)
  (pos0, tok0), (pos1, tok1) = _tables(base), _tables(moved)
  dpos, dtok = pos1 - pos0, tok1 - tok0
  frame = CFG.frame_0_rgb_pos_range[1]
  f0 = CFG.flow_pos_range[0]
  np.testing.assert_allclose(dpos[f0:f0 + frame], dpos[:frame], atol=1e-7)  # same place, same code
  assert np.all(np.abs(dpos[:frame]).sum(1) > 0)
  np.testing.assert_array_equal(dpos[CFG.campose_pos_range[0]:], 0)      # camera rows untouched
  changed = np.nonzero(np.abs(dtok).sum(1))[0]
  np.testing.assert_array_equal(changed, np.r_[np.arange(*CFG.rgb_patch_0_idx_range),
                                               np.arange(*CFG.flow_patch_idx_range)])
  rgb_ptr, flow_ptr = CFG.rgb_patch_0_idx_range[0], CFG.flow_patch_idx_range[0]
  np.testing.assert_allclose(dtok[flow_ptr:flow_ptr + 9], dtok[rgb_ptr:rgb_ptr + 9], atol=1e-7)
  np.testing.assert_allclose(dtok[rgb_ptr + 4], 0.05 * lras_init.sincos_2d([[2.5, 2.5]], 32)[0],
                             atol=1e-7)
  untouched = lras.create(CFG, seed=0)
  lras_init.add_spatial_codes(untouched, 0.0)
  for a, b in zip(_tables(untouched), _tables(base)):
    np.testing.assert_array_equal(a, b)
