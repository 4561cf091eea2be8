"""Neural Slot Interpreters (jha-lab/neural-slot-interpreters) in flax.nnx.

Image side (the original's ImageEncoder, `slot_encoder` in checkpoints):
  x [B, S, S, 3] in [0, 1] (not ImageNet-normalised) -> frozen ViT (DINO ViT-B/8; features
  after the final norm, stop_gradient) -> patch tokens [B, N, 768]
  -> SlotAttentionEncoder (models/slots.py) -> slots [B, K, D], attention [B, N, K]
  -> BroadcastDecoder -> recon [B, N, 768], alpha masks [B, K, N]; mse = sum over channels,
     mean over B x N of (recon - tokens)^2
  -> ProjectionHead -> slots_proj [B, K, E]
Program (schema) side (CLEVRTexProgramEncoder, `program_encoder`):
  rows [B, T, 6] = (size, shape, material, x, y, z) (ids as floats, truncated like torch's
  .long(); xyz in [-3, 3]) -> cat(size, shape, material embeddings, ReLU(Linear((xyz + 3) / 6)))
  -> Linear-ReLU-Linear (4d -> d) -> pre-norm transformer (no positions, no padding mask; the
  first block replaces the residual stream by LN(input) before adding attention) -> final LN
  -> z_program [B, T, d] -> ProjectionHead -> prog_proj [B, T, E]
Score and loss (utils.py):
  logits[i, j] = sum_t mask[j, t] * max_n <slots_proj[i, n], prog_proj[j, t]>  (raw dots)
  contrastive = (CE(logits / tau, arange) + CE(logits^T / tau, arange)) / 2, tau = 0.1
  loss = contrastive + beta * mse
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spelke_jax.models import layers
from spelke_jax.models import slots as slots_lib
from spelke_jax.models.vit import ViT, ViTConfig

# The original's argument names (train_nsi.py argparse / CLEVRTexProgramEncoder) -> ours.
_PROGRAM_KEYS = {"num_blocks": "program_blocks", "d_model": "program_d_model",
                 "num_heads": "program_heads", "dropout": "program_dropout",
                 "sizes_size": "num_sizes", "shape_size": "num_shapes",
                 "material_size": "num_materials", "pos_coords": "pos_coords"}


@dataclasses.dataclass(frozen=True)
class NSIConfig:
  """All sizes of NSI (defaults: train_nsi.py's argparse defaults, a ViT-B/8 DINO trunk).

  Image side: num_iterations, num_slots, num_slot_heads, slot_dim, mlp_hidden_size (the slot
  MLP width), embed_dim E (projection), dropout (projection heads), decoder_hidden /
  decoder_layers (the broadcast decoder's 1024-wide 3 hidden layers), slot_variant / slot_init
  (models/slots.py; NSI: 'nsi' / 'gaussian'). Program side: program_blocks, program_d_model,
  program_heads, program_dropout (its projection head), vocabulary sizes num_sizes (3),
  num_shapes (4), num_materials (60), max_program_len T. Loss: tau, beta.
  """
  vit: ViTConfig = dataclasses.field(default_factory=ViTConfig)
  num_iterations: int = 5
  num_slots: int = 15
  num_slot_heads: int = 1
  slot_dim: int = 192
  mlp_hidden_size: int = 192
  embed_dim: int = 64
  dropout: float = 0.1
  slot_variant: str = "nsi"
  slot_init: str | None = None
  slot_epsilon: float = 1e-8
  decoder_hidden: int = 1024
  decoder_layers: int = 3
  program_blocks: int = 8
  program_d_model: int = 192
  program_heads: int = 8
  program_dropout: float = 0.1
  num_sizes: int = 3
  num_shapes: int = 4
  num_materials: int = 60
  pos_coords: int = 3
  max_program_len: int = 10
  tau: float = 0.1
  beta: float = 1.0
  ln_eps: float = 1e-5

  def __post_init__(self):
    if isinstance(self.vit, Mapping):
      object.__setattr__(self, "vit", ViTConfig.from_dict(self.vit))
    if self.program_d_model % self.program_heads:
      raise ValueError(f"program_d_model {self.program_d_model} is not divisible by "
                       f"program_heads {self.program_heads}")
    if min(self.num_sizes, self.num_shapes, self.num_materials) < 1:
      raise ValueError("vocabulary sizes must be >= 1")
    self.slot_config()  # validates the slot attention fields

  def slot_config(self) -> slots_lib.SlotAttentionConfig:
    return slots_lib.SlotAttentionConfig(
        num_slots=self.num_slots, num_iterations=self.num_iterations,
        num_heads=self.num_slot_heads, input_size=self.vit.embed_dim, slot_size=self.slot_dim,
        mlp_hidden_size=self.mlp_hidden_size, epsilon=self.slot_epsilon,
        variant=self.slot_variant, init=self.slot_init, ln_eps=self.ln_eps)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **overrides) -> "NSIConfig":
    """From our own field names (to_dict), train_nsi.py's argparse names, or the fixture
    manifests' sections ('ImageEncoder_args', 'CLEVRTexProgramEncoder', 'loss', 'dino_vit',
    'transform'). In a flat dict of the original's names, num_blocks / d_model / num_heads /
    dropout are the program encoder's (as in train_nsi.py). Unknown keys are ignored."""
    src = {**dict(d), **overrides}
    flat: dict[str, Any] = {}
    for k, v in src.items():
      if not isinstance(v, Mapping):
        flat[_PROGRAM_KEYS.get(k, k) if k != "dropout" else k] = v
    if "num_blocks" in src or "d_model" in src:  # an argparse namespace: dropout is shared
      if "dropout" in src and not isinstance(src["dropout"], Mapping):
        flat.setdefault("program_dropout", src["dropout"])
    if isinstance(src.get("ImageEncoder_args"), Mapping):
      flat.update(src["ImageEncoder_args"])
    prog = src.get("CLEVRTexProgramEncoder")
    if isinstance(prog, Mapping):
      for k, v in prog.items():
        if k == "embed_dim":
          if "embed_dim" in flat and int(flat["embed_dim"]) != int(v):
            raise ValueError(f"image embed_dim {flat['embed_dim']} != program embed_dim {v}: the "
                             "score needs one embedding width")
          flat["embed_dim"] = v
        elif k in _PROGRAM_KEYS:
          flat[_PROGRAM_KEYS[k]] = v
    if isinstance(src.get("loss"), Mapping):
      flat.update({k: v for k, v in src["loss"].items() if k in ("tau", "beta")})
    vit: dict[str, Any] = {}
    if isinstance(src.get("vit"), Mapping):
      vit.update(src["vit"])
    if isinstance(src.get("dino_vit"), Mapping):
      vit.update(src["dino_vit"])
    if isinstance(src.get("transform"), Mapping):
      t = src["transform"]
      for ours, theirs in (("resize_size", "Resize"), ("crop_size", "CenterCrop"),
                           ("antialias", "antialias")):
        if theirs in t:
          vit[ours] = t[theirs]
    if "image_size" in flat:
      vit.setdefault("img_size", flat["image_size"])
    flat["vit"] = ViTConfig.from_dict(vit)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in flat.items() if k in names})

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["vit"] = self.vit.to_dict()
    return out


