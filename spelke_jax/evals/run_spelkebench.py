"""The `spelkebench` mode: inference over SpelkeBench, then the original's evaluation.

    python -m spelke_jax.main --config=configs/spelkebench.py --workdir=out/spelkebench_demo

One program replaces the original's run_inference.py / run_inference_parallel.py /
evaluate_folder.py:
  * keys: sorted; `img_names` subset; the first `max_images`; the original's seed-42 split
    `shard_keys(keys, num_splits, split_num)` (one job each); then `[process_index::process_count]`
    over the hosts of a job; on a host, one worker thread per local jax device, each with its own
    `model.on_device(device)`, pulling images from a shared queue.
  * per image: one `run_inference(image float32 [H,W,3] in [0,1], (x, y))` per GT centroid;
    `<workdir>/predictions/<key>.h5` with segment_pred uint8 [N,H,W], segment_gt uint8 [N,H,W],
    probe_points int64 [N,2] (x, y), image uint8 [H,W,3] (gzip; attrs: model, seconds), written to
    `<key>.h5.tmp` then os.replace'd. Existing complete files are skipped (a killed run resumes;
    the original's `segments` duplicate of segment_gt is not written).
  * process 0 (after all hosts finish): the metrics of `spelke_jax.evals.spelkebench`
    (image_metrics / dataset_metrics, as evaluate_folder) over the selected keys' predictions ->
    `metrics.json`; prints AP, AR, mIoU; `figures/<key>.png` and `summary.png`.
Multi-host runs need a workdir shared by the hosts (process 0 evaluates every host's files).
Everything is checked (model name, dataset file, every example of this job) before the
predictions folder is created, so bad input leaves no partial output.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from spelke_jax.data.spelkebench import Example, SpelkeBenchError, SpelkeBenchReader, shard_keys
from spelke_jax.evals import models, viz
from spelke_jax.evals.spelkebench import dataset_metrics, image_metrics, write_metrics_json

PRED_DIR = "predictions"
FIG_DIR = "figures"
TMP_SUFFIX = ".tmp"
SUMMARY_IMAGES = 8

PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                    (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127),
                    (188, 189, 34), (23, 190, 207)], np.uint8)


class SpelkeBenchRunError(RuntimeError):
  """An image failed during inference; the message names the image and the model."""


# ---- key selection ----------------------------------------------------------------------------

def parse_names(value: Any) -> list[str]:
  """'a,b' or ['a', 'b'] -> ['a', 'b'] (blank entries dropped)."""
  if value is None:
    return []
  items = value.split(",") if isinstance(value, str) else list(value)
  return [str(s).strip() for s in items if str(s).strip()]


def select_keys(all_keys: Sequence[str], img_names: Any = "", max_images: int = 0) -> list[str]:
  """Sorted keys, restricted to `img_names` (unknown names: ValueError), then the first
  `max_images` (0 = all)."""
  keys = sorted(all_keys)
  names = parse_names(img_names)
  if names:
    known = set(keys)
    unknown = [n for n in names if n not in known]
    if unknown:
      raise ValueError(f"img_names not in the dataset: {unknown[:10]}"
                       f"{' ...' if len(unknown) > 10 else ''} (it has {len(keys)} keys, e.g. "
                       f"{keys[:3]})")
    wanted = set(names)
    keys = [k for k in keys if k in wanted]
  max_images = int(max_images)
  if max_images < 0:
    raise ValueError(f"max_images must be >= 0 (0 = all), got {max_images}")
  return keys[:max_images] if max_images else keys


def job_keys(keys: Sequence[str], num_splits: int, split_num: int) -> list[str]:
  """This job's keys: the original's split (sorted, seed-42 shuffle, array_split)."""
  return shard_keys(keys, int(num_splits), int(split_num))


def host_keys(keys: Sequence[str], process_index: int, process_count: int) -> list[str]:
  """A host's share of its job's keys: keys[process_index::process_count]."""
  return list(keys)[process_index::process_count]


# ---- prediction files ---------------------------------------------------------------------------

def prediction_path(pred_dir: Path, key: str) -> Path:
  return Path(pred_dir) / f"{key}.h5"


def _tmp_path(path: Path) -> Path:
  return path.with_name(path.name + TMP_SUFFIX)


def read_done(path: Path) -> dict[str, Any] | None:
  """The attrs of a complete prediction file (segment_pred [N,H,W] and segment_gt present),
  or None when it is missing or unreadable (it is then predicted again)."""
  import h5py  # pylint: disable=g-import-not-at-top
  if not path.is_file():
    return None
  try:
    with h5py.File(path, "r") as f:
      if "segment_pred" not in f or "segment_gt" not in f:
        return None
      if f["segment_pred"].ndim != 3 or f["segment_pred"].shape[1:] != f["segment_gt"].shape[1:]:
        return None
      return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
  except OSError:
    return None


def write_prediction(path: Path, ex: Example, pred: np.ndarray, attrs: dict[str, Any]) -> None:
  """Writes one image's prediction file atomically (`<name>.tmp`, then os.replace)."""
  import h5py  # pylint: disable=g-import-not-at-top
  tmp = _tmp_path(path)
  try:
    with h5py.File(tmp, "w") as f:
      f.create_dataset("segment_pred", data=np.asarray(pred, bool).astype(np.uint8),
                       compression="gzip")
      f.create_dataset("segment_gt", data=ex.segments.astype(np.uint8), compression="gzip")
      f.create_dataset("probe_points", data=ex.points.astype(np.int64), compression="gzip")
      f.create_dataset("image", data=ex.image, compression="gzip")
      for k, v in attrs.items():
        f.attrs[k] = v
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def read_prediction(path: Path) -> dict[str, np.ndarray]:
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(path, "r") as f:
    out = {k: f[k][()] for k in ("segment_pred", "segment_gt")}
    out["probe_points"] = f["probe_points"][()] if "probe_points" in f else None
    out["image"] = f["image"][()] if "image" in f else None
  return out


