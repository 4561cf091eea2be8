"""The poke mode end to end on the shipped (96-px) model, and its input errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spelke_jax.inference import poke_mode

ROOT = Path(__file__).resolve().parents[2]


def _poke(workdir, *flags):
  return subprocess.run([sys.executable, "-m", "spelke_jax.main", "--config=configs/poke.py",
                         f"--workdir={workdir}", *flags], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


def test_poke_mode_writes_pngs_and_arrays(tmp_path):
  img = np.zeros((300, 400, 3), np.uint8)
  img[:] = (40, 90, 160)
  img[100:200, 150:260] = (230, 200, 30)
  Image.fromarray(img).save(tmp_path / "photo.png")
  out = _poke(tmp_path / "wd", f"--config.image={tmp_path / 'photo.png'}", "--config.point=200,150")
  assert out.returncode == 0, out.stderr[-3000:]
  wd = tmp_path / "wd"
  for name in ("affordance.png", "displacement.png", "correlation.png", "segment.png"):
    with Image.open(wd / name) as png:
      assert png.size[0] >= 2 * 96 and png.size[1] == 96  # image | map at the model's size
  with np.load(wd / "poke.npz") as z:
    assert z["segment"].shape == (96, 96) and z["segment"].dtype == bool
    assert z["image"].shape == (96, 96, 3)
    assert z["affordance"].shape == (12, 12)  # one value per 8-px patch
    # 300x400 -> 96x128 -> centre crop (16 px off each side): x 200 -> 200*128/400 - 16 = 48;
    # y 150 -> 150*96/300 = 48.
    np.testing.assert_allclose(z["point"], [48, 48], atol=0.01)
    # the default preset probes a 48-px crop centred on the point: maps in its frame, with the box
    assert z["first_box"].tolist() == z["final_box"].tolist() == [24, 24, 72, 72]
    assert z["correlation"].shape[0] < 96
  assert not list(wd.glob(".*tmp*"))


@pytest.mark.parametrize("flags,message", [
    (["--config.image=/nonexistent.png", "--config.point=1,1"], "image not found"),
    (["--config.point=300,10"], "outside"),
    (["--config.point=abc"], "X,Y"),
])
def test_poke_mode_bad_input(tmp_path, flags, message):
  out = _poke(tmp_path / "wd", *flags)
  assert out.returncode != 0 and message in out.stderr
  assert not list((tmp_path / "wd").glob("*.png")) and not (tmp_path / "wd" / "poke.npz").exists()


def test_load_image_requires_size_without_resize(tmp_path):
  Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "a.png")
  with pytest.raises(ValueError, match="needs 256x256"):
    poke_mode.load_image(str(tmp_path / "a.png"), 256, (1, 1), resize=False)
  (tmp_path / "b.png").write_bytes(b"not an image")
  with pytest.raises(ValueError, match="not a readable image"):
    poke_mode.load_image(str(tmp_path / "b.png"), 256, (1, 1), resize=True)


def test_in_image_frame_pastes_a_crop_map_into_its_box():
  background = np.full((8, 8, 3), 7, np.uint8)
  rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
  out = poke_mode.in_image_frame(rgb, np.array([2, 4, 6, 8]), background)
  np.testing.assert_array_equal(out[4:8, 2:6], np.kron(rgb, np.ones((2, 2, 1), np.uint8)))
  outside = np.ones((8, 8), bool)
  outside[4:8, 2:6] = False
  assert (out[outside] == 7).all() and (background == 7).all()
