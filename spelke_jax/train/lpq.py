"""LPQ tokenizer training (the RGB and flow autoencoders with LFQ) on the synthetic Spelke world.

    python -m spelke_jax.main --config=configs/train_lpq_synth.py:rgb --workdir=out/lpq_rgb
    python -m spelke_jax.main --config=configs/train_lpq_synth.py:flow --workdir=out/lpq_flow
    python -m spelke_jax.main --config=configs/train_lpq_synth.py:flow --config.mode=eval \
        --config.checkpoint=out/lpq_flow --workdir=out/lpq_flow_eval          # re-evaluate/export

The original ships no LPQ training code; its model (local_patch_quantizer/model.py) returns
F.mse_loss(decoded, x) and vector-quantize-pytorch's LFQ aux loss (spherical=True,
entropy_loss_weight 0.001, commitment_loss_weight 0.0025, diversity_gamma 1, inv_temperature
100). The loss here is the sum of the two:
  mse(decoded, x)                                        in normalised space (rgb: ImageNet
                                                         normalisation; flow: px / 20)
  + entropy_loss_weight * (mean per-token entropy - diversity_gamma * batch codebook entropy)
  + commitment_loss_weight * mean((l2norm(project_in(z)) - stopgrad(q))**2)
with straight-through codes (models/lpq.py: LPQ.train_forward). Choices of ours: no dropout (the
original's ResBlocks drop 0.1; fresh scenes every step leave nothing to overfit), AdamW with
warmup-cosine and a global-norm clip, training on random crops (crop offsets on the 8-px grid of
the LRAS patches) since the encoder is local and the decoder a small conv stack.

Data: scenes rendered on the fly (data/pipeline.make_synthetic_stream, seed config.data.seed);
rgb trains on crops of frame 0 and frame 1. The flow tokenizer must also encode the probing
pokes (constant (dx, dy) on one 8x8-px patch, |d| up to 25 px, on zero flow) while synthetic
object motion at 128 px is at most ~12 px, so flow crops are augmented (`augment_flow`):
  * with prob `scale_prob` the whole crop's flow is scaled by U[scale_min, scale_max] (zero stays
    exactly zero);
  * with prob `zero_prob` the crop's flow is replaced by zeros (a probing prompt's background);
  * 0..max_patches constant patches are pasted, side from `patch_sizes`, aligned to a grid of
    their own side, value uniform on the disc of radius `max_mag` px.
Zero flow is exact by construction of the encoder: patch conv + 1x1 ResBlocks see one 4x4 patch
each, so zero flow always maps to the same code(s), the ones `zero_flow_codes` reports; training
on large zero regions drives their decoding to ~0.

One jitted data-parallel train step over a Mesh (batch split over 'data'; the codebook entropy
is over the global batch); Orbax checkpoints with resume (the data stream and augmentation are
functions of the step, so a resumed run sees the batches a continuous one would). At the end (and
in eval mode) the tokenizer is evaluated on held-out scenes (seed config.data.eval_seed) and
exported in the original layout: <workdir>/export/{rgb|flow}_quantizer.pt, for the flow
tokenizer also flow_table.npz (token_ids, vectors, no_motion_codes), and <workdir>/metrics.json.
"""
from __future__ import annotations

import json
import math
import os
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

from spelke_jax.models import lpq as lpq_lib
from spelke_jax.models.lpq_config import LPQConfig
from spelke_jax.train import checkpoints, common, schedules

CONFIG_CLASS = {"rgb": "spelke_net.local_patch_quantizer.config.LPQConfig",
                "flow": "spelke_net.local_patch_quantizer.config.LPQFlowConfig"}
MODEL_CLASS = "spelke_net.local_patch_quantizer.model.LPQ"
PSNR_FLOOR = 1e-10


# ---- Model ----------------------------------------------------------------------------------------

def model_config(config: ml_collections.ConfigDict) -> LPQConfig:
  """LPQConfig from config.model (original field names) and config.kind."""
  return LPQConfig.from_dict(config.model.to_dict(), kind=config.kind)


