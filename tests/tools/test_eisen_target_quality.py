"""tools/eisen_target_quality.py from the command line: writes target_quality.{json,md}."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from spelke_jax.train import eisen as trainer
from tests.train.test_eisen_train import _config

ROOT = Path(__file__).resolve().parents[2]


def test_tool_writes_the_table(tmp_path):
  teacher = tmp_path / "round1"
  trainer.train(_config(num_steps=1, checkpoint_every=1), teacher)
  out = tmp_path / "quality"
  cmd = [sys.executable, "tools/eisen_target_quality.py", "--config=configs/eisen_synth.py:round2",
         f"--config.teacher={teacher}", "--config.model.backbone=tiny",
         "--config.model.local_window_size=5", "--config.model.num_affinity_samples=48",
         "--config.data.resolution=32", "--config.targets.min_area=2",
         "--config.targets.teacher_runs=1", "--seed=5", "--num_batches=1", "--min_overlap=2",
         f"--out={out}"]
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  saved = json.loads((out / "target_quality.json").read_text())
  assert saved["num_images"] == 8 and saved["seed"] == 5
  assert list(saved["targets"]) == ["motion segments (round 1)",
                                    "explain away, min_overlap=2, unexplained=nearest"]
  assert (out / "target_quality.md").read_text() in res.stdout
  assert not list(out.glob(".*tmp*"))
