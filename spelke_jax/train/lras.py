"""LRAS trainer: next-token prediction over [frame-0 patches | camera | flow patches].

    python -m spelke_jax.main --config=configs/train_lras_synth.py --workdir=out/lras_synth

The original SpelkeNet ships no training code; this follows the LRAS paper's objective and the
sequence layout the inference prompts expect (inference/prompt.py):
  * frame 0 and the flow field are tokenized by frozen LPQ tokenizers (rgb: ImageNet-normalised
    frame; flow: flow / 20), grouped into 2x2-code patches, each patch emitted as
    [pointer, c0, c1, c2, c3] at its canonical positions;
  * frame-0 patches in a random order, then the identity camera pose (8 tokens), then the flow
    patches in a random order. With probability `probe_order_prob` the flow order is the one
    probing uses: the four corner patches first, then one patch on a moving object (the "poke"),
    then the rest at random — so the model sees the prompts it will be asked to complete;
  * cross-entropy on every next token except pointer and camera tokens (they are given at
    inference, never predicted); flow codes weigh 1, frame-0 codes `frame0_loss_weight`. With
    `restricted_softmax` the softmax of a flow target runs over the flow codes only (and of a
    frame-0 target over the rgb codes), the distribution flow-only decoding samples from
    (inference/decode.py), and the head is evaluated at the code steps only: same optimum for
    those decoders, ~V/V_flow less head compute. The full-vocabulary softmax (what parity-mode
    decoding samples from) is the default off-switch.
Choices where the paper is silent: the probe-like ordering, the loss weights, and training
scenes without camera motion (the identity camera token is then always right), all in config.

One jitted train step over a Mesh (batch split over 'data'); Orbax checkpoints with resume; at
the end the model is exported in the original layout next to the tokenizers, so the result is a
complete SpelkeNet (export/: lras.pt, rgb_quantizer.pt, flow_quantizer.pt, flow_table.npz) for
the spelkebench and poke modes.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from spelke_jax.inference import camera
from spelke_jax.models import lpq as lpq_lib
from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig, compact_layout
from spelke_jax.train import checkpoints, common, lras_init, schedules


# ---- Sequences ------------------------------------------------------------------------------------

def patch_rows(codes: jax.Array, value_offset: int, pointer_offset: int, pos_offset: int,
               patch_size: int) -> tuple[jax.Array, jax.Array]:
  """codes int [B, h, w] -> (tokens, positions) [B, P, T]: [pointer + p, codes + offset] at
  pos_offset + T*p + j, patches row-major on the grid, codes row-major inside a patch."""
  b, h, w = codes.shape
  gh, gw, s = h // patch_size, w // patch_size, patch_size
  p = gh * gw
  t = s * s + 1
  c = codes.reshape(b, gh, s, gw, s).transpose(0, 1, 3, 2, 4).reshape(b, p, s * s)
  pointers = jnp.broadcast_to(pointer_offset + jnp.arange(p, dtype=jnp.int32)[None, :, None],
                              (b, p, 1))
  tokens = jnp.concatenate([pointers, c.astype(jnp.int32) + value_offset], axis=-1)
  positions = pos_offset + t * jnp.arange(p, dtype=jnp.int32)[:, None] + jnp.arange(t)[None]
  return tokens, jnp.broadcast_to(positions, (b, p, t))


def flow_order(key: jax.Array, moving: jax.Array, gh: int, gw: int,
               probe_order_prob: float) -> jax.Array:
  """Order of the flow patches of one example. moving [P] bool (patch on a moving object).

  Random; or (with probe_order_prob) the probing order: corners (top-right, top-left,
  bottom-left, bottom-right), then a random moving patch, then the rest at random."""
  k_score, k_pick, k_mode = jax.random.split(key, 3)
  p = gh * gw
  score = jax.random.uniform(k_score, (p,))
  corners = jnp.asarray([gw - 1, 0, (gh - 1) * gw, p - 1])
  probe = score.at[corners].set(jnp.arange(4, dtype=score.dtype) - 10.0)
  gumbel = jax.random.gumbel(k_pick, (p,))
  pick = jnp.argmax(jnp.where(moving, gumbel, -jnp.inf))
  is_corner = jnp.zeros((p,), bool).at[corners].set(True)
  probe = jnp.where(jnp.any(moving & ~is_corner),
                    probe.at[pick].set(jnp.where(is_corner[pick], probe[pick], -1.0)), probe)
  use_probe = jax.random.uniform(k_mode) < probe_order_prob
  return jnp.argsort(jnp.where(use_probe, probe, score))


def make_sequences(rgb_codes: jax.Array, flow_codes: jax.Array, moving: jax.Array, key: jax.Array,
                   cfg: LRASConfig, probe_order_prob: float, frame0_loss_weight: float):
  """Training sequences of a batch.

  rgb_codes, flow_codes int [B, h, w] (relative); moving [B, P] bool per flow patch.
  Returns tokens, positions int32 [B, L] and loss weights [B, L-1] for the targets tokens[:, 1:].
  """
  b = rgb_codes.shape[0]
  s = cfg.patch_size
  gh, gw = rgb_codes.shape[1] // s, rgb_codes.shape[2] // s
  im_tok, im_pos = patch_rows(rgb_codes, cfg.rgb_range[0], cfg.rgb_patch_0_idx_range[0],
                              cfg.frame_0_rgb_pos_range[0], s)
  fl_tok, fl_pos = patch_rows(flow_codes, cfg.flow_range[0], cfg.flow_patch_idx_range[0],
                              cfg.flow_pos_range[0], s)
  k0, k1 = jax.random.split(key)
  perm0 = jax.vmap(lambda k: jax.random.permutation(k, gh * gw))(jax.random.split(k0, b))
  perm1 = jax.vmap(lambda k, m: flow_order(k, m, gh, gw, probe_order_prob))(
      jax.random.split(k1, b), moving)
  take = lambda x, perm: jnp.take_along_axis(x, perm[:, :, None], axis=1).reshape(b, -1)
  cam_tok, cam_pos = (jnp.asarray(a, jnp.int32) for a in camera.campose_tokens(
      camera.IDENTITY_POSE, cfg))
  bc = lambda a: jnp.broadcast_to(a[None], (b,) + a.shape)
  tokens = jnp.concatenate([take(im_tok, perm0), bc(cam_tok), take(fl_tok, perm1)], axis=1)
  positions = jnp.concatenate([take(im_pos, perm0), bc(cam_pos), take(fl_pos, perm1)], axis=1)
  tgt = tokens[:, 1:]
  in_range = lambda r: (tgt >= r[0]) & (tgt < r[1])
  weights = (in_range(cfg.flow_range).astype(jnp.float32)
             + frame0_loss_weight * in_range(cfg.rgb_range).astype(jnp.float32))
  return tokens, positions, weights


def moving_patches(flow: jax.Array, patch_px: int, threshold: float = 0.5) -> jax.Array:
  """flow [B, R, R, 2] px -> [B, P] bool: the patch's mean |flow| exceeds threshold."""
  b, r, _, _ = flow.shape
  g = r // patch_px
  mag = jnp.linalg.norm(flow, axis=-1).reshape(b, g, patch_px, g, patch_px).mean(axis=(2, 4))
  return (mag > threshold).reshape(b, g * g)


