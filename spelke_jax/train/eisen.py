"""EISEN: train affinities from motion (and explaining-away bootstrapping), evaluate matched mIoU.

    python -m spelke_jax.main --config=configs/eisen_synth.py --workdir=out/eisen      # train
    python -m spelke_jax.main --config=configs/eisen_synth.py --config.mode=eval \
        --config.checkpoint=out/eisen --workdir=out/eisen_eval                         # evaluate

Training (the original's recipe): Adam, warmup-poly learning rate, gradient-norm clip 1.0, the
row-wise KL affinity loss summed over strides 1, 2, 4 with fresh global samples per step, targets
built from optical flow only (train/eisen_targets.py: 'motion' = the public code's single motion
source, 'motion_segments' = the paper's round 1, 'explain_away' = bootstrapping round >= 2 with
a frozen teacher loaded from `config.teacher`; the student starts from the teacher's weights).
One jitted train step over a Mesh, the batch split over the 'data' axis (BatchNorm statistics
are over the global batch, like the original's SyncBN). Orbax checkpoints every
`checkpoint_every` steps; a run restarted in the same workdir resumes.

Evaluation: sampled affinities -> KProp -> Competition -> connected components -> matched mIoU
against ground-truth instance ids (GT id 0 excluded), metrics.json (top-level `mIoU` + per-image
rows) and PNGs (image | plateau map PCA | segments | GT).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from spelke_jax.convert.convert import CONFIG_FILE
from spelke_jax.evals import matched_miou, viz
from spelke_jax.grouping import pipeline as grouping
from spelke_jax.models import eisen
from spelke_jax.models.eisen_config import EisenConfig
from spelke_jax.train import checkpoints, common, eisen_target_cache, schedules


# ---- Model and data -------------------------------------------------------------------------------

def model_config(config: ml_collections.ConfigDict) -> EisenConfig:
  return EisenConfig.from_dict(config.model.to_dict())


def build_model(config: ml_collections.ConfigDict) -> eisen.EISEN:
  return eisen.create(model_config(config), seed=config.seed)


def data_source(config: ml_collections.ConfigDict, split: str):
  """The dataset named by config.data.source (see data/video_folders.py)."""
  from spelke_jax.data import video_folders  # pylint: disable=g-import-not-at-top
  d = config.data
  if d.source == "playroom":
    return video_folders.PlayroomSource(d.root, split)
  if d.source == "folders":
    return video_folders.FolderSource(d.root, frames_dir=d.frames_dir, flow_dir=d.flow_dir,
                                      gt_dir=d.gt_dir or None)
  if d.source == "synthetic_h5":
    return video_folders.SyntheticH5Source(d.train_path if split == "train" else d.eval_path)
  raise ValueError(f"unknown data.source {d.source!r} (synthetic | synthetic_h5 | playroom | "
                   "folders)")


def train_batches(config: ml_collections.ConfigDict, start_step: int) -> Iterator[dict]:
  """Host batches {'image' uint8, 'flow' px} for this process, resumed at `start_step`."""
  d = config.data
  pi, pc = jax.process_index(), jax.process_count()
  local = config.batch_size // pc
  if d.source == "synthetic":
    from spelke_jax.data import pipeline  # pylint: disable=g-import-not-at-top
    stream = pipeline.make_synthetic_stream(d.seed, d.resolution, local, start=start_step * local,
                                            process_index=pi, process_count=pc,
                                            **dict(d.get("scene_kwargs", {})))
    for b in stream:
      yield {"image": b["frame0"], "flow": b["flow"]}
    return
  from spelke_jax.data import video_folders  # pylint: disable=g-import-not-at-top
  src = data_source(config, "train")
  it = video_folders.batches(src, local, d.resolution, seed=d.seed, process_index=pi,
                             process_count=pc)
  for _ in range(start_step):  # deterministic order: skip what a resumed run already saw
    next(it)
  yield from it


# ---- Train step -----------------------------------------------------------------------------------

def make_optimizer(model: eisen.EISEN, config: ml_collections.ConfigDict) -> nnx.Optimizer:
  lr = schedules.warmup_poly(config.lr, config.num_steps, warmup_factor=config.warmup_factor,
                             warmup_iters=config.warmup_steps, power=config.lr_power)
  tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                   optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8))
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def loss_fn(model: eisen.EISEN, images, target, rng, mcfg: EisenConfig, levels: int):
  """Multi-scale affinity loss of a batch: images uint8 [B,H,W,3], target int [B,H,W] ids."""
  k_drop, k_samp = jax.random.split(rng)
  key, query = model(images, dropout_rng=k_drop)
  total, per_level = eisen.multiscale_loss(
      key, query, target, local_window_size=mcfg.local_window_size,
      num_samples=mcfg.num_affinity_samples, levels=levels, rng=k_samp)
  return total, per_level


def make_train_step(graphdef, mcfg: EisenConfig, levels: int):
  """jit(state, images, target, rng) -> (state, metrics); state = nnx.state((model, optimizer))."""
  @jax.jit
  def step(state, images, target, rng):
    model, optimizer = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, per_level), grads = grad_fn(model, images, target, rng, mcfg, levels)
    optimizer.update(model, grads)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               **{f"loss_l{i}": v for i, v in enumerate(per_level)}}
    return nnx.state((model, optimizer)), metrics
  return step


def make_targets_fn(config: ml_collections.ConfigDict, teacher: eisen.EISEN | None):
  """(batch, rng) -> int32 id map [B,H,W] from flow (and the frozen teacher's affinities)."""
  from spelke_jax.train import eisen_targets  # pylint: disable=g-import-not-at-top
  kind = config.targets.kind
  tcfg = config.targets

  def fn(batch, rng):
    return eisen_targets.build_targets(kind, batch, teacher=teacher, key=rng, config=tcfg)
  return fn


# ---- Train loop -----------------------------------------------------------------------------------

def train(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  mcfg = model_config(config)
  mesh, rules = common.setup_mesh(config)
  common.check_batch_size(config)
  model = build_model(config)
  teacher = None
  if config.targets.kind == "explain_away":
    if not config.teacher:
      raise ValueError("targets.kind='explain_away' needs --config.teacher=<round-1 workdir>")
    teacher = build_model(config)
    restore_weights(Path(config.teacher), teacher, config)
    teacher.eval()
  optimizer = make_optimizer(model, config)
  ckpt = checkpoints.Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every,
                                  max_to_keep=config.keep_checkpoints)
  start = ckpt.restore_latest(model, optimizer)
  init_from = config.get("init_from", "") or (config.teacher if teacher is not None else "")
  if start == 0 and init_from:  # fine-tuning; a bootstrapping round starts from its teacher
    restore_weights(Path(init_from), model, config)
    logging.info("EISEN weights initialised from %s", init_from)
  logging.info("EISEN training from step %d to %d (batch %d, %d devices, targets %s)", start,
               config.num_steps, config.batch_size, jax.device_count(), config.targets.kind)

  model.train()  # the train step's graph is in train mode (BatchNorm batch statistics, dropout)
  graphdef, state = nnx.split((model, optimizer))
  state = common.replicate(state, mesh)
  step_fn = make_train_step(graphdef, mcfg, config.model.supervision_level)
  targets_fn = make_targets_fn(config, teacher)
  writer = common.MetricWriter(workdir, config.num_steps)
  rng = jax.random.key(config.seed)
  cached = int(config.targets.get("cache_batches", 0))
  if cached > 0:  # a fixed pool of precomputed targets (eisen_target_cache.py)
    folder = eisen_target_cache.build(config, workdir, train_batches(config, 0), targets_fn,
                                      jax.random.fold_in(rng, 1 << 30))  # not a step key
    pool = eisen_target_cache.cycle(folder, cached, start)
  else:
    data = train_batches(config, start)
  metrics = {}
  for step in range(start, config.num_steps):
    step_rng = jax.random.fold_in(rng, step)
    if cached > 0:
      images, target = next(pool)
      put = common.put_batch({"image": images, "target": target}, mesh, rules)
      images, target = put["image"], put["target"]
    else:
      batch = common.put_batch(next(data), mesh, rules)
      images = batch["image"]
      target = targets_fn(batch, jax.random.fold_in(step_rng, 1))
    state, metrics = step_fn(state, images, target, jax.random.fold_in(step_rng, 0))
    common.after_step(step, config, state, metrics, writer, ckpt, (model, optimizer))
    if config.eval_every and (step + 1) % config.eval_every == 0:
      nnx.update((model, optimizer), state)
      evaluate_model(model, config, workdir / f"eval_{step + 1}", max_images=config.eval_images)
      model.train()
  ckpt.close()
  nnx.update((model, optimizer), state)
  return common.floats(metrics)


def restore_weights(path: Path, model: eisen.EISEN, config: ml_collections.ConfigDict) -> None:
  """Model weights from `path`: a converted checkpoint directory (config.json + params/, e.g.
  the shipped assets/synth_eisen) or a training workdir (its newest checkpoint; the optimizer
  state is read into a throwaway optimizer of the same configuration)."""
  path = Path(path)
  if (path / CONFIG_FILE).exists():
    from spelke_jax.convert.load import load_converted, read_meta  # pylint: disable=g-import-not-at-top
    stored = EisenConfig.from_dict(read_meta(path)["model_config"])
    arch = ("backbone", "kq_dim", "local_window_size", "supervision_level")
    diff = {k: (getattr(stored, k), getattr(model.config, k)) for k in arch
            if getattr(stored, k) != getattr(model.config, k)}
    if diff:
      raise ValueError(f"{path} holds another EISEN architecture than the config: "
                       f"{ {k: f'stored {a!r}, config {b!r}' for k, (a, b) in diff.items()} }")
    nnx.update(model, nnx.state(load_converted(path)))
    return
  ckpt = checkpoints.Checkpointer(path / "checkpoints", save_every=1)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {path / 'checkpoints'} and no converted "
                              f"checkpoint ({CONFIG_FILE}) in {path}")
    ckpt.restore(step, model, make_optimizer(model, config))
  finally:
    ckpt.close()


