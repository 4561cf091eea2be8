"""tools/eisen_grouping_diagnostic.py: stride ceiling, KProp + Competition and plain components."""
from __future__ import annotations

import json

import numpy as np

from spelke_jax.data import synthetic, video_folders
from spelke_jax.evals import matched_miou
from spelke_jax.models import eisen
from spelke_jax.train import eisen as trainer
from tests.train.test_eisen_train import _config
from tools import eisen_grouping_diagnostic as diag


def test_diagnostic_rows_and_the_stride_ceiling(tmp_path):
  wd = tmp_path / "run"
  trainer.train(_config(num_steps=1, checkpoint_every=1), wd)
  data = tmp_path / "eval.h5"
  synthetic.write_synthetic_h5(data, list(synthetic.generate(7, 3, 32)))
  config = _config(mode="eval", checkpoint=str(wd), dataset_path=str(data),
                   segment_upsample="cell_centred")
  result = diag.diagnose(config, [0.5, 0.9], tmp_path / "diag")
  assert result["num_images"] == 3
  assert set(result["mIoU"]) == {"stride ceiling", "KProp + Competition",
                                 "components > 0.5, all pairs", "components > 0.5, 8-neighbours",
                                 "components > 0.9, all pairs", "components > 0.9, 8-neighbours"}
  assert all(0.0 <= v <= 1.0 for v in result["mIoU"].values())
  # the ceiling is the ground truth sampled at the affinity cells, scored at full resolution
  h, w = result["affinity_map"]
  src = video_folders.SyntheticH5Source(data)
  want = []
  for i in range(3):
    gt = video_folders.resize_example(src[i]["image"], src[i]["flow"], src[i]["ids"],
                                      config.data.resolution)[2]
    cells = np.asarray(eisen.nearest_resize_labels(gt[None], h, w))[0]
    want.append(matched_miou.image_miou(gt, matched_miou.upsample_cell_centred(cells, gt.shape))[0])
  assert result["mIoU"]["stride ceiling"] == np.nanmean(want)
  assert json.loads((tmp_path / "diag" / "diagnostic.json").read_text()) == result
  assert (tmp_path / "diag" / "diagnostic.md").read_text().count("\n") == 2 + 6
