"""The shipped EISEN (assets/synth_eisen) reproduces its recorded metrics; converted-directory
weights load into the trainer and refuse another architecture."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from spelke_jax.convert.save import save_converted
from spelke_jax.train import eisen as trainer
from spelke_jax.train import eisen_configs

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "assets" / "synth_eisen"


def test_eval_mode_defaults_to_the_shipped_model_and_reproduces_its_metrics(tmp_path):
  ref = json.loads((SHIPPED / "reference_metrics.json").read_text())
  out = subprocess.run([sys.executable, "-m", "spelke_jax.main", "--config=configs/eisen_synth.py",
                        "--config.mode=eval", "--config.eval_images=8", f"--workdir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "EISEN matched mIoU over 8 images" in out.stdout
  m = json.loads((tmp_path / "metrics.json").read_text())
  want = {r["key"]: r for r in ref["per_image"]}
  assert len(m["per_image"]) == 8
  for row in m["per_image"]:
    assert row["mIoU"] == pytest.approx(want[row["key"]]["mIoU"], abs=0.03), row["key"]
    assert row["has_agent"] == want[row["key"]]["has_agent"]
  # The whole set's number is what the README reports.
  assert ref["num_images"] == 40 and 0.0 < ref["mIoU"] <= 1.0


def _tiny(**model):
  c = eisen_configs.base()
  c.model.backbone = "tiny"
  c.model.local_window_size = 5
  for k, v in model.items():
    c.model[k] = v
  return c


def _values(model):
  return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def test_converted_directory_round_trip_and_architecture_check(tmp_path):
  config = _tiny()
  model = trainer.build_model(config)
  want = _values(model)
  save_converted(model, "eisen", tmp_path / "a")
  other_config = _tiny()
  other_config.seed = config.seed + 1
  other = trainer.build_model(other_config)  # same architecture, other initial weights
  assert any(not np.array_equal(want[p], v) for p, v in _values(other).items())
  trainer.restore_weights(tmp_path / "a", other, config)
  got = _values(other)
  for p, v in want.items():
    np.testing.assert_array_equal(v, got[p], err_msg=str(p))
  # bfloat16 storage: every float value comes back as the bfloat16 rounding of the original.
  save_converted(model, "eisen", tmp_path / "b", store_dtype="bfloat16")
  trainer.restore_weights(tmp_path / "b", other, config)
  got = _values(other)
  for p, v in want.items():
    expect = v.astype(ml_dtypes.bfloat16).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
    np.testing.assert_array_equal(expect, got[p], err_msg=str(p))
    assert got[p].dtype == v.dtype
  with pytest.raises(FileExistsError):
    save_converted(model, "eisen", tmp_path / "a")
  with pytest.raises(ValueError, match="kq_dim"):
    trainer.restore_weights(tmp_path / "a", trainer.build_model(_tiny(kq_dim=16)), _tiny(kq_dim=16))
  assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_synth_config_scene_kwargs_are_the_generator_defaults_and_reach_the_stream():
  """configs/eisen_synth.py names the training scenes' make_scene arguments (so they can be set
  from the command line); they must equal the generator's defaults, or the recorded recipes
  (README: EISEN) would train on other scenes, and an override must change the scenes."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import inspect  # pylint: disable=g-import-not-at-top
  from spelke_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("eisen_synth", ROOT / "configs" / "eisen_synth.py")
  eisen_synth = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(eisen_synth)
  c = eisen_synth.get_config()
  defaults = inspect.signature(synthetic.make_scene).parameters
  for name, value in c.data.scene_kwargs.items():
    assert defaults[name].default == value, name
  c.batch_size, c.data.resolution = 2, 64
  named = next(trainer.train_batches(c, 0))
  c.data.scene_kwargs = {}                     # the generator's own defaults
  np.testing.assert_array_equal(named["flow"], next(trainer.train_batches(c, 0))["flow"])
  c.data.scene_kwargs = {"p_move": 1.0}
  assert not np.array_equal(named["flow"], next(trainer.train_batches(c, 0))["flow"])
