"""Connected components: cc_torch ids (block rule), the cross-label id quirk (parity=True)
against the corrected ids, the pack's probes, small/whole-image components, odd sizes."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from spelke_jax.grouping import components as cc
from spelke_jax.parity import load_pack
from tests.fixture_packs import pack_params


@pytest.mark.parametrize("pack", pack_params("eisen_grouping"))
def test_pack_cc_probe_and_segments(pack):
  pack = load_pack(pack)
  min_area = pack.config["compute_segments"]["min_cc_area"]
  probe = np.stack([cc.label_connected_components(l, min_area, parity=True)
                    for l in pack["cc_probe_labels"]])
  np.testing.assert_array_equal(probe, pack["cc_probe_segments"])
  np.testing.assert_array_equal(cc.label_batch(pack["instance_seg"], min_area, parity=True),
                                pack["segments"])


def test_block_ids():
  m = np.zeros((6, 6), bool)
  m[1, 1] = m[2, 2] = True          # diagonal: one 8-connected component, first block (0,0)
  m[4:6, 3:6] = True                # second component, first block (4, 2) -> 4*6+2
  ids = cc.cc_block_ids(m)
  assert ids[1, 1] == ids[2, 2] == 1
  assert (ids[4:6, 3:6] == 4 * 6 + 2 + 1).all()
  assert (ids[~m] == 0).all()


def _collision_map():
  labels = np.zeros((8, 8), int)
  labels[:, 4:] = 1
  labels[0, 4] = 2      # label-2 pixel in the first block of the label-1 region: same cc id
  return labels


def test_id_quirk_vs_corrected():
  labels = _collision_map()
  quirk = cc.label_connected_components(labels, min_area=1, parity=True)
  fixed = cc.label_connected_components(labels, min_area=1, parity=False)
  # cc_torch: the label-2 pixel and the label-1 region share id 5 and come out as one segment
  assert quirk[0, 4] == quirk[0, 5]
  assert len(np.unique(quirk)) == 2
  # corrected: three segments, one per component
  assert fixed[0, 4] != fixed[0, 5]
  assert len(np.unique(fixed)) == 3


def test_partition_matches_scipy_when_no_collision():
  rng = np.random.default_rng(0)
  for _ in range(5):
    labels = rng.integers(0, 3, size=(10, 12))
    out = cc.label_connected_components(labels, min_area=3, parity=False)
    # every valid component of every label is one output segment, small ones are merged
    for lab in np.unique(labels):
      comp, n = ndimage.label(labels == lab, structure=np.ones((3, 3)))
      for k in range(1, n + 1):
        vals = np.unique(out[comp == k])
        assert len(vals) == 1
        if (comp == k).sum() >= 3:
          assert (out == vals[0]).sum() == (comp == k).sum()


def test_small_and_whole_image_components_collapse():
  labels = np.zeros((6, 6), int)
  labels[0, 0] = 1                  # 1 pixel < min_area
  out = cc.label_connected_components(labels, min_area=2)
  want = np.ones((6, 6), int)
  want[0, 0] = 0                    # invalid -> argmax channel 0 -> smallest id after relabel
  np.testing.assert_array_equal(out, want)
  # one label over the whole image: area H*W > H*W - 1 is invalid -> all 0
  np.testing.assert_array_equal(cc.label_connected_components(np.zeros((4, 4), int), 1), 0)


def test_odd_sizes_and_errors():
  labels = np.zeros((5, 7), int)
  labels[:, 3:] = 1
  out = cc.label_connected_components(labels, min_area=1)
  assert len(np.unique(out)) == 2
  with pytest.raises(ValueError, match="H, W"):
    cc.label_connected_components(np.zeros((2, 3, 4), int))
  with pytest.raises(ValueError, match="B, H, W"):
    cc.label_batch(np.zeros((3, 4), int))


def test_segments_from_masks():
  masks = np.zeros((1, 2, 2, 3), np.float32)
  masks[0, 0, 0, 2] = 1.0
  masks[0, 1, 1, 1] = 0.5
  np.testing.assert_array_equal(cc.segments_from_masks(masks), [[[2, 0], [0, 1]]])