# ---- inference ----------------------------------------------------------------------------------

def predict_image(model: models.SpelkeBenchModel, ex: Example) -> np.ndarray:
  """One `run_inference` per GT point -> bool [N,H,W]."""
  h, w = ex.image.shape[:2]
  image01 = ex.image.astype(np.float32) / np.float32(255.0)
  image01.flags.writeable = False
  out = []
  for i, (x, y) in enumerate(ex.points.tolist()):
    m = np.asarray(model.run_inference(image01, (int(x), int(y))))
    if m.shape != (h, w):
      raise ValueError(f"run_inference returned a mask of shape {m.shape} for point {i} "
                       f"(x, y) = ({x}, {y}); expected ({h}, {w})")
    if m.dtype != bool:
      if not np.all((m == 0) | (m == 1)):
        raise ValueError(f"run_inference returned a non-binary {m.dtype} mask for point {i}")
      m = m != 0
    out.append(m)
  return np.stack(out) if out else np.zeros((0, h, w), bool)


def _worker(model, device, reader, read_lock, work, results, stop, pred_dir, fig_dir,
            model_name):
  with jax.default_device(device):
    while not stop.is_set():
      try:
        key = work.get_nowait()
      except queue.Empty:
        return
      try:
        with read_lock:
          ex = reader[key]
        t0 = time.perf_counter()
        pred = predict_image(model, ex)
        dt = time.perf_counter() - t0
        write_prediction(prediction_path(pred_dir, key), ex, pred,
                         {"model": model_name, "seconds": dt, "device": str(device)})
        if fig_dir is not None:
          _write_image_figure(fig_dir, key, ex.image, ex.points, pred, ex.segments)
        results.put((key, dt, None))
      except BaseException as e:  # pylint: disable=broad-except
        stop.set()
        results.put((key, 0.0, e))
        return


