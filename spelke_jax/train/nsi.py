"""Neural Slot Interpreters: contrastive slot <-> schema training, retrieval evaluation.

    python -m spelke_jax.main --config=configs/nsi_clevrtex.py --workdir=out/nsi        # train
    python -m spelke_jax.main --config=configs/nsi_clevrtex.py --config.mode=eval \
        --config.checkpoint=out/nsi --workdir=out/nsi_eval                           # evaluate

Training follows trainer/train_nsi.py of jha-lab/neural-slot-interpreters:
  * loss = symmetric CE over the in-batch NSI score (tau) + beta * feature-reconstruction MSE;
  * Adam (0.9, 0.999, eps 1e-8, no weight decay) on the slot encoder and program encoder, the ViT
    frozen (stop_gradient; the original keeps it in Adam with zero gradients, which never moves
    it, so we leave it out of the optimizer);
  * lr = base * linear warmup ((step + 1) / warmup_steps, capped at 1) * decay, decay halved
    (`lr_decay`) after `patience` epochs without a new best validation loss (the stagnation
    counter restarts after each halving);
  * gradient-norm clipping (torch clip_grad_norm_: coef = max / (norm + 1e-6), capped at 1) over
    the image side only (slot attention, decoder, projection head); the program encoder's
    gradients are not clipped;
  * batches from a per-(seed, epoch) permutation, the last partial batch dropped; validation
    loss on the 'val' split after every epoch (eval mode, fixed slot noise), best weights kept
    in <workdir>/best.
One jitted train step over a Mesh (batch split over 'data', parameters replicated); Orbax
checkpoints (with the plateau state) at every epoch end; a restarted run resumes.

Evaluation: every image and schema of `eval_split` embedded once (slot noise from a fixed key),
the full NSI score matrix, Recall@1/5/10 image -> schema and schema -> image (evals/retrieval.py),
metrics.json and slot_masks.png (decoder alpha masks of the first images).

Data: config.dataset_path = a CLEVRTex directory (data/clevrtex.py); empty = the CLEVR-like
stand-in (data/nsi_standin.py), generated on first use into config.standin.dir (default
<workdir>/nsi_standin). config.vit_checkpoint = timm / DINO ViT weights (converted on load);
config.init_checkpoint = an original best_model.pt to start from (or evaluate).
"""
from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from spelke_jax.data import clevrtex
from spelke_jax.evals import retrieval
from spelke_jax.models import nsi
from spelke_jax.models import vit as vit_lib
from spelke_jax.models.nsi import NSIConfig
from spelke_jax.train import checkpoints, common

# Trainable = every parameter outside the ViT ('encoder'); the image side is what the original
# clips (its slot_encoder, whose ViT gradients are zero).
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("encoder")))
IMAGE_SIDE = ("slot_attn", "decoder", "image_head")


# ---- Model and data -------------------------------------------------------------------------------

def model_config(config: ml_collections.ConfigDict) -> NSIConfig:
  return NSIConfig.from_dict(config.model.to_dict())


def vocab_sizes(mcfg: NSIConfig) -> dict[str, int]:
  return {"num_sizes": mcfg.num_sizes, "num_shapes": mcfg.num_shapes,
          "num_materials": mcfg.num_materials}


def build_model(config: ml_collections.ConfigDict) -> nsi.NSI:
  """A fresh NSI; the ViT from config.vit_checkpoint, everything from config.init_checkpoint
  (an original best_model.pt) when given. Converter shape checks raise ValueError on a
  mismatched vocabulary or width."""
  from spelke_jax.convert.load import load_torch  # pylint: disable=g-import-not-at-top
  mcfg = model_config(config)
  model = nsi.create(mcfg, seed=config.seed)
  if config.get("init_checkpoint", ""):
    loaded = load_torch(config.init_checkpoint, "nsi", config=mcfg.to_dict())
    nnx.update(model, nnx.state(loaded))
    logging.info("NSI weights from %s", config.init_checkpoint)
  if config.get("vit_checkpoint", ""):
    vit = load_torch(config.vit_checkpoint, "vit", config=mcfg.vit.to_dict())
    nnx.update(model.encoder, nnx.state(vit))
    logging.info("ViT weights from %s", config.vit_checkpoint)
  return model


