"""The `spelkebench` mode end to end, its resume / bad-input behaviour, the model registry and
baselines, and the embedded demo set."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from scipy import ndimage

from spelke_jax.data.spelkebench import Example, SpelkeBenchReader, write_spelkebench_h5
from spelke_jax import config_files
from spelke_jax.evals import models
from spelke_jax.evals import run_spelkebench as rsb
from spelke_jax.evals.spelkebench import evaluate_folder
from spelke_jax.inference import spelkenet_model

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "assets" / "spelkebench_demo.h5"


def _config(**overrides):
  c = config_files.load("configs/spelkebench.py")
  c.model = "floodfill"  # fast; the default (shipped SpelkeNet) has its own test
  c.dataset_path = str(DEMO)  # 6 images at 256 px: the runner's mechanics
  for k, v in overrides.items():
    c[k] = v
  return c


def _main(workdir, *flags):
  """The spelkebench command; the fast floodfill baseline on the 6-image demo set unless a test
  picks the model or the set."""
  if not any(f.startswith("--config.model") for f in flags):
    flags = flags + ("--config.model=floodfill",)
  if not any(f.startswith("--config.dataset_path") for f in flags):
    flags = flags + (f"--config.dataset_path={DEMO}",)
  return subprocess.run([sys.executable, "-m", "spelke_jax.main",
                         "--config=configs/spelkebench.py", f"--workdir={workdir}", *flags],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)


def _metrics(workdir):
  m = json.loads((Path(workdir) / "metrics.json").read_text())
  m.pop("timing")
  return m


# ---- the default command ------------------------------------------------------------------------

def test_default_command_runs_the_shipped_spelkenet_and_reproduces_its_metrics(tmp_path):
  """The default command (shipped trained SpelkeNet, shipped held-out set) on its first 3
  images gives the per-image AR / mIoU recorded when the model was shipped."""
  ref = json.loads((spelkenet_model.SHIPPED_DIR / "reference_metrics.json").read_text())
  out = subprocess.run([sys.executable, "-m", "spelke_jax.main", "--config=configs/spelkebench.py",
                        f"--workdir={tmp_path}", "--config.max_images=3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  m = json.loads((tmp_path / "metrics.json").read_text())
  assert m["model"] == "spelkenet" and m["num_images"] == 3
  assert Path(m["dataset_path"]).name == "synth_eval96.h5"
  want = {r["name"]: r for r in ref["per_image"]}
  for row in m["per_image"]:
    assert row["mIoU"] == pytest.approx(want[row["name"]]["mIoU"], abs=0.03), row["name"]
    assert row["AR"] == pytest.approx(want[row["name"]]["AR"], abs=0.12), row["name"]
  with h5py.File(next((tmp_path / "predictions").glob("*.h5")), "r") as f:
    pred, gt = f["segment_pred"][()], f["segment_gt"][()]
  assert pred.shape == gt.shape and pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1}


def test_default_command_on_demo_set(tmp_path):
  out = _main(tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  m = json.loads((tmp_path / "metrics.json").read_text())
  assert 0 <= m["AR"] <= 1 and 0 <= m["mIoU"] <= 1 and 0 <= m["AP"] <= 1
  assert 0.2 < m["AR"] < 0.95          # flood fill is neither useless nor perfect on the demo
  assert m["num_images"] == 6 and m["model"] == "floodfill" and m["missing"] == []
  for name in ("AP", "AR", "mIoU"):
    assert f"{name}: {m[name]:.4f}" in out.stdout
  # Same numbers as the original's evaluate_folder over the predictions folder.
  ref = evaluate_folder(tmp_path / "predictions")
  for name in ("AP", "AR", "mIoU", "num_images"):
    assert m[name] == ref[name]
  assert m["per_image"] == ref["per_image"]
  reader = SpelkeBenchReader(DEMO)
  keys = reader.keys()
  assert sorted(p.stem for p in (tmp_path / "figures").glob("*.png")) == keys
  assert (tmp_path / "summary.png").stat().st_size > 1000
  assert not list((tmp_path / "predictions").glob("*.tmp"))
  # Prediction files: the original's keys, dtypes and the GT copied through.
  ex = reader[keys[0]]
  with h5py.File(tmp_path / "predictions" / f"{keys[0]}.h5", "r") as f:
    assert {"segment_pred", "segment_gt", "probe_points", "image"} <= set(f)
    pred = f["segment_pred"][()]
    assert pred.dtype == np.uint8 and pred.shape == ex.segments.shape
    np.testing.assert_array_equal(f["segment_gt"][()], ex.segments.astype(np.uint8))
    np.testing.assert_array_equal(f["probe_points"][()], ex.points)
    np.testing.assert_array_equal(f["image"][()], ex.image)
  # The model saw the image in [0, 1] and the point as (x, y).
  ff = models.FloodFill(0.1)
  for i, (x, y) in enumerate(ex.points):
    np.testing.assert_array_equal(pred[i] != 0, ff.run_inference(ex.image / 255.0, (x, y)))


# ---- metrics by hand ----------------------------------------------------------------------------

def _hand_set(path):
  """Two 10x10 images: masks of 60 + 40 px, and one of 75 px."""
  img = np.zeros((10, 10, 3), np.uint8)
  a = np.zeros((10, 10), bool)
  a[:6] = True
  c = np.zeros((10, 10), bool)
  c[:7] = True
  c[7, :5] = True
  write_spelkebench_h5(path, [
      Example("img_a", img, np.stack([a, ~a]), np.array([[5, 2], [5, 8]])),
      Example("img_b", img + 7, c[None], np.array([[3, 3]])),
  ])


def test_whole_image_metrics_by_hand(tmp_path):
  _hand_set(tmp_path / "hand.h5")
  m = rsb.run(_config(dataset_path=str(tmp_path / "hand.h5"), model="whole_image"),
              tmp_path / "wd")
  # img_a: IoUs 0.6 and 0.4; only t = 0.5, 0.55 count for 0.6 (0.6 < 0.6000000000000001):
  #   AR = AP = (1/2 + 1/2) / 9; mIoU = 0.5.
  # img_b: IoU 0.75 counts for the 5 thresholds below 0.7500000000000002: AR = AP = 5/9;
  #   mIoU = 0.75.
  rows = {r["name"]: r for r in m["per_image"]}
  assert rows["img_a"]["AR"] == pytest.approx(1 / 9, abs=1e-12)
  assert rows["img_b"]["AR"] == pytest.approx(5 / 9, abs=1e-12)
  assert m["AR"] == pytest.approx(1 / 3, abs=1e-12)
  assert m["AP"] == pytest.approx(1 / 3, abs=1e-12)
  assert m["mIoU"] == pytest.approx(0.625, abs=1e-12)
  assert json.loads((tmp_path / "wd" / "metrics.json").read_text())["AR"] == m["AR"]
  assert (tmp_path / "wd" / "figures" / "img_a.png").exists()   # small images draw too


def test_img_names_subset(tmp_path):
  keys = SpelkeBenchReader(DEMO).keys()
  m = rsb.run(_config(img_names=f"{keys[4]}, {keys[1]}"), tmp_path)
  assert [r["name"] for r in m["per_image"]] == [keys[1], keys[4]]
  assert sorted(p.stem for p in (tmp_path / "predictions").glob("*.h5")) == [keys[1], keys[4]]


# ---- resume -------------------------------------------------------------------------------------

class _FailingFloodFill(models.FloodFill):
  """Flood fill that raises for the poke points in `fail_points` (a simulated crash)."""

  fail_points: set = set()

  def run_inference(self, image, poke_point):
    if tuple(int(v) for v in poke_point) in self.fail_points:
      raise RuntimeError("simulated crash")
    return super().run_inference(image, poke_point)


@models.register("test_failing_floodfill")
def _failing(config):
  return _FailingFloodFill(config.get("floodfill_tolerance", 0.1))


def test_resume_after_max_images_and_leftovers(tmp_path):
  full = rsb.run(_config(), tmp_path / "full")
  keys = SpelkeBenchReader(DEMO).keys()
  wd = tmp_path / "resumed"
  first = rsb.run(_config(max_images=2), wd)
  assert first["num_images"] == 2
  pred_dir = wd / "predictions"
  mtimes = {k: (pred_dir / f"{k}.h5").stat().st_mtime_ns for k in keys[:2]}
  # Leftovers of a killed run: a temp file, a file without predictions, a file that is no h5.
  (pred_dir / f"{keys[2]}.h5.tmp").write_bytes(b"half written")
  with h5py.File(pred_dir / f"{keys[3]}.h5", "w") as f:
    f["segment_gt"] = np.zeros((1, 4, 4), np.uint8)
  (pred_dir / f"{keys[4]}.h5").write_bytes(b"garbage")
  second = rsb.run(_config(), wd)
  assert second["timing"]["images_this_run"] == 4
  assert _metrics(wd) == _metrics(tmp_path / "full")
  assert second["AR"] == full["AR"] and second["mIoU"] == full["mIoU"]
  assert {k: (pred_dir / f"{k}.h5").stat().st_mtime_ns for k in keys[:2]} == mtimes
  assert not list(pred_dir.glob("*.tmp"))
  # Everything done: nothing is predicted again.
  third = rsb.run(_config(), wd)
  assert third["timing"]["images_this_run"] == 0 and third["AR"] == full["AR"]


def test_crash_mid_run_then_resume(tmp_path):
  reader = SpelkeBenchReader(DEMO)
  keys = reader.keys()
  bad = keys[3]
  _FailingFloodFill.fail_points = {tuple(int(v) for v in reader[bad].points[0])}
  cfg = _config(model="test_failing_floodfill")
  with pytest.raises(rsb.SpelkeBenchRunError, match=bad):
    rsb.run(cfg, tmp_path / "wd")
  pred_dir = tmp_path / "wd" / "predictions"
  assert not list(pred_dir.glob("*.tmp")) and not (pred_dir / f"{bad}.h5").exists()
  for p in pred_dir.glob("*.h5"):          # whatever was written is complete
    assert rsb.read_done(p) is not None
  assert not (tmp_path / "wd" / "metrics.json").exists()
  _FailingFloodFill.fail_points = set()
  m = rsb.run(cfg, tmp_path / "wd")
  ref = rsb.run(_config(), tmp_path / "ref")
  assert m["per_image"] == ref["per_image"] and m["AR"] == ref["AR"]
  # A workdir holding another model's predictions is refused, not mixed.
  with pytest.raises(ValueError, match="was predicted by model"):
    rsb.run(_config(model="whole_image"), tmp_path / "wd")


class _DeviceModel:
  """Flood fill computed with jax on the device given to on_device (records the devices used)."""

  made_for: list = []

  def __init__(self, device=None):
    self.device = device

  def on_device(self, device):
    _DeviceModel.made_for.append(device)
    return _DeviceModel(device)

  def run_inference(self, image, poke_point):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    img, (x, y) = models.check_inputs(image, poke_point)
    close = jax.device_put(jnp.max(jnp.abs(jnp.asarray(img) - img[y, x]), -1) <= 0.1,
                           self.device)
    assert close.devices() == {self.device}
    labels, _ = ndimage.label(np.asarray(close))
    return labels == labels[y, x]


@models.register("test_device_model")
def _device_model(config):
  del config
  return _DeviceModel()


def test_one_worker_per_local_device(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  _DeviceModel.made_for = []
  m = rsb.run(_config(model="test_device_model"), tmp_path / "wd")
  devices = jax.local_devices()
  assert _DeviceModel.made_for == devices[:6]      # 6 images: at most 6 workers
  used = set()
  for p in (tmp_path / "wd" / "predictions").glob("*.h5"):
    with h5py.File(p, "r") as f:
      used.add(f.attrs["device"])
  assert used <= {str(d) for d in devices}
  ref = rsb.run(_config(), tmp_path / "ref")
  assert m["per_image"] == ref["per_image"]        # the same flood fill, whichever device ran it


# ---- bad input ----------------------------------------------------------------------------------

def _bad_sets(tmp_path):
  good = list(SpelkeBenchReader(DEMO)[k] for k in SpelkeBenchReader(DEMO).keys()[:3])
  garbage = tmp_path / "garbage.h5"
  garbage.write_bytes(b"this is not an hdf5 file" * 10)
  no_centroid = tmp_path / "no_centroid.h5"
  write_spelkebench_h5(no_centroid, good)
  with h5py.File(no_centroid, "a") as f:       # the last key in sorted order: no partial output
    del f[good[-1].key]["centroid"]
  outside = tmp_path / "outside.h5"
  write_spelkebench_h5(outside, good[:2] + [Example(good[2].key, good[2].image, good[2].segments,
                                                    good[2].points + 300)])
  return {
      "missing": (["--config.dataset_path=/nonexistent/spelke_bench.h5"], "does not exist"),
      "garbage": ([f"--config.dataset_path={garbage}"], "not an HDF5 file"),
      "no_centroid": ([f"--config.dataset_path={no_centroid}"],
                      f"group '{good[-1].key}' has no key 'centroid'"),
      "outside": ([f"--config.dataset_path={outside}"], "lies outside the 256x256 image"),
      "model": (["--config.model=nope"], "unknown SpelkeBench model 'nope'; known models: "),
      "img_names": (["--config.img_names=demo_000,nope"], "img_names not in the dataset: ['nope']"),
  }


@pytest.mark.parametrize("case", ["missing", "garbage", "no_centroid", "outside", "model",
                                  "img_names"])
def test_bad_input_fails_cleanly(tmp_path, case):
  flags, message = _bad_sets(tmp_path)[case]
  wd = tmp_path / "wd"
  out = _main(wd, *flags)
  assert out.returncode != 0
  assert message in out.stderr, out.stderr[-2000:]
  if case == "model":
    assert "floodfill" in out.stderr and "whole_image" in out.stderr
  assert not (wd / "predictions").exists()
  assert not (wd / "metrics.json").exists() and not (wd / "figures").exists()


# ---- selection ----------------------------------------------------------------------------------

def test_key_selection_and_splits():
  keys = [f"k{i:02d}" for i in range(11)]
  assert rsb.select_keys(keys[::-1]) == keys
  assert rsb.select_keys(keys, ["k03", "k01"]) == ["k01", "k03"]
  assert rsb.select_keys(keys, "", 3) == keys[:3]
  with pytest.raises(ValueError, match="max_images"):
    rsb.select_keys(keys, "", -1)
  parts = [rsb.host_keys(rsb.job_keys(keys, 3, s), p, 2) for s in range(3) for p in range(2)]
  flat = [k for part in parts for k in part]
  assert sorted(flat) == keys and len(flat) == len(set(flat))


def test_figures_handle_uneven_counts():
  img = np.full((20, 30, 3), 100, np.uint8)
  gt = np.zeros((2, 20, 30), bool)
  gt[0, :10] = gt[1, 10:] = True
  pred = np.ones((3, 20, 30), bool)
  fig = rsb.image_figure("k", img, np.array([[3, 3], [3, 15]]), pred, gt)
  assert fig.dtype == np.uint8 and fig.ndim == 3
  rows = [{"AR": 0.5, "mIoU": float("nan")}, {"AR": 1.0, "mIoU": 0.2}]
  s = rsb.summary_figure("t", [("k", img, None, pred, gt, rows[0])], rows)
  assert s.dtype == np.uint8 and s.shape[1] >= 3 * 128


# ---- models -------------------------------------------------------------------------------------

def test_registry():
  assert {"floodfill", "whole_image"} <= set(models.names())
  with pytest.raises(ValueError, match=r"unknown SpelkeBench model 'nope'; known models: .*"
                                       r"floodfill.*whole_image"):
    models.build("nope", None)
  ff = models.from_config(_config(model="floodfill", floodfill_tolerance=0.25))
  assert isinstance(ff, models.FloodFill) and ff.tolerance == 0.25
  assert isinstance(ff, models.SpelkeBenchModel)
  assert models.on_device(ff, "cpu") is ff                 # no on_device: the same object
  with pytest.raises(ValueError, match="already registered"):
    models.register("floodfill")(lambda config: None)
  models.register("floodfill")(models._floodfill)          # the same factory again is fine


def test_plugin_modules_missing_is_fine_but_broken_is_not(monkeypatch, tmp_path):
  monkeypatch.setattr(models, "_PLUGIN_MODULES", ("spelke_jax.no_such_plugin_module",))
  monkeypatch.setattr(models, "_plugins_loaded", False)
  assert "floodfill" in models.names()
  (tmp_path / "broken_plugin_mod.py").write_text("import no_such_dependency_xyz\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.setattr(models, "_PLUGIN_MODULES", ("broken_plugin_mod",))
  monkeypatch.setattr(models, "_plugins_loaded", False)
  with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
    models.names()


def test_whole_image_and_input_checks():
  img = np.random.default_rng(0).random((12, 16, 3)).astype(np.float32)
  m = models.WholeImage().run_inference(img, (15, 11))
  assert m.dtype == bool and m.shape == (12, 16) and m.all()
  with pytest.raises(TypeError, match="divide uint8"):
    models.WholeImage().run_inference((img * 255).astype(np.uint8), (1, 1))
  with pytest.raises(ValueError, match=r"\(x, y\) = \(16, 0\) lies outside the 16x12 image"):
    models.FloodFill().run_inference(img, (16, 0))
  with pytest.raises(ValueError, match="outside"):
    models.FloodFill().run_inference(img, (-1, 3))
  with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
    models.FloodFill().run_inference(img[..., :2], (1, 1))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    models.FloodFill().run_inference(img * 2, (1, 1))


def test_floodfill_two_colours_returns_the_poked_region():
  red, blue = np.array([1.0, 0, 0]), np.array([0, 0, 1.0])
  img = np.empty((20, 30, 3), np.float32)
  img[:, :12] = red
  img[:, 12:] = blue
  img[5:9, 20:25] = red            # red island inside the blue half: not connected
  img[15, 12] = red                # touches the red half: connected
  img[16, 13] = red                # touches that pixel only diagonally: not 4-connected
  img[2, 3] = red + np.array([0, 0.05, 0.05], np.float32)   # within tolerance 0.1
  ff = models.FloodFill(0.1)
  got = ff.run_inference(img, (4, 10))           # (x, y): column 4, row 10
  want = np.zeros((20, 30), bool)
  want[:, :12] = True
  want[15, 12] = True
  np.testing.assert_array_equal(got, want)
  blue_region = ff.run_inference(img, (29, 0))
  np.testing.assert_array_equal(blue_region, (img == blue).all(-1))
  island = ff.run_inference(img, (22, 6))
  assert island.sum() == 20 and island[5:9, 20:25].all()
  assert models.FloodFill(0.01).run_inference(img, (3, 2)).sum() == 1   # tolerance matters


# ---- the embedded demo set ----------------------------------------------------------------------

def test_demo_set_is_small_valid_and_reproducible(tmp_path):
  assert DEMO.stat().st_size < 1.5e6
  out = subprocess.run([sys.executable, "tools/make_spelkebench_demo.py",
                        f"--out={tmp_path / 'demo.h5'}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  a, b = SpelkeBenchReader(DEMO), SpelkeBenchReader(tmp_path / "demo.h5")
  assert a.keys() == b.keys() and len(a) == 6
  for k in a.keys():
    ea, eb = a[k], b[k]
    np.testing.assert_array_equal(ea.image, eb.image)
    np.testing.assert_array_equal(ea.segments, eb.segments)
    np.testing.assert_array_equal(ea.points, eb.points)
    assert ea.image.shape == (256, 256, 3) and 2 <= len(ea.points) <= 4
    assert (ea.segments.sum(0) <= 1).all()                      # visible parts do not overlap
    for seg, (x, y) in zip(ea.segments, ea.points):
      assert seg[max(0, y - 3):y + 4, max(0, x - 3):x + 4].all()  # a safe interior point