# ---- Evaluation -----------------------------------------------------------------------------------

def segment_images(model: eisen.EISEN, images: np.ndarray, rng: jax.Array, mcfg: EisenConfig):
  """uint8 [B,H,W,3] -> (segments int [B,h,w], plateau [B,h,w,Q]) with the model in eval mode."""
  model.eval()
  key, query = model(jnp.asarray(images))
  return group_affinities(key, query, rng, mcfg)


def group_affinities(key: jax.Array, query: jax.Array, rng: jax.Array, mcfg: EisenConfig):
  """The eval grouping of the model's (key, query) [B,h,w,C]: sampled affinities, KProp and
  Competition -> (segments int [B,h,w], plateau [B,h,w,Q])."""
  _, h, w, _ = key.shape
  k_samp, k_group = jax.random.split(rng)
  logits, idx = eisen.sample_affinities(key, query, local_window_size=mcfg.local_window_size,
                                        num_samples=mcfg.num_affinity_samples, rng=k_samp)
  res = grouping.segments_from_affinities(
      logits, idx, h=h, w=w, key=k_group, iters=mcfg.propagation_iters,
      thresh=mcfg.propagation_affinity_thresh, q=mcfg.hidden_dim, num_masks=mcfg.num_masks,
      num_rounds=mcfg.num_competition_rounds, min_area=mcfg.min_cc_area)
  return np.asarray(res.segments), np.asarray(res.plateau)


