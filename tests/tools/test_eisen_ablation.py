"""tools/eisen_ablation.py: one eval per KProp iteration count, table + plot written."""
from __future__ import annotations

import json

from PIL import Image

from spelke_jax.data import synthetic
from spelke_jax.train import eisen as trainer
from tests.train.test_eisen_train import _config
from tools import eisen_ablation


def test_ablation_writes_one_row_per_iteration_count(tmp_path):
  wd = tmp_path / "run"
  trainer.train(_config(num_steps=1, checkpoint_every=1), wd)
  data = tmp_path / "eval.h5"
  synthetic.write_synthetic_h5(data, list(synthetic.generate(7, 2, 32)))
  config = _config(mode="eval", checkpoint=str(wd), dataset_path=str(data), write_figures=False)
  rows = eisen_ablation.ablation(config, [1, 3], tmp_path / "ablation")
  assert [r["kprop_iters"] for r in rows] == [1, 3]
  assert all(r["num_images"] == 2 and 0 <= r["mIoU"] <= 1 for r in rows)
  for it, r in zip((1, 3), rows):  # each row is that count's own eval
    saved = json.loads((tmp_path / "ablation" / f"iters_{it}" / "metrics.json").read_text())
    assert saved["mIoU"] == r["mIoU"]
  assert json.loads((tmp_path / "ablation" / "ablation.json").read_text()) == rows
  assert (tmp_path / "ablation" / "ablation.md").read_text().count("\n") == 4
  assert Image.open(tmp_path / "ablation" / "ablation.png").size == (480, 320)