def build_model(config: ml_collections.ConfigDict) -> lpq_lib.LPQ:
  return lpq_lib.create(model_config(config), seed=config.seed)


def normalize(kind: str, x: jax.Array) -> jax.Array:
  """rgb uint8 [B,H,W,3] or flow px [B,H,W,2] -> the tokenizer's normalised input."""
  return lpq_lib.normalize_rgb(x) if kind == "rgb" else lpq_lib.normalize_flow(x)


# ---- Data -----------------------------------------------------------------------------------------

def augment_flow(flow: np.ndarray, rng: np.random.Generator, aug: ml_collections.ConfigDict
                 ) -> np.ndarray:
  """flow px [B, S, S, 2] -> augmented copy (scaled, zeroed, constant patches pasted)."""
  out = np.array(flow, np.float32, copy=True)
  b, s = out.shape[0], out.shape[1]
  for i in range(b):
    if rng.random() < aug.zero_prob:
      out[i] = 0.0
    elif rng.random() < aug.scale_prob:
      out[i] *= np.float32(rng.uniform(aug.scale_min, aug.scale_max))
    for _ in range(int(rng.integers(0, aug.max_patches + 1))):
      side = int(rng.choice(list(aug.patch_sizes)))
      if side > s:
        continue
      y, x = (int(rng.integers(0, s // side)) * side for _ in range(2))
      r = aug.max_mag * math.sqrt(rng.random())
      a = rng.uniform(0.0, 2 * math.pi)
      out[i, y:y + side, x:x + side] = (r * math.cos(a), r * math.sin(a))
  return out


def random_crops(images: np.ndarray, crop: int, rng: np.random.Generator, grid: int = 8
                 ) -> np.ndarray:
  """[B, R, R, C] -> [B, crop, crop, C], offsets on a `grid`-px lattice (the full image if
  crop >= R)."""
  r = images.shape[1]
  if crop >= r:
    return np.asarray(images)
  n = (r - crop) // grid + 1
  out = []
  for im in images:
    y, x = (int(rng.integers(0, n)) * grid for _ in range(2))
    out.append(im[y:y + crop, x:x + crop])
  return np.stack(out)


def scenes_per_step(config: ml_collections.ConfigDict) -> int:
  """Scenes rendered per global step: batch_size / crops_per_scene."""
  cps = int(config.data.crops_per_scene)
  if config.batch_size % (cps * jax.process_count()):
    raise ValueError(f"batch_size {config.batch_size} must divide by crops_per_scene ({cps}) x "
                     f"{jax.process_count()} processes")
  return config.batch_size // cps


def batch_from_scenes(kind: str, scenes: dict, config: ml_collections.ConfigDict,
                      rng: np.random.Generator) -> np.ndarray:
  """Rendered scenes {'frame0', 'frame1', 'flow'} -> one host batch of crops: rgb uint8
  [b, c, c, 3] (crops of frame 0 and frame 1 alternately) or flow px [b, c, c, 2] (augmented)."""
  d = config.data
  cps = int(d.crops_per_scene)
  if kind == "rgb":
    frames = np.stack([scenes["frame0"], scenes["frame1"]], axis=1)   # [n, 2, R, R, 3]
    picks = [frames[i, j % 2] for i in range(frames.shape[0]) for j in range(cps)]
    return random_crops(np.stack(picks), d.crop, rng)
  flows = np.repeat(scenes["flow"], cps, axis=0)
  return augment_flow(random_crops(flows, d.crop, rng), rng, d.flow_aug)


def train_batches(config: ml_collections.ConfigDict, start_step: int) -> Iterator[np.ndarray]:
  """This process's host batches from `start_step` on; batch t depends only on (seed, t)."""
  from spelke_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  pi, pc = jax.process_index(), jax.process_count()
  n = scenes_per_step(config)
  stream = pipeline.make_synthetic_stream(d.seed, d.resolution, n // pc, start=start_step * n,
                                          process_index=pi, process_count=pc,
                                          **dict(d.get("scene_kwargs", {})))
  for step, scenes in enumerate(stream, start=start_step):
    rng = np.random.default_rng((int(config.seed), step, pi))
    yield batch_from_scenes(config.kind, scenes, config, rng)


# ---- Train step -----------------------------------------------------------------------------------

def make_optimizer(model: lpq_lib.LPQ, config: ml_collections.ConfigDict) -> nnx.Optimizer:
  """AdamW (no decay on biases / LayerNorm) with warmup-cosine, global-norm clip."""
  lr = schedules.warmup_cosine(config.lr, config.num_steps, warmup_iters=config.warmup_steps,
                               final_fraction=config.final_lr_fraction)
  decay_mask = lambda params: jax.tree.map(lambda p: jnp.ndim(p) > 1, params)
  tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                   optax.adamw(lr, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                               mask=decay_mask))
  return nnx.Optimizer(model, tx, wrt=nnx.Param)


def code_usage(indices: jax.Array, vocab_size: int) -> tuple[jax.Array, jax.Array]:
  """int codes [...] -> (number of distinct codes, perplexity exp(H(code histogram)))."""
  hist = jnp.zeros((vocab_size,), jnp.float32).at[indices.reshape(-1)].add(1.0)
  p = hist / jnp.maximum(jnp.sum(hist), 1.0)
  h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  return jnp.sum(hist > 0).astype(jnp.float32), jnp.exp(h)


def recon_metrics(kind: str, decoded: jax.Array, x: jax.Array) -> dict[str, jax.Array]:
  """Quality of a reconstruction (both normalised): rgb PSNR in dB on [0, 1] RGB (clamped as
  decode_image); flow mean end-point error in px."""
  if kind == "rgb":
    err = jnp.mean((lpq_lib.denormalize_rgb(decoded) - lpq_lib.denormalize_rgb(x)) ** 2)
    return {"psnr": -10.0 * jnp.log10(jnp.maximum(err, PSNR_FLOOR))}
  d = lpq_lib.denormalize_flow(decoded) - lpq_lib.denormalize_flow(x)
  return {"epe_px": jnp.mean(jnp.sqrt(jnp.sum(d * d, axis=-1)))}


def loss_fn(model: lpq_lib.LPQ, inputs: jax.Array, kind: str, loss_cfg: dict):
  """inputs rgb uint8 / flow px [B,H,W,C] -> (loss, metrics dict)."""
  x = normalize(kind, inputs)
  y, aux = model.train_forward(x, inv_temperature=loss_cfg["inv_temperature"],
                               diversity_gamma=loss_cfg["diversity_gamma"])
  mse = jnp.mean((y - x) ** 2)
  loss = (mse + loss_cfg["entropy_loss_weight"] * aux["entropy_aux_loss"]
          + loss_cfg["commitment_loss_weight"] * aux["commit_loss"])
  used, ppl = code_usage(aux["indices"], model.config.vocab_size)
  metrics = {"loss": loss, "mse": mse, **recon_metrics(kind, jax.lax.stop_gradient(y), x),
             "codes_used": used, "perplexity": ppl,
             **{k: aux[k] for k in ("per_sample_entropy", "codebook_entropy", "entropy_aux_loss",
                                    "commit_loss")}}
  return loss, metrics


def loss_settings(config: ml_collections.ConfigDict) -> dict:
  return {k: float(config.loss[k]) for k in ("entropy_loss_weight", "commitment_loss_weight",
                                             "diversity_gamma", "inv_temperature")}


def make_train_step(graphdef, kind: str, loss_cfg: dict):
  """jit(state, inputs) -> (state, metrics); state = nnx.state((model, optimizer))."""
  @jax.jit
  def step(state, inputs):
    model, optimizer = nnx.merge(graphdef, state)
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (_, metrics), grads = grad_fn(model, inputs, kind, loss_cfg)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), {**metrics, "grad_norm": optax.tree.norm(grads)}
  return step


# ---- Train loop -----------------------------------------------------------------------------------

def train(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  mesh, rules = common.setup_mesh(config)
  common.check_batch_size(config)
  model = build_model(config)
  optimizer = make_optimizer(model, config)
  ckpt = checkpoints.Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every,
                                  max_to_keep=config.keep_checkpoints)
  start = ckpt.restore_latest(model, optimizer)
  logging.info("LPQ %s training from step %d to %d (batch %d crops of %d px, %d devices): %s",
               config.kind, start, config.num_steps, config.batch_size, config.data.crop,
               jax.device_count(), model.config)
  graphdef, state = nnx.split((model, optimizer))
  state = common.replicate(state, mesh)
  step_fn = make_train_step(graphdef, config.kind, loss_settings(config))
  writer = common.MetricWriter(workdir, config.num_steps)
  data = train_batches(config, start)
  metrics, t0 = {}, time.time()
  for step in range(start, config.num_steps):
    inputs = common.put_batch({"x": next(data)}, mesh, rules)["x"]
    state, metrics = step_fn(state, inputs)
    common.after_step(step, config, state, metrics, writer, ckpt, (model, optimizer))
  ckpt.close()
  nnx.update((model, optimizer), state)
  logging.info("LPQ %s: %d steps in %.1f s", config.kind, config.num_steps - start,
               time.time() - t0)
  out = common.floats(metrics)
  if config.export:
    result = evaluate_model(model, config, workdir)
    result["train_seconds"] = time.time() - t0
    _write_json(workdir / "metrics.json", result)
    out["eval"] = result
  return out


def restore_weights(workdir: Path, model: lpq_lib.LPQ, config: ml_collections.ConfigDict) -> int:
  """The newest checkpoint of a training workdir into `model`; returns its step."""
  ckpt = checkpoints.Checkpointer(Path(workdir) / "checkpoints", save_every=1)
  try:
    step = ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {Path(workdir) / 'checkpoints'}")
    ckpt.restore(step, model, make_optimizer(model, config))
    return int(step)
  finally:
    ckpt.close()


# ---- Evaluation and export ------------------------------------------------------------------------

def held_out_scenes(config: ml_collections.ConfigDict) -> dict:
  """config.data.num_eval full-resolution scenes of seed config.data.eval_seed (never trained on)."""
  from spelke_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  if d.eval_seed == d.seed:
    raise ValueError("data.eval_seed must differ from data.seed (held-out scenes)")
  return next(pipeline.make_synthetic_stream(d.eval_seed, d.resolution, d.num_eval,
                                             num_batches=1, **dict(d.get("scene_kwargs", {}))))


def poke_maps(resolution: int, magnitudes, num_angles: int = 16, patch_px: int = 8
              ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
  """Probing-style flow maps: zeros with one patch_px-square patch (8-px grid, near the centre)
  of constant (dx, dy). Returns (maps px [N, R, R, 2], vectors [N, 2], patch top-left (y, x))."""
  y0 = x0 = (resolution // 2 // patch_px) * patch_px
  vecs = np.asarray([(m * math.cos(a), m * math.sin(a)) for m in magnitudes
                     for a in np.arange(num_angles) * 2 * math.pi / num_angles], np.float32)
  maps = np.zeros((len(vecs), resolution, resolution, 2), np.float32)
  maps[:, y0:y0 + patch_px, x0:x0 + patch_px] = vecs[:, None, None]
  return maps, vecs, (y0, x0)


def _batched(fn, model, x: np.ndarray, bs: int) -> np.ndarray:
  return np.concatenate([np.asarray(fn(model, jnp.asarray(x[i:i + bs])))
                         for i in range(0, len(x), bs)])


def evaluate_model(model: lpq_lib.LPQ, config: ml_collections.ConfigDict, workdir: Path) -> dict:
  """Held-out reconstruction and code usage; for flow also pokes, zero flow and the flow table.
  Writes the export (<workdir>/export/) and returns the metrics."""
  kind, cfg = config.kind, model.config
  t0 = time.time()
  scenes = held_out_scenes(config)
  if kind == "rgb":
    inputs = np.concatenate([scenes["frame0"], scenes["frame1"]])
  else:
    inputs = scenes["flow"].astype(np.float32)
  enc = jax.jit(lambda m, v: m.quantize(normalize(kind, v)))
  rec = jax.jit(lambda m, i: m.decode(i))
  bs = int(config.eval_batch_size)
  idx = _batched(enc, model, inputs, bs)
  dec = _batched(rec, model, idx, bs)
  x = np.asarray(normalize(kind, jnp.asarray(inputs)))
  used, ppl = code_usage(jnp.asarray(idx), cfg.vocab_size)
  res: dict[str, Any] = {
      "kind": kind, "vocab_size": cfg.vocab_size, "eval_seed": int(config.data.eval_seed),
      "num_images": int(len(inputs)), "resolution": int(config.data.resolution),
      "mse_normalised": float(np.mean((dec - x) ** 2)),
      "codes_used": int(used), "code_usage_fraction": float(used) / cfg.vocab_size,
      "perplexity": float(ppl)}
  if kind == "rgb":
    a, b = np.asarray(lpq_lib.denormalize_rgb(dec)), inputs.astype(np.float32) / 255.0
    per_image = np.mean((a - b) ** 2, axis=(1, 2, 3))
    res["psnr_db"] = float(-10 * np.log10(max(np.mean(per_image), PSNR_FLOOR)))
    res["psnr_db_mean_per_image"] = float(np.mean(-10 * np.log10(np.maximum(per_image,
                                                                            PSNR_FLOOR))))
  else:
    d = np.asarray(lpq_lib.denormalize_flow(dec)) - inputs
    epe = np.sqrt(np.sum(d * d, axis=-1))
    moving = np.linalg.norm(inputs, axis=-1) > 0
    res["psnr_db_normalised"] = float(-10 * np.log10(max(res["mse_normalised"], PSNR_FLOOR)))
    res["epe_px"] = float(epe.mean())
    res["epe_px_moving"] = float(epe[moving].mean()) if moving.any() else float("nan")
    res["epe_px_static"] = float(epe[~moving].mean()) if (~moving).any() else float("nan")
    res.update(_flow_probes(model, config, enc, rec))
  res["eval_seconds"] = time.time() - t0
  export(model, config, workdir, res)
  logging.info("LPQ %s held-out: %s", kind, {k: v for k, v in res.items()
                                            if not isinstance(v, (list, dict))})
  return res


def _flow_probes(model, config, enc, rec) -> dict:
  """Pokes of |d| in 5..25 px through encode/decode, zero flow, the no-motion codes."""
  from spelke_jax.inference import spelkenet_model  # pylint: disable=g-import-not-at-top
  r = int(config.data.resolution)
  mags = np.asarray(config.eval_poke_magnitudes, np.float32)
  maps, vecs, (y0, x0) = poke_maps(r, mags)
  idx = np.asarray(enc(model, jnp.asarray(maps)))
  dec = np.asarray(lpq_lib.denormalize_flow(rec(model, jnp.asarray(idx))))
  patch = dec[:, y0:y0 + 8, x0:x0 + 8]                               # [N, 8, 8, 2]
  err = np.linalg.norm(patch - vecs[:, None, None], axis=-1)          # [N, 8, 8]
  mean_flow_err = np.linalg.norm(patch.mean(axis=(1, 2)) - vecs, axis=-1)
  outside = dec.copy()
  outside[:, y0:y0 + 8, x0:x0 + 8] = 0
  zero_dec = np.asarray(lpq_lib.denormalize_flow(rec(model, enc(model, jnp.zeros((1, r, r, 2))))))
  no_motion = spelkenet_model.zero_flow_codes(model)
  table = spelkenet_model.derive_flow_table(model)
  row = {int(c): i for i, c in enumerate(np.asarray(table.token_ids))}
  centre = idx[:, y0 // 4, x0 // 4]                                   # the patch's first code
  table_vec = np.stack([np.asarray(table.vectors)[row[int(c)]].mean(axis=(0, 1)) for c in centre])
  zero_table = max(float(np.abs(np.asarray(table.vectors)[row[c]]).max()) for c in no_motion)
  per_mag = {f"{m:g}": float(err.reshape(len(mags), -1).mean(axis=1)[i])
             for i, m in enumerate(mags)}
  return {"poke_epe_px": float(err.mean()), "poke_epe_px_max": float(err.max()),
          "poke_epe_px_by_magnitude": per_mag,
          "poke_mean_flow_error_px": float(mean_flow_err.mean()),
          "poke_table_vector_error_px": float(np.linalg.norm(table_vec - vecs, axis=-1).mean()),
          "poke_table_vector_error_px_max": float(np.linalg.norm(table_vec - vecs, axis=-1).max()),
          "poke_distinct_codes": int(len(np.unique(centre))),
          "poke_leak_outside_px_max": float(np.abs(outside).max()),
          "zero_flow_decoded_px_max": float(np.abs(zero_dec).max()),
          "no_motion_table_vector_px_max": zero_table,
          "no_motion_codes": [int(c) for c in no_motion]}


def export(model: lpq_lib.LPQ, config: ml_collections.ConfigDict, workdir: Path,
           metrics: dict | None = None) -> Path:
  """<workdir>/export/{kind}_quantizer.pt (original layout and cfg), flow_table.npz for flow."""
  from spelke_jax.convert.export import export_torch  # pylint: disable=g-import-not-at-top
  from spelke_jax.inference import spelkenet_model  # pylint: disable=g-import-not-at-top
  out = Path(workdir) / "export"
  out.mkdir(parents=True, exist_ok=True)
  cfg = export_cfg(model.config, config)
  export_torch(model, "lpq", out / f"{config.kind}_quantizer.pt", cfg=cfg)
  if config.kind == "flow":
    spelkenet_model.write_flow_table(out / "flow_table.npz",
                                     spelkenet_model.derive_flow_table(model),
                                     spelkenet_model.zero_flow_codes(model))
  if metrics is not None:
    _write_json(out / "metrics.json", metrics)
  return out


def export_cfg(cfg: LPQConfig, config: ml_collections.ConfigDict) -> dict:
  """The original's cfg dict: config_class, model_class, LPQConfig fields (blocks as lists) and
  the loss weights trained with."""
  d = cfg.to_dict()
  for k in ("encoder_blocks", "decoder_blocks"):
    d[k] = [list(b) for b in d[k]]
  return {"config_class": CONFIG_CLASS[cfg.kind], "model_class": MODEL_CLASS, **d,
          **{k: float(config.loss[k]) for k in ("entropy_loss_weight", "commitment_loss_weight",
                                                "diversity_gamma")}}


def _write_json(path: Path, obj: dict) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(json.dumps(obj, indent=2))
  os.replace(tmp, path)


def evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  """The eval mode: weights from config.checkpoint (a training workdir) or the workdir itself;
  held-out metrics and the export into `workdir`."""
  model = build_model(config)
  step = restore_weights(Path(config.checkpoint or workdir), model, config)
  res = evaluate_model(model, config, workdir)
  res["step"] = step
  _write_json(workdir / "metrics.json", res)
  print(f"LPQ {config.kind} held-out: " + json.dumps(
      {k: v for k, v in res.items() if not isinstance(v, (list, dict))}))
  return res


def run(config: ml_collections.ConfigDict, workdir: Path) -> Any:
  if config.kind not in ("rgb", "flow"):
    raise ValueError(f"config.kind must be 'rgb' or 'flow', got {config.kind!r}")
  return train(config, workdir) if config.mode == "train" else evaluate(config, workdir)