def dataset_root(config: ml_collections.ConfigDict, workdir: Path) -> Path:
  """config.dataset_path, or the stand-in (generated on first use)."""
  if config.dataset_path:
    return Path(config.dataset_path)
  from spelke_jax.data import nsi_standin  # pylint: disable=g-import-not-at-top
  s = config.standin
  root = Path(s.dir) if s.dir else workdir / "nsi_standin"
  t0 = time.time()
  root = nsi_standin.ensure_standin(
      root, seed=s.seed, resolution=s.resolution, num_train=s.num_train, num_val=s.num_val,
      num_test=s.num_test, num_materials=s.num_materials, min_objects=s.min_objects,
      max_objects=s.max_objects)
  logging.info("stand-in set at %s (%.1f s)", root, time.time() - t0)
  return root


def open_split(root: Path, split: str, mcfg: NSIConfig) -> clevrtex.CLEVRTexSplit:
  data = clevrtex.CLEVRTexSplit(root, split, max_program_len=mcfg.max_program_len,
                                vocab=vocab_sizes(mcfg))
  have = clevrtex.read_vocabulary(root)
  if have and have != vocab_sizes(mcfg):
    logging.warning("label2program.json lists vocabularies %s, the model has %s (label ids are "
                    "checked against the model)", have, vocab_sizes(mcfg))
  return data


def preprocess(images: jax.Array, mcfg: NSIConfig) -> jax.Array:
  """[B, S, S, 3] in [0, 1] -> the ViT's input (bicubic Resize + CenterCrop, skipped when the
  images already have the ViT's size and resize == crop == img_size)."""
  v = mcfg.vit
  if images.shape[1] == v.img_size and v.resize_size == v.crop_size == v.img_size:
    return images
  return vit_lib.preprocess(images, v.resize_size, v.crop_size, v.antialias)


# ---- Optimizer and step ---------------------------------------------------------------------------

# One transformation object for every run: it is static in the optimizer's graphdef, so sharing
# it lets runs of one model shape share their compiled steps. The learning rate is set every step.
ADAM = optax.inject_hyperparams(optax.adam)(learning_rate=0.0, b1=0.9, b2=0.999, eps=1e-8)


def make_optimizer(model: nsi.NSI, config: ml_collections.ConfigDict) -> nnx.Optimizer:
  """torch Adam (0.9, 0.999, eps 1e-8) with an injected learning rate (set every step from the
  host: warmup x plateau decay); only the TRAINABLE parameters."""
  del config
  return nnx.Optimizer(model, ADAM, wrt=TRAINABLE)


def learning_rate(step: int, config: ml_collections.ConfigDict, decay: float) -> float:
  """train_nsi.py: lr * linear_warmup(step, 0, 1, 0, warmup_steps) * decay."""
  w = config.warmup_steps
  warm = 1.0 if w <= 0 or step >= w else (step + 1) / w
  return float(config.lr * warm * decay)


def clip_image_side(grads: nnx.State, max_norm: float) -> tuple[nnx.State, jax.Array]:
  """torch clip_grad_norm_ over the image-side gradients only -> (grads, their norm before)."""
  norm = optax.tree.norm([grads[k] for k in IMAGE_SIDE if k in grads])
  coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
  return nnx.State({k: (jax.tree.map(lambda g: g * coef, v) if k in IMAGE_SIDE else v)
                    for k, v in grads.items()}), norm


def loss_fn(model: nsi.NSI, images, programs, lengths, rng, mcfg: NSIConfig):
  k_slot, k_drop = jax.random.split(rng)
  out = model(preprocess(images, mcfg), programs, lengths, rng=k_slot, dropout_rng=k_drop)
  return out.loss, (out.contrastive_loss, out.image.mse, out.logits)


def _in_batch_acc(logits):
  return jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(logits.shape[0]))


@functools.partial(jax.jit, static_argnames=("graphdef", "mcfg", "grad_clip"))
def _train_step(state, images, programs, lengths, lr, rng, *, graphdef, mcfg, grad_clip):
  model, optimizer = nnx.merge(graphdef, state)
  optimizer.opt_state.hyperparams["learning_rate"][...] = jnp.asarray(lr, jnp.float32)
  grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, TRAINABLE), has_aux=True)
  (loss, (con, mse, logits)), grads = grad_fn(model, images, programs, lengths, rng, mcfg)
  grads, img_norm = clip_image_side(grads, grad_clip)
  optimizer.update(model, grads)
  metrics = {"loss": loss, "contrastive": con, "mse": mse, "in_batch_acc": _in_batch_acc(logits),
             "image_grad_norm": img_norm, "lr": lr}
  return nnx.state((model, optimizer)), metrics


def make_train_step(graphdef, mcfg: NSIConfig, grad_clip: float):
  """(state, images, programs, lengths, lr, rng) -> (state, metrics), jitted; state =
  nnx.state((model, optimizer)) with the model in train mode (dropout on). Module-level jit with
  static (graphdef, config), so every run of one model shape shares one compilation."""
  return functools.partial(_train_step, graphdef=graphdef, mcfg=mcfg, grad_clip=float(grad_clip))