# ---- Program (schema) encoder ---------------------------------------------------------------

class MultiHeadAttention(nnx.Module):
  """models/transformer.py MultiHeadAttention: proj_q/k/v/o (no bias), q *= hd^-0.5."""

  def __init__(self, d: int, heads: int, gain: float, *, rngs: nnx.Rngs | None = None):
    self.heads = heads
    ax = ("embed", "heads")
    self.proj_q = layers.Linear(d, d, axes=ax, init=slots_lib.XAVIER, rngs=rngs)
    self.proj_k = layers.Linear(d, d, axes=ax, init=slots_lib.XAVIER, rngs=rngs)
    self.proj_v = layers.Linear(d, d, axes=ax, init=slots_lib.XAVIER, rngs=rngs)
    self.proj_o = layers.Linear(d, d, axes=("heads", "embed"), init=slots_lib.xavier_gain(gain),
                                rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    h = self.heads
    q = self.proj_q(x).reshape(b, t, h, -1)
    k = self.proj_k(x).reshape(b, t, h, -1)
    v = self.proj_v(x).reshape(b, t, h, -1)
    q = q * (q.shape[-1] ** -0.5)
    attn = jax.nn.softmax(jnp.einsum("bqhe,bshe->bhqs", q, k), axis=-1)
    return self.proj_o(jnp.einsum("bhqs,bshe->bqhe", attn, v).reshape(b, t, d))


class TransformerBlock(nnx.Module):
  """Pre-LN block; `is_first`: input = LN(input); input = input + attn(input) (the original's
  first-block quirk), else input + attn(LN(input)). Then + ffn(LN) (d -> 4d -> d)."""

  def __init__(self, d: int, heads: int, gain: float, is_first: bool, eps: float, *,
               rngs: nnx.Rngs | None = None):
    self.is_first = is_first
    self.attn_layer_norm = layers.LayerNorm(d, use_bias=True, eps=eps, rngs=rngs)
    self.attn = MultiHeadAttention(d, heads, gain, rngs=rngs)
    self.ffn_layer_norm = layers.LayerNorm(d, use_bias=True, eps=eps, rngs=rngs)
    self.ffn = slots_lib.MLP(d, 4 * d, d, init2=slots_lib.xavier_gain(gain), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.is_first:
      x = self.attn_layer_norm(x)
      x = x + self.attn(x)
    else:
      x = x + self.attn(self.attn_layer_norm(x))
    return x + self.ffn(self.ffn_layer_norm(x))


class ProgramEncoder(nnx.Module):
  """CLEVRTexProgramEncoder: rows [B, T, 6] -> (prog_proj [B, T, E], z_program [B, T, d])."""

  def __init__(self, config: NSIConfig, *, rngs: nnx.Rngs | None = None):
    c = self.config = config
    d = c.program_d_model
    emb = lambda n: layers.Embed(n, d, axes=("vocab", "embed"), init=slots_lib.STD_NORMAL,
                                 rngs=rngs)
    self.size_embedding = emb(c.num_sizes)
    self.shape_embedding = emb(c.num_shapes)
    self.material_embedding = emb(c.num_materials)
    self.pos_embedding = layers.Linear(c.pos_coords, d, axes=(None, "embed"), use_bias=True,
                                       init=slots_lib.TORCH_LINEAR, rngs=rngs)
    self.program_embed = slots_lib.MLP(4 * d, d, d, init1=slots_lib.TORCH_LINEAR,
                                       init2=slots_lib.TORCH_LINEAR, rngs=rngs)
    gain = (3 * c.program_blocks) ** -0.5 if c.program_blocks else 1.0
    self.blocks = nnx.List([
        TransformerBlock(d, c.program_heads, gain, i == 0, c.ln_eps, rngs=rngs)
        for i in range(c.program_blocks)])
    self.layer_norm = layers.LayerNorm(d, use_bias=True, eps=c.ln_eps, rngs=rngs)
    self.head = slots_lib.ProjectionHead(d, c.embed_dim, c.program_dropout, ln_eps=c.ln_eps,
                                         rngs=rngs)

  def ids(self, programs: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(size, shape, material) ids [B, T] int32, truncated toward zero like torch .long().

    Raises ValueError for concrete ids outside a vocabulary (torch's nn.Embedding raises
    too); under jit out-of-range ids read NaN rows (jnp.take's fill mode)."""
    c = self.config
    out = tuple(programs[..., i].astype(jnp.int32) for i in range(3))
    if not isinstance(programs, jax.core.Tracer):
      for name, ids, n in zip(("size", "shape", "material"), out,
                              (c.num_sizes, c.num_shapes, c.num_materials)):
        a = np.asarray(ids)
        if a.size and (a.min() < 0 or a.max() >= n):
          raise ValueError(f"program {name} id out of range: ids span [{a.min()}, {a.max()}] but "
                           f"the {name} vocabulary has {n} entries (config num_{name}s); check the "
                           "label files against the model's vocabulary sizes")
    return out

  def __call__(self, programs: jax.Array,
               dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    c = self.config
    programs = jnp.asarray(programs, jnp.float32)
    width = 3 + c.pos_coords
    if programs.ndim != 3 or programs.shape[-1] != width:
      raise ValueError(f"programs must be [B, T, {width}] rows (size, shape, material, x, y, z), "
                       f"got {tuple(programs.shape)}")
    size, shape, material = self.ids(programs)
    take = lambda e, i: jnp.take(e.embedding[...], i, axis=0, mode="fill", fill_value=jnp.nan)
    pos = (programs[..., 3:3 + c.pos_coords] + 3) / 6
    z = jnp.concatenate([take(self.size_embedding, size), take(self.shape_embedding, shape),
                         take(self.material_embedding, material),
                         jax.nn.relu(self.pos_embedding(pos))], axis=-1)
    z = self.program_embed(z)
    for block in self.blocks:
      z = block(z)
    z = self.layer_norm(z)
    return self.head(z, dropout_rng), z


# ---- Score and losses -----------------------------------------------------------------------

def program_mask(lengths: jax.Array, max_len: int) -> jax.Array:
  """[B] lengths -> [B, T] bool, arange(T) < length."""
  return jnp.arange(max_len)[None, :] < jnp.asarray(lengths)[:, None]


def slot_program_score(slots: jax.Array, programs: jax.Array,
                       mask: jax.Array | None = None) -> jax.Array:
  """utils.slot_program_score: slots [B, N, E], programs [B, T, E], mask [B, T] ->
  logits [B_img, B_prog] = sum_t mask[j, t] * max_n <slots[i, n], programs[j, t]>."""
  if slots.shape[-1] != programs.shape[-1]:
    raise ValueError(f"slot embeddings {tuple(slots.shape)} and program embeddings "
                     f"{tuple(programs.shape)} differ in width")
  scores = jnp.einsum("ind,jtd->ijnt", slots, programs).max(axis=2)       # [B, B, T]
  if mask is not None:
    scores = scores * jnp.asarray(mask, scores.dtype)[None]
  return scores.sum(axis=-1)


def symmetric_ce_loss(logits: jax.Array, tau: float = 0.1) -> jax.Array:
  """utils.SymmetricCELoss: mean of the row-wise and column-wise CE with labels arange(B)."""
  logits = logits / tau
  labels = jnp.arange(logits.shape[0])
  ce = lambda lg: -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(lg, axis=-1),
                                                labels[:, None], axis=-1))
  return (ce(logits) + ce(logits.T)) / 2


def total_loss(contrastive: jax.Array, mse: jax.Array, beta: float = 1.0) -> jax.Array:
  return contrastive + beta * mse


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ImageOutput:
  """features [B, 1 + N, F] (ViT, CLS first), slots_init / slots [B, K, D], slots_per_iter
  [iters, B, K, D], sa_attn [B, N, K], alpha [B, K, h, w] (decoder masks), recon [B, N, F],
  mse (scalar), slots_proj [B, K, E]."""
  features: jax.Array
  slots_init: jax.Array
  slots_per_iter: jax.Array
  slots: jax.Array
  sa_attn: jax.Array
  alpha: jax.Array
  recon: jax.Array
  mse: jax.Array
  slots_proj: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class NSIOutput:
  image: ImageOutput
  prog_proj: jax.Array
  z_program: jax.Array
  mask: jax.Array
  logits: jax.Array
  contrastive_loss: jax.Array
  loss: jax.Array


class NSI(nnx.Module):
  """The whole NSI. Torch names: slot_encoder.{encoder (ViT), slot_attn, decoder, embed_proj,
  norm_embed, embed_mlp} -> encoder, slot_attn, decoder, image_head; program_encoder.* ->
  program_encoder. Images are channels-last [B, S, S, 3]."""

  def __init__(self, config: NSIConfig, *, rngs: nnx.Rngs | None = None):
    c = self.config = config
    self.encoder = ViT(c.vit, rngs=rngs)
    self.slot_attn = slots_lib.SlotAttentionEncoder(c.slot_config(), rngs=rngs)
    self.decoder = slots_lib.BroadcastDecoder(c.slot_dim, c.vit.embed_dim, c.vit.num_patches,
                                              hidden=c.decoder_hidden,
                                              num_hidden_layers=c.decoder_layers, rngs=rngs)
    self.image_head = slots_lib.ProjectionHead(c.slot_dim, c.embed_dim, c.dropout,
                                               ln_eps=c.ln_eps, rngs=rngs)
    self.program_encoder = ProgramEncoder(c, rngs=rngs)

  def encode_image(self, images: jax.Array, *, slot_noise: jax.Array | None = None,
                   rng: jax.Array | None = None, conditioning: jax.Array | None = None,
                   dropout_rng: jax.Array | None = None) -> ImageOutput:
    """images [B, S, S, 3] -> ImageOutput. The ViT is frozen (stop_gradient on its features);
    slot_noise [B, K, D] replays the slot initialisation (else drawn from `rng`)."""
    c = self.config
    feats = jax.lax.stop_gradient(self.encoder.features(images))
    tokens = feats[:, 1:]
    out = self.slot_attn(tokens, noise=slot_noise, rng=rng, conditioning=conditioning)
    recon, alpha = self.decoder(out.slots)
    mse = jnp.mean(jnp.sum(jnp.square(recon - tokens), axis=-1))
    g = c.vit.grid_size
    return ImageOutput(features=feats, slots_init=out.slots_init,
                       slots_per_iter=out.slots_per_iter, slots=out.slots, sa_attn=out.attn,
                       alpha=alpha.reshape(alpha.shape[:2] + (g, g)), recon=recon, mse=mse,
                       slots_proj=self.image_head(out.slots, dropout_rng))

  def encode_program(self, programs: jax.Array,
                     dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """programs [B, T, 6] -> (prog_proj [B, T, E], z_program [B, T, d])."""
    return self.program_encoder(programs, dropout_rng)

  def __call__(self, images: jax.Array, programs: jax.Array, lengths: jax.Array, *,
               slot_noise: jax.Array | None = None, rng: jax.Array | None = None,
               conditioning: jax.Array | None = None,
               dropout_rng: jax.Array | None = None) -> NSIOutput:
    """Both encoders, the score (rows images, columns programs) and the losses."""
    if images.shape[0] != programs.shape[0] or programs.shape[0] != np.shape(lengths)[0]:
      raise ValueError(f"batch sizes differ: images {tuple(images.shape)}, programs "
                       f"{tuple(programs.shape)}, lengths {np.shape(lengths)}")
    r_img, r_prog = slots_lib._split(dropout_rng, 2)
    image = self.encode_image(images, slot_noise=slot_noise, rng=rng, conditioning=conditioning,
                              dropout_rng=r_img)
    prog_proj, z_program = self.encode_program(programs, r_prog)
    mask = program_mask(lengths, programs.shape[1])
    logits = slot_program_score(image.slots_proj, prog_proj, mask)
    contrastive = symmetric_ce_loss(logits, self.config.tau)
    return NSIOutput(image=image, prog_proj=prog_proj, z_program=z_program, mask=mask,
                     logits=logits, contrastive_loss=contrastive,
                     loss=total_loss(contrastive, image.mse, self.config.beta))


def create(config: NSIConfig, seed: int = 0) -> NSI:
  """A randomly initialised NSI (the original's initialisers), in eval mode."""
  return NSI(config, rngs=nnx.Rngs(seed))


def abstract(config: NSIConfig) -> NSI:
  """Shapes and dtypes only, for loading converted weights."""
  return nnx.eval_shape(lambda: NSI(config, rngs=nnx.Rngs(0)))