def plateau_pca_rgb(plateau: np.ndarray) -> np.ndarray:
  """[h,w,Q] -> uint8 [h,w,3]: the first 3 principal components, each scaled to 0..255."""
  x = plateau.reshape(-1, plateau.shape[-1]).astype(np.float64)
  x = x - x.mean(0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  p = x @ vt[:3].T
  p = (p - p.min(0)) / np.maximum(p.max(0) - p.min(0), 1e-9)
  return (p.reshape(plateau.shape[:2] + (p.shape[-1],)) * 255).astype(np.uint8)


def label_rgb(ids: np.ndarray) -> np.ndarray:
  """int [h,w] -> uint8 [h,w,3] with a fixed colour per id (0 black)."""
  rng = np.random.default_rng(0)
  palette = rng.integers(40, 256, (max(int(ids.max()) + 1, 1), 3)).astype(np.uint8)
  palette[0] = 0
  return palette[np.clip(ids, 0, None)]


def _mean(values) -> float:
  """Mean of the values that are not None; NaN when none are."""
  vals = [v for v in values if v is not None]
  return float(np.mean(vals)) if vals else float("nan")


SEGMENT_UPSAMPLERS = {"nearest": matched_miou.upsample_nearest,
                      "cell_centred": matched_miou.upsample_cell_centred}


def segment_upsampler(name: str):
  """config.segment_upsample -> (cells [h, w, ...], (H, W)) -> [H, W, ...]: 'nearest' (the
  original's evaluation) or 'cell_centred' (each cell centred on the pixel its target was
  sampled at; see matched_miou.upsample_cell_centred)."""
  if name not in SEGMENT_UPSAMPLERS:
    raise ValueError(f"unknown segment_upsample {name!r}; known: {sorted(SEGMENT_UPSAMPLERS)}")
  return SEGMENT_UPSAMPLERS[name]


def evaluate_model(model: eisen.EISEN, config: ml_collections.ConfigDict, out: Path, *,
                   max_images: int = 0) -> dict:
  """Matched mIoU over the eval split; metrics.json + PNGs in `out`."""
  from spelke_jax.data import video_folders  # pylint: disable=g-import-not-at-top
  mcfg = model_config(config)
  src = (video_folders.SyntheticH5Source(config.dataset_path) if config.dataset_path
         else data_source(config, "val"))
  n = len(src) if not max_images else min(max_images, len(src))
  upsample = segment_upsampler(config.get("segment_upsample", "nearest"))
  out.mkdir(parents=True, exist_ok=True)
  rows, t0 = [], time.time()
  bs = config.eval_batch_size
  for start in range(0, n, bs):
    exs = [src[i] for i in range(start, min(start + bs, n))]
    res = [video_folders.resize_example(e["image"], e["flow"], e["ids"], config.data.resolution)
           for e in exs]
    images = np.stack([r[0] for r in res])
    segs, plateau = segment_images(model, images, jax.random.key(config.seed + start), mcfg)
    for j, (e, r) in enumerate(zip(exs, res)):
      seg = upsample(segs[j], r[2].shape)
      miou, best, num_gt = matched_miou.image_miou(r[2], seg)
      gt_ids = np.unique(r[2][r[2] > 0])
      dragged = int(e.get("dragged", 0))
      rows.append({"key": e["key"], "mIoU": None if np.isnan(miou) else float(miou),
                   "has_agent": bool(e.get("has_agent", False)),
                   # best IoU of the object the agent drags (None: no agent, or gone at this size)
                   "dragged_IoU": float(best[np.searchsorted(gt_ids, dragged)])
                                  if dragged in gt_ids else None,
                   "num_gt_objects": int(num_gt), "num_segments": int(len(np.unique(segs[j])))})
      if config.write_figures:
        viz.save_png(out / "figures" / f"{start + j:05d}.png", viz.side_by_side(
            [r[0], upsample(plateau_pca_rgb(plateau[j]), r[2].shape), label_rgb(seg),
             label_rgb(r[2])]))
    logging.info("eval %d/%d images (%.1f s)", min(start + bs, n), n, time.time() - t0)
  def mean_miou(selected):
    return _mean([r["mIoU"] for r in selected])
  agent = [r for r in rows if r["has_agent"]]
  metrics = {"mIoU": mean_miou(rows), "num_images": len(rows),
             # scenes where an agent drags an object: what explaining away is for
             "mIoU_agent_scenes": mean_miou(agent), "num_agent_scenes": len(agent),
             "mIoU_other_scenes": mean_miou([r for r in rows if not r["has_agent"]]),
             # mean best IoU of the dragged objects: the merges explaining away should undo
             "IoU_dragged_objects": _mean([r["dragged_IoU"] for r in rows]),
             "per_image": rows}
  viz.save_text(out / "metrics.json", json.dumps(metrics, indent=2))
  print(f"EISEN matched mIoU over {len(rows)} images: {metrics['mIoU']:.4f} (agent scenes "
        f"{metrics['mIoU_agent_scenes']:.4f} over {len(agent)}, others "
        f"{metrics['mIoU_other_scenes']:.4f}; dragged objects IoU "
        f"{metrics['IoU_dragged_objects']:.4f}) ({out / 'metrics.json'})")
  return metrics


def evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  """The eval mode: weights from config.checkpoint (a training workdir) or the workdir itself."""
  model = build_model(config)
  restore_weights(Path(config.checkpoint or workdir), model, config)
  return evaluate_model(model, config, workdir, max_images=config.eval_images)


def run(config: ml_collections.ConfigDict, workdir: Path) -> Any:
  return train(config, workdir) if config.mode == "train" else evaluate(config, workdir)