@functools.partial(jax.jit, static_argnames=("graphdef", "mcfg"))
def _eval_loss(state, images, programs, lengths, rng, *, graphdef, mcfg):
  m = nnx.merge(graphdef, state)
  out = m(preprocess(images, mcfg), programs, lengths, rng=rng)
  return {"loss": out.loss, "contrastive": out.contrastive_loss, "mse": out.image.mse,
          "in_batch_acc": _in_batch_acc(out.logits)}


@functools.partial(jax.jit, static_argnames=("graphdef", "mcfg"))
def _embed(state, images, programs, rng, *, graphdef, mcfg):
  m = nnx.merge(graphdef, state)
  img = m.encode_image(preprocess(images, mcfg), rng=rng)
  prog, _ = m.encode_program(programs)
  g = mcfg.vit.grid_size
  attn = jnp.swapaxes(img.sa_attn, 1, 2).reshape(img.alpha.shape[:2] + (g, g))
  return img.slots_proj, prog, jnp.stack([img.alpha, attn], axis=1)


def make_eval_fns(model: nsi.NSI, mcfg: NSIConfig):
  """(loss_fn(state, images, programs, lengths, rng), embed_fn(state, images, programs, rng)),
  jitted on the model's eval-mode graph (dropout off); both take the model's state."""
  model.eval()
  graphdef, _ = nnx.split(model)
  model.train()
  return (functools.partial(_eval_loss, graphdef=graphdef, mcfg=mcfg),
          functools.partial(_embed, graphdef=graphdef, mcfg=mcfg))


# ---- Validation, retrieval ------------------------------------------------------------------------

