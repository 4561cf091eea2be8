"""SpelkeBench AP / AR / mIoU: parity with `spelkebench_metrics` packs and behaviour tests."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from spelke_jax.evals import spelkebench as sb
from spelke_jax.parity import load_pack
from spelke_jax.parity.otsu_metrics import run_metrics
from tests.fixture_packs import assert_pack_passes, pack_params

H = W = 32


@pytest.mark.parametrize("pack", pack_params("spelkebench_metrics"))
def test_metrics_pack_parity(pack):
  assert_pack_passes(pack)


@pytest.mark.parametrize("pack", pack_params("spelkebench_metrics"))
def test_metrics_outputs_match_golden_dtypes_and_shapes(pack):
  p = load_pack(pack)
  out = run_metrics(p)
  for name in p.tolerances:
    assert out[name].dtype == p[name].dtype, name
    assert out[name].shape == p[name].shape, name


def test_thresholds_are_the_original_nine():
  assert sb.THRESHOLDS.dtype == np.float64 and len(sb.THRESHOLDS) == 9
  np.testing.assert_array_equal(sb.THRESHOLDS, [
      0.5, 0.55, 0.6000000000000001, 0.6500000000000001, 0.7000000000000002,
      0.7500000000000002, 0.8000000000000003, 0.8500000000000003, 0.9000000000000004])


def _bar(start: int, length: int, row: int = 0) -> np.ndarray:
  m = np.zeros((H, W), np.uint8)
  m[row, start:start + length] = 1
  return m


def _pair_with_iou(num: int, den: int, row: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """gt = a bar of `den` pixels, pred = its first `num` pixels: IoU = num/den exactly."""
  return _bar(0, den, row), _bar(0, num, row)


@pytest.mark.parametrize("num,den,passed", [
    (10, 20, 1),   # 0.5   -> only 0.5
    (11, 20, 2),   # 0.55  -> 0.5, 0.55
    (12, 20, 2),   # 0.6   -> NOT 0.6000000000000001
    (13, 20, 3),   # 0.65  -> NOT 0.6500000000000001 (but 0.6000000000000001)
    (14, 20, 4),   # 0.7   -> NOT 0.7000000000000002
    (18, 20, 8),   # 0.9   -> NOT 0.9000000000000004
    (20, 20, 9),
])
def test_exact_iou_threshold_edges(num, den, passed):
  gt, pred = _pair_with_iou(num, den)
  r = sb.image_metrics(gt[None], pred[None])
  assert r["iou"][0, 0] == num / den
  expected = np.count_nonzero(num / den >= sb.THRESHOLDS)
  assert expected == passed
  assert r["AR"] == np.mean([float(num / den >= t) for t in sb.THRESHOLDS])
  assert r["AR"] == pytest.approx(passed / 9)
  assert r["AP"] == r["AR"]


def test_iou_exactly_06_and_07_miss_their_thresholds():
  gts, preds = [], []
  for row, num in enumerate((12, 14)):   # IoU 0.6 and 0.7
    g, p = _pair_with_iou(num, 20, row=2 * row)
    gts.append(g)
    preds.append(p)
  r = sb.image_metrics(np.stack(gts), np.stack(preds))
  # thresholds reached: 0.6 -> 2 of 9, 0.7 -> 4 of 9; AR = mean over t of tp/2.
  assert r["AR"] == np.mean([(0.6 >= t) / 2 + (0.7 >= t) / 2 for t in sb.THRESHOLDS])
  assert r["AR"] == pytest.approx((2 + 4) / 18)


def test_miou_is_best_per_gt_not_hungarian():
  a = np.zeros((H, W), np.uint8)
  a[0:8, 0:8] = 1
  b = np.zeros((H, W), np.uint8)
  b[0:8, 8:16] = 1
  merged = a | b                 # IoU 0.5 with each gt
  junk = np.zeros((H, W), np.uint8)
  junk[20:30, 20:30] = 1         # IoU 0 with both
  r = sb.image_metrics(np.stack([a, b]), np.stack([merged, junk]))
  assert r["mIoU"] == 0.5        # both gts' best is the merged mask
  matched = r["iou"][r["assignment"]]
  assert sorted(matched.tolist()) == [0.0, 0.5]   # the Hungarian match uses it only once
  assert r["AR"] == pytest.approx(1 / 18)         # one match >= 0.5, at one threshold


def test_more_predictions_than_gt():
  g, p = _pair_with_iou(20, 20)
  extra = _bar(0, 5, row=10)
  r = sb.image_metrics(g[None], np.stack([extra, p, extra]))
  assert r["num_gt"] == 1 and r["num_pred"] == 3
  assert r["assignment"][1].tolist() == [1]
  assert r["AR"] == 1.0 and r["AP"] == pytest.approx(1 / 3)
  assert r["mIoU"] == 1.0


def test_zero_predictions():
  g, _ = _pair_with_iou(10, 20)
  r = sb.image_metrics(np.stack([g, _bar(0, 4, row=5)]), np.zeros((0, H, W), np.uint8))
  assert r["iou"].shape == (2, 0)
  assert r["AP"] == 0.0 and r["AR"] == 0.0 and r["mIoU"] == 0.0
  assert len(r["assignment"][0]) == 0


def test_empty_prediction_mask_and_empty_union():
  g, _ = _pair_with_iou(10, 20)
  empty = np.zeros((H, W), np.uint8)
  r = sb.image_metrics(g[None], empty[None])
  assert r["iou"][0, 0] == 0.0 and r["AR"] == 0.0
  r = sb.image_metrics(empty[None], empty[None])   # 0/0 in the original; 0 here, no crash
  assert r["iou"][0, 0] == 0.0


def test_no_gt_masks():
  r = sb.image_metrics(np.zeros((0, H, W), np.uint8), _bar(0, 3)[None])
  assert r["AP"] == 0.0 and r["AR"] == 0.0 and np.isnan(r["mIoU"])


def test_iou_matrix_bool_and_uint8_agree_and_shape_check():
  rng = np.random.default_rng(0)
  gt = rng.random((3, H, W)) > 0.5
  pred = rng.random((4, H, W)) > 0.5
  iou = sb.iou_matrix(gt, pred)
  ref = ((gt[:, None] & pred[None]).sum((-1, -2)) / (gt[:, None] | pred[None]).sum((-1, -2)))
  np.testing.assert_array_equal(iou, ref)
  np.testing.assert_array_equal(sb.iou_matrix(gt.astype(np.uint8), pred.astype(np.uint8)), ref)
  with pytest.raises(ValueError):
    sb.iou_matrix(gt, pred[:, :-1])
  with pytest.raises(ValueError):
    sb.iou_matrix(gt[0], pred)


def test_dataset_metrics_are_plain_means():
  rows = [{"AP": 0.5, "AR": 0.25, "mIoU": 0.75}, {"AP": 1.0, "AR": 0.5, "mIoU": 0.25}]
  assert sb.dataset_metrics(rows) == {"AR": 0.375, "AP": 0.75, "mIoU": 0.5}
  with pytest.raises(ValueError):
    sb.dataset_metrics([])


def _write_pred(path, gt, pred, points_key="probe_points"):
  with h5py.File(path, "w") as f:
    f.create_dataset("segments", data=gt, compression="gzip")
    f.create_dataset(points_key, data=np.zeros((len(gt), 2), np.int64))
    f.create_dataset("segment_pred", data=pred, compression="gzip")
    f.create_dataset("segment_gt", data=gt, compression="gzip")
    f.create_dataset("image", data=np.zeros((H, W, 3), np.uint8), compression="gzip")


def test_evaluate_folder_and_metrics_json(tmp_path):
  rng = np.random.default_rng(3)
  cases = {}
  for i in range(4):
    gt = (rng.random((3, H, W)) > 0.6).astype(np.uint8)
    pred = gt.copy()
    pred[:, :i * 3] = 0
    cases[f"img{i}"] = (gt, pred)
  cases["more_preds"] = (cases["img0"][0][:1], cases["img0"][1])
  cases["zero_preds"] = (cases["img1"][0], np.zeros((0, H, W), np.uint8))
  for name, (gt, pred) in cases.items():
    _write_pred(tmp_path / f"{name}.h5", gt, pred,
                points_key="probe_point" if name == "img2" else "probe_points")
  (tmp_path / "notes.txt").write_text("not an h5 file")
  res = sb.evaluate_folder(tmp_path)
  assert res["num_images"] == len(cases)
  names = [r["name"] for r in res["per_image"]]
  assert names == sorted(cases)
  for row in res["per_image"]:
    gt, pred = cases[row["name"]]
    ref = sb.image_metrics(gt, pred)
    assert (row["AP"], row["AR"], row["mIoU"]) == (ref["AP"], ref["AR"], ref["mIoU"])
  assert res["AR"] == np.mean([r["AR"] for r in res["per_image"]])
  zero = next(r for r in res["per_image"] if r["name"] == "zero_preds")
  assert (zero["AP"], zero["AR"], zero["mIoU"], zero["num_pred"]) == (0.0, 0.0, 0.0, 0)

  out = tmp_path / "out" / "metrics.json"
  sb.write_metrics_json(out, res)
  loaded = json.loads(out.read_text())
  assert loaded["AR"] == res["AR"] and loaded["mIoU"] == res["mIoU"]
  assert loaded["AP"] == res["AP"] and loaded["num_images"] == len(cases)
  assert len(loaded["per_image"]) == len(cases)
  assert os.listdir(out.parent) == ["metrics.json"]   # no temp file left behind
  sb.write_metrics_json(out, {**res, "AR": 0.0})      # overwrite in place
  assert json.loads(out.read_text())["AR"] == 0.0
  with pytest.raises(KeyError):
    sb.write_metrics_json(out, {"AP": 1.0})


def test_evaluate_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError):
    sb.evaluate_folder(tmp_path / "missing")
  with pytest.raises(ValueError, match="no .h5"):
    sb.evaluate_folder(tmp_path)
  with h5py.File(tmp_path / "bad.h5", "w") as f:
    f.create_dataset("segment_gt", data=np.zeros((1, H, W), np.uint8))
  with pytest.raises(KeyError, match="segment_pred"):
    sb.evaluate_folder(tmp_path)
