"""tools/ship_synth_models.py: the shipped SpelkeNet's reference metrics come from the files it
writes (not from whatever assets/ holds)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_collections

from spelke_jax import config_files
from spelke_jax.convert.export import export_torch
from spelke_jax.evals import run_spelkebench
from spelke_jax.inference import spelkenet_model
from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig, compact_layout

ROOT = Path(__file__).resolve().parents[2]


def test_spelkenet_reference_metrics_are_those_of_the_written_files(tmp_path):
  _, rgb, flow, table, no_motion = spelkenet_model.build_tiny(seed=3)
  model = lras.create(LRASConfig(n_layer=1, n_head=2, n_embd=32,
                                 **compact_layout(256, 256, num_patches=16)), seed=3)  # 32 px
  src = tmp_path / "export"
  src.mkdir()
  export_torch(model, "lras", src / "lras.pt")
  export_torch(rgb, "lpq", src / "rgb_quantizer.pt")
  export_torch(flow, "lpq", src / "flow_quantizer.pt")
  spelkenet_model.write_flow_table(src / "flow_table.npz", table, no_motion)
  out = tmp_path / "out"
  subprocess.run([sys.executable, "tools/ship_synth_models.py", f"--spelkenet={src}",
                  f"--out={out}", "--num=1", "--store_dtype="], cwd=ROOT, check=True)
  dest = out / "synth_spelkenet"
  ref = json.loads((dest / "reference_metrics.json").read_text())
  config = config_files.load("configs/spelkebench.py")
  config.update(dataset_path=str(out / "synth_eval32.h5"), lras_checkpoint=str(dest / "lras"),
                rgb_checkpoint=str(dest / "rgb_quantizer"),
                flow_checkpoint=str(dest / "flow_quantizer"),
                flow_table=str(dest / "flow_table.npz"), write_figures=False)
  metrics = run_spelkebench.run(ml_collections.FrozenConfigDict(config), tmp_path / "eval")
  assert ref["num_images"] == 1
  assert [r["mIoU"] for r in ref["per_image"]] == [r["mIoU"] for r in metrics["per_image"]]
  assert (ref["AR"], ref["mIoU"]) == (metrics["AR"], metrics["mIoU"])