# ---- Model, step, loop ----------------------------------------------------------------------------

def model_config(config: ml_collections.ConfigDict, rgb_vocab: int, flow_vocab: int) -> LRASConfig:
  """The transformer's config: sizes from config.model, vocabulary layout from the codebooks."""
  patches = (config.data.resolution // 8) ** 2
  layout = compact_layout(rgb_vocab, flow_vocab, num_patches=patches)
  return LRASConfig(**dict(config.model), **layout)


def load_tokenizers(config: ml_collections.ConfigDict):
  from spelke_jax.inference.spelkenet_model import _load  # pylint: disable=g-import-not-at-top
  rgb = _load(config.tokenizers.rgb, "lpq")
  flow = _load(config.tokenizers.flow, "lpq")
  return rgb, flow


def code_target_steps(num_patches: int, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Static indices t into tokens[:, :-1] whose next token tokens[t + 1] is a code (not a
  pointer) of frame 0 / of the flow, for the layout [frame-0 patches | 8 camera | flow patches]
  with patches of [pointer, patch_size**2 codes]: (rgb_steps [P*s*s], flow_steps [P*s*s])."""
  t = patch_size * patch_size + 1
  frame = num_patches * t
  code = np.arange(frame)[np.arange(frame) % t != 0]
  return code - 1, frame + 8 + code - 1


def restricted_ce(model: lras.LRAS, hidden: jax.Array, targets: jax.Array, steps: np.ndarray,
                  columns: tuple[int, int]) -> jax.Array:
  """Cross-entropy [B, len(steps)] of targets[:, steps] with the softmax over the head's
  `columns` only (the token range the target belongs to, as flow-only decoding samples)."""
  logits = model.logits(hidden[:, steps], columns=columns).astype(jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets[:, steps] - columns[0])


def make_train_step(graphdef, rgb_lpq, flow_lpq, cfg: LRASConfig, config):
  probe_prob = float(config.probe_order_prob)
  f0_weight = float(config.frame0_loss_weight)
  patch_px = cfg.patch_size * 4
  restricted = bool(config.get("restricted_softmax", False))
  num_patches = cfg.flow_patch_idx_range[1] - cfg.flow_patch_idx_range[0]
  rgb_steps, flow_steps = code_target_steps(num_patches, cfg.patch_size)

  @jax.jit
  def step(state, frames, flow, rng):
    model, optimizer = nnx.merge(graphdef, state)
    rgb_codes = rgb_lpq.quantize(lpq_lib.normalize_rgb(frames))
    flow_codes = flow_lpq.quantize(lpq_lib.normalize_flow(flow))
    moving = moving_patches(flow, patch_px)
    tokens, positions, weights = make_sequences(rgb_codes, flow_codes, moving, rng, cfg,
                                                probe_prob, f0_weight)

    def restricted_loss_fn(model):
      x = model.embed(tokens[:, :-1], positions[:, :-1])
      for block in model.blocks:
        x, _, _ = block(x)
      flow_ce = jnp.mean(restricted_ce(model, x, tokens[:, 1:], flow_steps, cfg.flow_range))
      rgb_ce = jnp.mean(restricted_ce(model, x, tokens[:, 1:], rgb_steps, cfg.rgb_range))
      n_flow, n_rgb = len(flow_steps), len(rgb_steps)
      loss = (n_flow * flow_ce + f0_weight * n_rgb * rgb_ce) / (n_flow + f0_weight * n_rgb)
      return loss, flow_ce

    def loss_fn(model):
      if restricted:
        return restricted_loss_fn(model)
      logits = model(tokens[:, :-1], positions[:, :-1]).astype(jnp.float32)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
      flow_w = (weights == 1.0).astype(jnp.float32)
      loss = jnp.sum(ce * weights) / jnp.maximum(jnp.sum(weights), 1.0)
      flow_ce = jnp.sum(ce * flow_w) / jnp.maximum(jnp.sum(flow_w), 1.0)
      return loss, flow_ce

    (loss, flow_ce), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return nnx.state((model, optimizer)), {"loss": loss, "flow_ce": flow_ce,
                                           "grad_norm": optax.tree.norm(grads)}
  return step


def train(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  rgb_lpq, flow_lpq = load_tokenizers(config)
  cfg = model_config(config, rgb_lpq.config.vocab_size, flow_lpq.config.vocab_size)
  mesh, rules = common.setup_mesh(config)
  model = lras.create(cfg, seed=config.seed)
  lras_init.add_spatial_codes(model, float(config.get("spatial_init", 0.0)))  # before a resume
  lr = schedules.warmup_cosine(config.lr, config.num_steps, warmup_iters=config.warmup_steps)
  tx = optax.chain(optax.clip_by_global_norm(config.grad_clip),
                   optax.adamw(lr, b1=0.9, b2=0.95, weight_decay=config.weight_decay))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  ckpt = checkpoints.Checkpointer(workdir / "checkpoints", save_every=config.checkpoint_every)
  start = ckpt.restore_latest(model, optimizer)
  end = min(config.get("stop_after", 0) or config.num_steps, config.num_steps)
  logging.info("LRAS training from step %d to %d (schedule of %d steps): %s, sequences of %d "
               "tokens", start, end, config.num_steps, cfg, 2 * (cfg.frame_0_rgb_pos_range[1]) + 8)
  graphdef, state = nnx.split((model, optimizer))
  state = common.replicate(state, mesh)
  step_fn = make_train_step(graphdef, rgb_lpq, flow_lpq, cfg, config)
  from spelke_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  d = config.data
  local = config.batch_size // jax.process_count()
  data = pipeline.make_synthetic_stream(d.seed, d.resolution, local, start=start * local,
                                        process_index=jax.process_index(),
                                        process_count=jax.process_count(),
                                        **dict(d.scene_kwargs))
  writer = common.MetricWriter(workdir, config.num_steps)
  rng = jax.random.key(config.seed)
  metrics = {}
  for step in range(start, end):
    batch = next(data)
    arrays = common.put_batch({"frame0": batch["frame0"], "flow": batch["flow"]}, mesh, rules)
    state, metrics = step_fn(state, arrays["frame0"], arrays["flow"], jax.random.fold_in(rng, step))
    common.after_step(step, config, state, metrics, writer, ckpt, (model, optimizer), end)
  ckpt.close()
  nnx.update((model, optimizer), state)
  export(model, config, workdir)
  return common.floats(metrics)


def export(model: lras.LRAS, config: ml_collections.ConfigDict, workdir: Path) -> Path:
  """workdir/export/: the trained transformer in the original layout plus copies of the
  tokenizers and the flow table, i.e. a complete SpelkeNet for the spelkebench / poke modes."""
  from spelke_jax.convert.export import export_torch  # pylint: disable=g-import-not-at-top
  out = workdir / "export"
  out.mkdir(parents=True, exist_ok=True)
  cfg = {"config_class": "spelke_net.spelke_net.config.LRAS1B_Campose_FlowQuantized_Patch8_RGBConfig",
         **model.config.to_dict()}
  export_torch(model, "lras", out / "lras.pt", cfg=cfg)
  for name, src in (("rgb_quantizer.pt", config.tokenizers.rgb),
                    ("flow_quantizer.pt", config.tokenizers.flow),
                    ("flow_table.npz", config.tokenizers.flow_table)):
    if Path(src).is_dir():  # a converted tokenizer (e.g. the shipped one): the original layout
      from spelke_jax.convert.load import load_converted  # pylint: disable=g-import-not-at-top
      export_torch(load_converted(src), "lpq", out / name)
      continue
    tmp = out / f".{name}.tmp-{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, out / name)
  (out / "README.txt").write_text(json.dumps({"workdir": str(workdir), "config": config.to_dict()},
                                             indent=2, default=str))
  return out


def run(config: ml_collections.ConfigDict, workdir: Path):
  if config.mode != "train":
    raise ValueError("evaluate a trained LRAS with the spelkebench mode (--config.model=spelkenet "
                     "--config.lras_checkpoint=<workdir>/export/lras.pt ...)")
  return train(config, workdir)