def _fmt_eta(seconds: float) -> str:
  if not np.isfinite(seconds):
    return "?"
  seconds = int(round(seconds))
  return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def run_inference_pool(model, devices, reader, keys, pred_dir, fig_dir, model_name,
                       num_done=0, log_every=10) -> float:
  """Predicts `keys` with one thread per device; returns the seconds spent."""
  work: queue.Queue = queue.Queue()
  for k in keys:
    work.put(k)
  results: queue.Queue = queue.Queue()
  stop = threading.Event()
  read_lock = threading.Lock()
  with read_lock:
    reader.keys()   # opens the file in this thread before the workers share it
  devices = list(devices)[:max(1, len(keys))]
  threads = []
  for d in devices:
    t = threading.Thread(target=_worker, daemon=True, name=f"spelkebench-{d}",
                         args=(models.on_device(model, d), d, reader, read_lock, work, results,
                               stop, pred_dir, fig_dir, model_name))
    t.start()
    threads.append(t)
  total = num_done + len(keys)
  t0 = time.perf_counter()
  bar = tqdm(total=total, initial=num_done, unit="img", desc=f"spelkebench[{model_name}]",
             mininterval=1.0, dynamic_ncols=True)
  error = None
  interrupted = True
  try:
    for n in range(1, len(keys) + 1):
      while True:
        try:
          key, _, exc = results.get(timeout=0.5)
          break
        except queue.Empty:
          if not any(t.is_alive() for t in threads) and results.empty():
            raise SpelkeBenchRunError("all inference workers stopped unexpectedly")
      if exc is not None:
        error = SpelkeBenchRunError(f"image {key!r} (model {model_name!r}) failed: "
                                    f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        break
      bar.update(1)
      if n % max(1, int(log_every)) == 0 or n == len(keys):
        el = time.perf_counter() - t0
        eta = el / n * (len(keys) - n)
        logging.info("spelkebench: %d/%d images (%d this run, %.2f s/img), ETA %s",
                     num_done + n, total, n, el / n, _fmt_eta(eta))
    interrupted = False
  finally:
    stop.set()
    bar.close()
    if not interrupted:  # workers finish (and write) the image they hold; on ^C they are daemons
      for t in threads:
        t.join()
  if error is not None:
    raise error
  return time.perf_counter() - t0


# ---- figures ------------------------------------------------------------------------------------

def _color(i: int) -> tuple[int, ...]:
  return tuple(int(c) for c in PALETTE[i % len(PALETTE)])


def _caption(tile: np.ndarray, text: str, height: int = 14) -> np.ndarray:
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  strip = Image.new("RGB", (tile.shape[1], height), (255, 255, 255))
  ImageDraw.Draw(strip).text((2, 1), text, fill=(0, 0, 0))
  return np.concatenate([np.asarray(strip, np.uint8), tile], 0)


def _resize_nearest(a: np.ndarray, h: int, w: int) -> np.ndarray:
  rows = np.minimum((np.arange(h) * a.shape[0]) // h, a.shape[0] - 1)
  cols = np.minimum((np.arange(w) * a.shape[1]) // w, a.shape[1] - 1)
  return a[rows][:, cols]


def _vstack(rows: Sequence[np.ndarray], pad: int = 4) -> np.ndarray:
  w = max(r.shape[1] for r in rows)
  out = []
  for i, r in enumerate(rows):
    if r.shape[1] < w:
      r = np.concatenate([r, np.full((r.shape[0], w - r.shape[1], 3), 255, np.uint8)], 1)
    out.append(r)
    if i + 1 < len(rows):
      out.append(np.full((pad, w, 3), 255, np.uint8))
  return np.concatenate(out, 0)


def _scaled(image, points, side):
  """Image resized (nearest) so its longer side is `side`, points mapped to pixel centres."""
  h, w = image.shape[:2]
  s = side / max(h, w)
  nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
  img = _resize_nearest(image, nh, nw)
  pts = [] if points is None else [((x + 0.5) * nw / w - 0.5, (y + 0.5) * nh / h - 0.5)
                                    for x, y in np.asarray(points).tolist()]
  return img, pts, (nh, nw)


def image_figure(key: str, image: np.ndarray, points, pred: np.ndarray, gt: np.ndarray,
                 per_row: int = 8) -> np.ndarray:
  """[H',W',3] uint8: the image with its poke points, then per point the prediction (top) and
  the ground truth (bottom) over the image, captioned with IoU(pred i, gt i)."""
  side = max(96, max(image.shape[:2]))
  img, pts, (nh, nw) = _scaled(image, points, side)
  r = max(2, side // 64)
  met = image_metrics(gt, pred)
  iou = met["iou"]
  first = img
  for i, p in enumerate(pts):
    first = viz.draw_point(first, p, _color(i), radius=r)
  first = _caption(first, f"{key} AR {met['AR']:.2f} mIoU {met['mIoU']:.2f}")
  blank = np.full_like(first, 255)
  n = max(len(pred), len(gt))

  def tile(masks, i, label):
    if i >= len(masks):
      return blank
    t = viz.overlay_mask(img, _resize_nearest(masks[i] != 0, nh, nw), _color(i), alpha=0.55)
    if i < len(pts):
      t = viz.draw_point(t, pts[i], _color(i), radius=r)
    return _caption(t, label)

  rows = []
  for start in range(0, max(n, 1), per_row):
    idx = range(start, min(n, start + per_row))
    top = [first if start == 0 else blank]
    top += [tile(pred, i, f"pred {i}" + (f" IoU {iou[i, i]:.2f}" if i < iou.shape[0] else ""))
            for i in idx]
    bottom = [blank] + [tile(gt, i, f"GT {i}") for i in idx]
    rows += [viz.side_by_side(top), viz.side_by_side(bottom)]
  return _vstack(rows)


def _write_image_figure(fig_dir: Path, key, image, points, pred, gt) -> Path:
  return viz.save_png(Path(fig_dir) / f"{key}.png", image_figure(key, image, points, pred, gt))


def _all_masks(img: np.ndarray, masks: np.ndarray, shape) -> np.ndarray:
  for i, m in enumerate(masks):
    img = viz.overlay_mask(img, _resize_nearest(m != 0, *shape), _color(i), alpha=0.5)
  return img


def _bar_strip(values: Sequence[float], width: int, color, title: str,
               height: int = 56) -> np.ndarray:
  """Per-image values in [0, 1] as bars (nan: none) with a caption."""
  n = len(values)
  bw = max(1, min(24, width // max(n, 1)))
  width = max(width, n * bw)
  strip = np.full((height, width, 3), 255, np.uint8)
  strip[0, :] = strip[height // 2, :] = 225           # the 1.0 and 0.5 lines
  strip[-1, :] = 0
  for i, v in enumerate(values):
    if not np.isfinite(v):
      continue
    top = height - 1 - int(round(float(np.clip(v, 0, 1)) * (height - 1)))
    strip[top:height - 1, i * bw:i * bw + max(1, bw - (1 if bw > 3 else 0))] = color
  return _caption(strip, title)


def summary_figure(title: str, thumbs: Sequence[tuple], rows: Sequence[dict],
                   side: int = 128, per_line: int = 2) -> np.ndarray:
  """The first images (image + pokes | all predictions | all GT) and per-image AR / mIoU bars."""
  triplets = []
  for key, image, points, pred, gt, row in thumbs:
    img, pts, shape = _scaled(image, points, side)
    with_pts = img
    for i, p in enumerate(pts):
      with_pts = viz.draw_point(with_pts, p, _color(i), radius=max(2, side // 64))
    triplets.append(viz.side_by_side([
        _caption(with_pts, key), _caption(_all_masks(img, pred, shape), f"pred AR {row['AR']:.2f}"),
        _caption(_all_masks(img, gt, shape), f"GT mIoU {row['mIoU']:.2f}")], pad=2))
  lines = [viz.side_by_side(triplets[i:i + per_line], pad=10)
           for i in range(0, len(triplets), per_line)]
  width = max([ln.shape[1] for ln in lines] + [3 * side])
  ar = [float(r["AR"]) for r in rows]
  miou = [float(r["mIoU"]) for r in rows]
  parts = [_caption(np.full((2, width, 3), 255, np.uint8), title, height=16)]
  parts += lines
  parts.append(_bar_strip(ar, width, (31, 119, 180),
                          f"AR per image ({len(rows)} images, sorted by name), mean "
                          f"{np.mean(ar):.3f}"))
  parts.append(_bar_strip(miou, width, (255, 127, 14), f"mIoU per image, mean "
                          f"{np.nanmean(miou) if np.isfinite(miou).any() else float('nan'):.3f}"))
  return _vstack(parts, pad=6)


# ---- evaluation ---------------------------------------------------------------------------------

def evaluate(pred_dir: Path, keys: Sequence[str], fig_dir: Path | None = None,
             summary_path: Path | None = None, title: str = "SpelkeBench") -> dict[str, Any]:
  """Metrics over the prediction files of `keys` (sorted; missing files are listed): rows
  as evaluate_folder (name, AP, AR, mIoU, num_gt, num_pred) and their plain means. Writes the
  missing per-image figures into `fig_dir` and the summary PNG when given."""
  rows, missing, thumbs = [], [], []
  for key in sorted(keys):
    path = prediction_path(pred_dir, key)
    if read_done(path) is None:
      missing.append(key)
      continue
    d = read_prediction(path)
    try:
      r = image_metrics(d["segment_gt"], d["segment_pred"])
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e
    row = {"name": key, "AP": r["AP"], "AR": r["AR"], "mIoU": r["mIoU"],
           "num_gt": r["num_gt"], "num_pred": r["num_pred"]}
    rows.append(row)
    if d["image"] is None:
      continue
    if fig_dir is not None and not (Path(fig_dir) / f"{key}.png").exists():
      _write_image_figure(fig_dir, key, d["image"], d["probe_points"], d["segment_pred"],
                          d["segment_gt"])
    if summary_path is not None and len(thumbs) < SUMMARY_IMAGES:
      thumbs.append((key, d["image"], d["probe_points"], d["segment_pred"], d["segment_gt"], row))
  if not rows:
    return {"num_images": 0, "missing": missing, "per_image": []}
  out: dict[str, Any] = dataset_metrics(rows)
  out["num_images"] = len(rows)
  out["missing"] = missing
  out["per_image"] = rows
  if summary_path is not None:
    title = f"{title}  {len(rows)} images  AR {out['AR']:.4f}  mIoU {out['mIoU']:.4f}"
    viz.save_png(summary_path, summary_figure(title, thumbs, rows))
  return out


# ---- the mode -----------------------------------------------------------------------------------

def run(config, workdir) -> dict[str, Any]:
  """Runs the `spelkebench` mode; returns the metrics on process 0 (else a short status)."""
  workdir = Path(workdir)
  model_name = str(config.model)
  models.check_name(model_name)
  dataset_path = str(config.dataset_path)
  reader = SpelkeBenchReader(dataset_path)
  all_keys = reader.keys()
  if not all_keys:
    raise SpelkeBenchError(f"{dataset_path}: holds no image groups")
  keys = select_keys(all_keys, config.get("img_names", ""), config.get("max_images", 0))
  mine_job = job_keys(keys, config.get("num_splits", 1), config.get("split_num", 0))
  pi, pc = jax.process_index(), jax.process_count()
  mine = host_keys(mine_job, pi, pc)
  log_every = int(config.get("log_every", 10))
  write_figures = bool(config.get("write_figures", True))

  # Check every example of this job before writing anything (errors name group and key).
  t0 = time.perf_counter()
  for k in mine_job:
    reader[k]
  logging.info("spelkebench: %s: %d keys, %d selected, %d in split %d/%d, %d on host %d/%d "
               "(checked in %.1f s)", dataset_path, len(all_keys), len(keys), len(mine_job),
               config.get("split_num", 0), config.get("num_splits", 1), len(mine), pi, pc,
               time.perf_counter() - t0)

  pred_dir = workdir / PRED_DIR
  fig_dir = workdir / FIG_DIR if write_figures else None
  done, todo = [], []
  for k in mine:
    attrs = read_done(prediction_path(pred_dir, k))
    if attrs is None:
      todo.append(k)
      continue
    if attrs.get("model", model_name) != model_name:
      raise ValueError(f"{prediction_path(pred_dir, k)} was predicted by model "
                       f"{attrs['model']!r}, not {model_name!r}: use another workdir")
    done.append(k)

  seconds = 0.0
  if todo:
    model = models.from_config(config)
    devices = jax.local_devices()
    pred_dir.mkdir(parents=True, exist_ok=True)
    for k in mine:  # temp files of a killed run (only this host's keys: others may be writing)
      _tmp_path(prediction_path(pred_dir, k)).unlink(missing_ok=True)
    logging.info("spelkebench: predicting %d images (%d already done) with model %s on %d "
                 "device(s)", len(todo), len(done), model_name, len(devices))
    seconds = run_inference_pool(model, devices, reader, todo, pred_dir, fig_dir, model_name,
                                 num_done=len(done), log_every=log_every)
  else:
    logging.info("spelkebench: all %d images of this host already predicted", len(mine))
  reader.close()

  if pc > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("spelkebench_inference_done")
  if pi != 0:
    return {"process_index": pi, "num_predicted": len(todo), "num_skipped": len(done)}

  title = f"SpelkeBench  model={model_name}  {os.path.basename(dataset_path)}"
  metrics = evaluate(pred_dir, mine_job, fig_dir,
                     workdir / "summary.png" if write_figures and pred_dir.is_dir() else None,
                     title)
  if not metrics["num_images"]:
    logging.warning("spelkebench: no predictions to evaluate in %s", pred_dir)
    return metrics
  if metrics["missing"]:
    logging.warning("spelkebench: %d selected images have no prediction yet (other hosts or "
                    "splits?): %s", len(metrics["missing"]), metrics["missing"][:5])
  metrics.update(model=model_name, dataset_path=dataset_path, num_selected=len(mine_job),
                 timing={"images_this_run": len(todo), "seconds_this_run": seconds,
                         "seconds_per_image": seconds / len(todo) if todo else None,
                         "devices": len(jax.local_devices()), "processes": pc})
  write_metrics_json(workdir / "metrics.json", metrics)
  print(f"SpelkeBench ({model_name}, {metrics['num_images']} images of {dataset_path}):")
  print(f"AP: {metrics['AP']:.4f}")
  print(f"AR: {metrics['AR']:.4f}")
  print(f"mIoU: {metrics['mIoU']:.4f}")
  print(f"metrics: {workdir / 'metrics.json'}", flush=True)
  return metrics
