"""EISEN's matched mIoU: fixture pack, torch-nearest upsampling, id shift, unmatched GT, NaN."""
from __future__ import annotations

import numpy as np
import pytest

from spelke_jax.evals import matched_miou as mm
from tests.fixture_packs import assert_pack_passes, pack_params


@pytest.mark.parametrize("pack", pack_params("eisen_metrics"))
def test_eisen_metrics_pack_passes(pack):
  assert_pack_passes(pack)


def test_nearest_indices_like_torch():
  np.testing.assert_array_equal(mm.nearest_indices(16, 64), np.arange(64) // 4)
  np.testing.assert_array_equal(mm.nearest_indices(3, 6), [0, 0, 1, 1, 2, 2])
  # torch: floor(dst * float32(in/out)) in float32
  want = np.minimum(np.floor(np.arange(24, dtype=np.float32) * np.float32(16 / 24)), 15)
  np.testing.assert_array_equal(mm.nearest_indices(16, 24), want.astype(int))


def test_perfect_shifted_and_negative_ids():
  gt = np.zeros((8, 8), int)
  gt[:4, :4] = 7
  gt[4:, 4:] = 3
  pred = np.repeat(np.repeat(np.array([[5, -2], [-2, 9]]), 2, 0), 2, 1)  # 4x4, upsampled x2
  miou, best, n = mm.image_miou(gt, pred)
  assert n == 2 and miou == pytest.approx(1.0)
  np.testing.assert_allclose(best, [1.0, 1.0])


def test_unmatched_gt_counts_zero_and_pred_zero_is_a_candidate():
  gt = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 3]])
  pred = np.zeros((4, 4), int)                           # a single segment (id 0)
  miou, best, n = mm.image_miou(gt, pred)
  assert n == 3
  assert sorted(best.tolist()) == [0.0, 0.0, pytest.approx(0.5)]
  assert miou == pytest.approx(0.5 / 3)


def test_no_gt_object_is_nan_and_aggregates():
  gt = np.zeros((4, 4), int)
  miou, best, n = mm.image_miou(gt, np.zeros((2, 2), int))
  assert np.isnan(miou) and n == 0 and best.shape == (0,)
  gts = np.stack([gt, np.ones((4, 4), int)])
  preds = np.zeros((2, 2, 2), int)
  assert np.isnan(mm.batch_metric(gts, preds))
  assert mm.dataset_miou([mm.image_miou(g, p) for g, p in zip(gts, preds)]) == 1.0
  assert mm.dataset_miou([0.5, float("nan"), {"mIoU": 1.0}]) == 0.75
  with pytest.raises(ValueError):
    mm.batch_metric(gts, preds[:1])


def test_cell_centred_upsampling_undoes_the_nearest_sampling_shift():
  # Cell i of a stride-4 map is sampled at pixel 4i (torch 'nearest' downsampling); the centred
  # upsampling paints it over pixels 4i-2 .. 4i+1, 'nearest' over 4i .. 4i+3.
  np.testing.assert_array_equal(mm.cell_centred_indices(4, 16),
                                [0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3])
  np.testing.assert_array_equal(mm.cell_centred_indices(5, 5), np.arange(5))
  # 3 cells over 8 px: centres 0, 2.67, 5.33 (nearest samples pixels 0, 2, 5); ties go up
  np.testing.assert_array_equal(mm.cell_centred_indices(3, 8), [0, 0, 1, 1, 2, 2, 2, 2])
  # A square over pixels [6, 22) of a 32 x 32 image, sampled at stride 4 and upsampled back.
  gt = np.zeros((32, 32), np.int32)
  gt[6:22, 6:22] = 1
  cells = gt[mm.nearest_indices(32, 8)][:, mm.nearest_indices(32, 8)]
  centred = mm.upsample_cell_centred(cells, (32, 32))
  np.testing.assert_array_equal(centred, gt)               # its edges lie on centred blocks
  nearest = mm.upsample_nearest(cells, (32, 32))
  assert mm.image_miou(gt, centred)[0] == 1.0 > mm.image_miou(gt, nearest)[0]
  rgb = mm.upsample_cell_centred(np.stack([cells] * 3, -1), (32, 32))   # trailing axes kept
  assert rgb.shape == (32, 32, 3) and np.array_equal(rgb[..., 2], gt)
  with pytest.raises(ValueError, match="pred must be"):
    mm.upsample_cell_centred(np.zeros(8), (32, 32))