def _eval_batch_size(requested: int, n: int) -> int:
  d = jax.device_count()
  b = max(d, (min(requested, n) // d) * d)
  return b


def validate(loss_fn_, state, data: clevrtex.CLEVRTexSplit, config, mesh, rules) -> dict:
  """Mean eval-mode loss over the split's full batches (in-batch negatives, like the original)."""
  bs = _eval_batch_size(config.batch_size, len(data))
  sums: dict[str, float] = {}
  n = 0
  for i, idx in enumerate(clevrtex.epoch_batches(len(data), bs, 0, 0, shuffle=False)):
    b = common.put_batch(data.batch(idx), mesh, rules)
    m = jax.device_get(loss_fn_(state, b["images"], b["programs"], b["lengths"],
                                jax.random.fold_in(jax.random.key(config.seed + 1), i)))
    for k, v in m.items():
      sums[k] = sums.get(k, 0.0) + float(v)
    n += 1
  if not n:
    raise ValueError(f"the {data.split} split has {len(data)} examples, fewer than one batch")
  return {k: v / n for k, v in sums.items()}


def embed_split(embed_fn, state, data: clevrtex.CLEVRTexSplit, config, mesh, rules):
  """Every example of `data` -> (slots_proj [N, K, E], prog_proj [N, T, E], mask [N, T], masks
  [n, 2, K, g, g] (decoder alpha, slot-attention map) of the first n = `num_figures`). Slot
  noise of batch i: fold_in(key(seed + 2), i)."""
  n = len(data)
  bs = _eval_batch_size(config.eval_batch_size, n)
  slots, progs, alphas = [], [], []
  for i, s in enumerate(range(0, n, bs)):
    idx = np.arange(s, min(s + bs, n))
    pad = bs - len(idx)
    batch = data.batch(np.concatenate([idx, np.full((pad,), idx[-1])]) if pad else idx)
    b = common.put_batch({"images": batch["images"], "programs": batch["programs"]}, mesh, rules)
    sp, pp, al = jax.device_get(embed_fn(state, b["images"], b["programs"],
                                         jax.random.fold_in(jax.random.key(config.seed + 2), i)))
    keep = len(idx)
    slots.append(sp[:keep])
    progs.append(pp[:keep])
    if sum(len(a) for a in alphas) < config.num_figures:
      alphas.append(al[:keep])
  mask = np.arange(data.programs.shape[1])[None, :] < data.lengths[:, None]
  alpha = np.concatenate(alphas)[:config.num_figures] if alphas else np.zeros((0,))
  return np.concatenate(slots), np.concatenate(progs), mask, alpha


def evaluate_model(model: nsi.NSI, config, data: clevrtex.CLEVRTexSplit, out: Path, mesh,
                   rules) -> dict:
  """Recall@1/5/10 both ways over `data`; out/metrics.json, out/slot_masks.png (decoder alpha
  masks) and out/slot_attention.png (the last slot-attention iteration's maps)."""
  mcfg = model.config
  _, embed_fn = make_eval_fns(model, mcfg)
  state = common.replicate(nnx.state(model), mesh)
  t0 = time.time()
  slots, progs, mask, alpha = embed_split(embed_fn, state, data, config, mesh, rules)
  scores = retrieval.score_matrix(slots, progs, mask)
  metrics = retrieval.retrieval_metrics(scores)
  metrics.update(split=data.split, dataset=str(data.root), seconds=time.time() - t0)
  out.mkdir(parents=True, exist_ok=True)
  if config.num_figures and len(alpha):
    k = min(config.num_figures, len(alpha))
    images = np.asarray(preprocess(jnp.asarray(data.images(np.arange(k))), mcfg))
    retrieval.save_slot_masks(out / "slot_masks.png", images, alpha[:k, 0])
    retrieval.save_slot_masks(out / "slot_attention.png", images, alpha[:k, 1])
  tmp = out / f".metrics.json.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(metrics, indent=2))
  os.replace(tmp, out / "metrics.json")
  n = metrics["num"]
  print(f"NSI retrieval on {n} {data.split} pairs of {data.root}:")
  for name in ("img2schema", "schema2img"):
    print(f"  {name}: " + "  ".join(f"R@{k} {metrics[f'{name}_R@{k}']:.3f}" for k in retrieval.KS)
          + f"  (mean rank {metrics[f'{name}_mean_rank']:.1f})")
  print("  chance: " + "  ".join(f"R@{k} {metrics[f'chance_R@{k}']:.3f}" for k in retrieval.KS))
  print(f"  metrics: {out / 'metrics.json'}")
  return metrics


# ---- Checkpoints ----------------------------------------------------------------------------------

def _read_meta(ckpt: checkpoints.Checkpointer, step: int) -> dict:
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  restored = ckpt.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return dict(restored["meta"] or {})


def check_compatible(meta: dict, mcfg: NSIConfig, where: str) -> None:
  """ValueError naming every model field where a checkpoint's config differs from ours (a
  different vocabulary size, say), before Orbax would fail on a shape."""
  saved = meta.get("model_config")
  if not saved:
    return
  ours = mcfg.to_dict()
  diff = {k: (saved.get(k), ours[k]) for k in ours if k in saved and saved[k] != ours[k]
          and k not in ("dropout", "program_dropout", "tau", "beta")}
  if diff:
    raise ValueError(f"{where} was written by a different NSI model: "
                     + ", ".join(f"{k}: checkpoint {a} != config {b}" for k, (a, b) in diff.items()))


def restore_weights(workdir: Path, model: nsi.NSI, config, prefer_best: bool = True) -> int:
  """Model weights from a training workdir (best/ if present and preferred, else checkpoints/)."""
  for sub in (("best", "checkpoints") if prefer_best else ("checkpoints",)):
    if not (workdir / sub).exists():
      continue
    ckpt = checkpoints.Checkpointer(workdir / sub, save_every=1)
    try:
      step = ckpt.latest_step()
      if step is None:
        continue
      check_compatible(_read_meta(ckpt, step), model.config, str(workdir / sub))
      ckpt.restore(step, model, make_optimizer(model, config))
      logging.info("weights from %s step %d", workdir / sub, step)
      return int(step)
    finally:
      ckpt.close()
  raise FileNotFoundError(f"no checkpoint under {workdir}/best or {workdir}/checkpoints")


# ---- Train loop -----------------------------------------------------------------------------------

def train(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  workdir = Path(workdir)
  mcfg = model_config(config)
  mesh, rules = common.setup_mesh(config)
  if config.batch_size % jax.device_count():
    raise ValueError(f"batch_size {config.batch_size} must divide over {jax.device_count()} "
                     "devices")
  root = dataset_root(config, workdir)
  train_data = open_split(root, "train", mcfg)
  val_data = open_split(root, "val", mcfg)
  spe = len(train_data) // config.batch_size
  if spe == 0:
    raise ValueError(f"{len(train_data)} training examples make no batch of {config.batch_size}")
  total = config.num_epochs * spe

  model = build_model(config)
  optimizer = make_optimizer(model, config)
  ckpt = checkpoints.Checkpointer(workdir / "checkpoints", save_every=1,
                                  max_to_keep=config.keep_checkpoints)
  best_ckpt = checkpoints.Checkpointer(workdir / "best", save_every=1, max_to_keep=1)
  plateau = {"best_val_loss": float("inf"), "best_epoch": 0, "stagnation": 0, "decay": 1.0}
  start = 0
  latest = ckpt.latest_step()
  if latest is not None:
    meta = _read_meta(ckpt, latest)
    check_compatible(meta, mcfg, str(workdir / "checkpoints"))
    ckpt.restore(latest, model, optimizer)
    start = int(latest)
    plateau.update({k: meta[k] for k in plateau if k in meta})
  if start % spe:
    raise ValueError(f"checkpoint step {start} is not at an epoch end ({spe} steps per epoch): "
                     "batch_size or the dataset changed")
  n_train = sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, TRAINABLE)))
  logging.info("NSI training epochs %d..%d (%d steps/epoch, batch %d, %d devices, %d trainable "
               "params, ViT frozen) on %s", start // spe, config.num_epochs, spe,
               config.batch_size, jax.device_count(), n_train, root)

  model.train()
  graphdef, state = nnx.split((model, optimizer))
  state = common.replicate(state, mesh)
  step_fn = make_train_step(graphdef, mcfg, config.grad_clip)
  val_loss_fn, _ = make_eval_fns(model, mcfg)
  writer = common.MetricWriter(workdir, total)
  val_writer = common.MetricWriter(workdir, total, name="val")
  rng = jax.random.key(config.seed)
  pi, pc = jax.process_index(), jax.process_count()
  local = config.batch_size // pc
  metrics: dict[str, Any] = {}
  for epoch in range(start // spe, config.num_epochs):
    for i, idx in enumerate(clevrtex.epoch_batches(len(train_data), config.batch_size,
                                                   config.seed, epoch)):
      step = epoch * spe + i
      batch = common.put_batch(train_data.batch(idx[pi * local:(pi + 1) * local]), mesh, rules)
      lr = learning_rate(step, config, plateau["decay"])
      state, metrics = step_fn(state, batch["images"], batch["programs"], batch["lengths"],
                               np.float32(lr), jax.random.fold_in(rng, step))
      if (step + 1) % config.log_every == 0 or step + 1 == total:
        writer.write(step + 1, {"epoch": epoch + 1, **jax.device_get(metrics)})
    # Epoch end: validation, plateau, checkpoints (as train_nsi.py, once per epoch).
    val = validate(val_loss_fn, state[0], val_data, config, mesh, rules)
    improved = val["loss"] < plateau["best_val_loss"]
    if improved:
      plateau.update(best_val_loss=val["loss"], best_epoch=epoch + 1, stagnation=0)
    else:
      plateau["stagnation"] += 1
      if plateau["stagnation"] >= config.patience:
        plateau["stagnation"] = 0
        plateau["decay"] *= config.lr_decay
        logging.info("val loss flat for %d epochs: lr factor now %g", config.patience,
                     plateau["decay"])
    step = (epoch + 1) * spe
    val_writer.write(step, {"epoch": epoch + 1, **val, "lr_factor": plateau["decay"]})
    nnx.update((model, optimizer), state)
    meta = {"epoch": epoch + 1, "model_config": mcfg.to_dict(), **plateau,
            **{f"train_{k}": v for k, v in common.floats(metrics).items()}}
    ckpt.maybe_save(step, model, optimizer, meta=meta, force=True)
    if improved:
      best_ckpt.maybe_save(step, model, optimizer, meta=meta, force=True)
  ckpt.close()
  best_ckpt.close()
  nnx.update((model, optimizer), state)
  result = common.floats(metrics)
  if config.eval_split:
    restore_weights(workdir, model, config, prefer_best=config.eval_best)
    result.update(evaluate_model(model, config, open_split(root, config.eval_split, mcfg),
                                 workdir / f"eval_{config.eval_split}", mesh, rules))
  return result


def evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  """The eval mode: weights from config.checkpoint (a training workdir), else
  config.init_checkpoint (an original best_model.pt), else the workdir itself."""
  workdir = Path(workdir)
  mesh, rules = common.setup_mesh(config)
  model = build_model(config)
  if config.checkpoint or not config.get("init_checkpoint", ""):
    restore_weights(Path(config.checkpoint or workdir), model, config,
                    prefer_best=config.eval_best)
  root = dataset_root(config, workdir)
  split = config.eval_split or "test"
  return evaluate_model(model, config, open_split(root, split, model.config), workdir, mesh,
                        rules)


def run(config: ml_collections.ConfigDict, workdir: Path) -> Any:
  return train(config, workdir) if config.mode == "train" else evaluate(config, workdir)
