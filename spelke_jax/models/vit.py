"""A timm-layout Vision Transformer (vit_base_patch8_224 / DINO) in flax.nnx, and the bicubic
Resize + CenterCrop preprocessing NSI applies to its images.

Same computation as timm's VisionTransformer.forward_features (class token, no registers, no
pre-norm), channels-last:

  images [B, H, W, C] -> patch_embed (conv k = s = patch)  -> tokens [B, N, D]
  cat(cls_token, tokens) + pos_embed                       -> [B, 1 + N, D]
  depth x pre-norm block: x + attn(norm1(x)); x + mlp(norm2(x))
      attn: fused qkv (+ bias) [D, 3, H, hd], softmax(q k^T / sqrt(hd)) v, proj (+ bias)
      mlp:  fc1 -> exact (erf) GELU -> fc2, hidden = int(D * mlp_ratio)
  final norm (LayerNorm eps 1e-6, as timm's ViTs)          -> features [B, 1 + N, D]

Preprocessing (`preprocess`): torchvision Resize(size, BICUBIC) on the shorter edge, then
CenterCrop(crop). The result depends on torchvision's `antialias` flag:
  antialias=False  torch `interpolate(mode='bicubic', align_corners=False)`: Keys cubic with
                   a = -0.75, source x = (i + 0.5) * in / out - 0.5, taps clamped at the border.
                   The torchvision < 0.17 tensor default (the original's torch 1.8 era) and the
                   image NSI's fixture feeds its model; our default.
  antialias=True   torch's `_upsample_bicubic2d_aa` (PIL's filter): a = -0.5, support widened by
                   the scale when downsampling, window truncated at the border and renormalised.
                   The torchvision >= 0.17 default.
Both are computed as exact per-axis resampling matrices (float64 weights, the same formulas as
torch's kernels), applied with one einsum per axis.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spelke_jax.models import layers

# timm's trunc_normal_(std=.02) for Linear / position / class token weights.
TRUNC_02 = jax.nn.initializers.truncated_normal(0.02)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Sizes of a timm ViT. Defaults: vit_base_patch8_224(.dino) (85.8M parameters).

  `mlp_ratio` sets the MLP width int(embed_dim * mlp_ratio) as in timm. The preprocessing
  fields (`resize_size`, `crop_size`, `antialias`) are used by `preprocess` only.
  """
  img_size: int = 224
  patch_size: int = 8
  in_chans: int = 3
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  ln_eps: float = 1e-6
  resize_size: int = 224
  crop_size: int = 224
  antialias: bool = False

  def __post_init__(self):
    if self.embed_dim % self.num_heads:
      raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
    if self.img_size % self.patch_size:
      raise ValueError(f"img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
    if self.depth < 0:
      raise ValueError(f"depth must be >= 0, got {self.depth}")

  @property
  def grid_size(self) -> int:
    return self.img_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid_size ** 2

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def mlp_dim(self) -> int:
    return int(self.embed_dim * self.mlp_ratio)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **overrides) -> "ViTConfig":
    """From our own field names or timm's create_model kwargs; a 'dino_vit' / 'vit' section
    (as in the NSI fixture manifests) is read too. Unknown keys are ignored."""
    flat: dict[str, Any] = {}
    for section in ("dino_vit", "vit"):
      if isinstance(d.get(section), Mapping):
        flat.update(d[section])
    flat.update({k: v for k, v in d.items() if not isinstance(v, Mapping)})
    flat.update(overrides)
    if "Resize" in flat:
      flat.setdefault("resize_size", flat["Resize"])
    if "CenterCrop" in flat:
      flat.setdefault("crop_size", flat["CenterCrop"])
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in flat.items() if k in names})

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


class Attention(nnx.Module):
  """timm Attention: fused qkv kernel [D, 3, H, hd] + bias [3, H, hd], proj Linear (+ bias)."""

  def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs | None = None):
    d, h, hd = config.embed_dim, config.num_heads, config.head_dim
    self.qkv = layers.param(rngs, (d, 3, h, hd), ("embed", None, "heads", "head_dim"),
                            jnp.float32, TRUNC_02)
    self.qkv_bias = (layers.param(rngs, (3, h, hd), (None, "heads", "head_dim"), jnp.float32,
                                  jax.nn.initializers.zeros) if config.qkv_bias else None)
    self.proj = layers.Linear(d, d, axes=("heads", "embed"), use_bias=True, init=TRUNC_02,
                              rngs=rngs)
    self.scale = config.head_dim ** -0.5

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, D]."""
    qkv = jnp.einsum("btd,dchk->cbthk", x, self.qkv[...].astype(x.dtype))
    if self.qkv_bias is not None:
      qkv = qkv + self.qkv_bias[...].astype(x.dtype)[:, None, None]
    q, k, v = qkv[0], qkv[1], qkv[2]
    logits = jnp.einsum("bqhk,bshk->bhqs", q * self.scale, k)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
    y = jnp.einsum("bhqs,bshk->bqhk", attn, v)
    return self.proj(y.reshape(y.shape[:2] + (-1,)))


class Mlp(nnx.Module):
  """fc1 -> exact GELU -> fc2, both with bias."""

  def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs | None = None):
    d, m = config.embed_dim, config.mlp_dim
    self.fc1 = layers.Linear(d, m, axes=("embed", "mlp"), use_bias=True, init=TRUNC_02, rngs=rngs)
    self.fc2 = layers.Linear(m, d, axes=("mlp", "embed"), use_bias=True, init=TRUNC_02, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
  """x + attn(norm1(x)), then x + mlp(norm2(x))."""

  def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs | None = None):
    d, eps = config.embed_dim, config.ln_eps
    self.norm1 = layers.LayerNorm(d, use_bias=True, eps=eps, rngs=rngs)
    self.attn = Attention(config, rngs=rngs)
    self.norm2 = layers.LayerNorm(d, use_bias=True, eps=eps, rngs=rngs)
    self.mlp = Mlp(config, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class ViT(nnx.Module):
  """timm VisionTransformer trunk (no classifier). Images are channels-last [B, H, W, C]."""

  def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs | None = None):
    self.config = config
    d = config.embed_dim
    self.patch_embed = layers.Conv2d(config.in_chans, d, config.patch_size,
                                     stride=config.patch_size, use_bias=True, rngs=rngs)
    self.cls_token = layers.param(rngs, (1, 1, d), (None, None, "embed"), jnp.float32,
                                  jax.nn.initializers.normal(1e-6))
    self.pos_embed = layers.param(rngs, (1, config.num_patches + 1, d), (None, "position", "embed"),
                                  jnp.float32, TRUNC_02)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.depth)])
    self.norm = layers.LayerNorm(d, use_bias=True, eps=config.ln_eps, rngs=rngs)

  def features(self, images: jax.Array) -> jax.Array:
    """[B, H, W, C] (H = W = img_size) -> [B, 1 + N, D]: CLS first, after the final norm."""
    c = self.config
    if images.ndim != 4 or images.shape[1:] != (c.img_size, c.img_size, c.in_chans):
      raise ValueError(f"ViT expects images [B, {c.img_size}, {c.img_size}, {c.in_chans}] "
                       f"(channels-last), got {tuple(images.shape)}")
    x = self.patch_embed(images.astype(jnp.float32))
    b = x.shape[0]
    x = x.reshape(b, -1, c.embed_dim)                        # row-major patches, as timm
    cls = jnp.broadcast_to(self.cls_token[...], (b, 1, c.embed_dim))
    x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...]
    for block in self.blocks:
      x = block(x)
    return self.norm(x)

  def patch_features(self, images: jax.Array) -> jax.Array:
    """features() without the class token: [B, N, D] (row-major patch grid)."""
    return self.features(images)[:, 1:]

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.features(images)


def create(config: ViTConfig, seed: int = 0) -> ViT:
  """A randomly initialised ViT (timm's trunc-normal(0.02) style init)."""
  return ViT(config, rngs=nnx.Rngs(seed))


def abstract(config: ViTConfig) -> ViT:
  """Shapes and dtypes only, for loading converted weights."""
  return nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))


# ---- Bicubic resize exactly as torch / torchvision ----------------------------------------------

def _cubic1(x, a):
  return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic2(x, a):
  return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


@functools.lru_cache(maxsize=32)
def bicubic_matrix(in_size: int, out_size: int, antialias: bool = False) -> np.ndarray:
  """[out, in] float64 resampling matrix of torch's bicubic interpolation (align_corners=False).

  antialias=False: upsample_bicubic2d (a = -0.75; x = (i + 0.5) * scale - 0.5 unclamped,
  t = x - floor(x), taps floor(x) - 1 .. floor(x) + 2 clamped into [0, in - 1]).
  antialias=True: _upsample_bicubic2d_aa (a = -0.5; centre (i + 0.5) * scale, support
  2 * max(scale, 1), window [int(c - s + .5), int(c + s + .5)) cut to the image, weights
  filter((j - c + .5) / max(scale, 1)) normalised to sum 1).
  """
  scale = in_size / out_size
  w = np.zeros((out_size, in_size), np.float64)
  if not antialias:
    a = -0.75
    for i in range(out_size):
      x = (i + 0.5) * scale - 0.5
      i0 = int(np.floor(x))
      t = x - i0
      coeffs = (_cubic2(t + 1, a), _cubic1(t, a), _cubic1(1 - t, a), _cubic2(2 - t, a))
      for k, cf in enumerate(coeffs):
        w[i, min(max(i0 - 1 + k, 0), in_size - 1)] += cf
    return w
  a = -0.5
  support = 2.0 * scale if scale >= 1.0 else 2.0
  invscale = 1.0 / scale if scale >= 1.0 else 1.0

  def filt(x):
    x = abs(x)
    if x < 1.0:
      return _cubic1(x, a)
    if x < 2.0:
      return _cubic2(x, a)
    return 0.0

  for i in range(out_size):
    center = scale * (i + 0.5)
    xmin = max(int(center - support + 0.5), 0)
    xmax = min(int(center + support + 0.5), in_size)
    ws = np.array([filt((j - center + 0.5) * invscale) for j in range(xmin, xmax)])
    total = ws.sum()
    if total != 0.0:
      ws = ws / total
    w[i, xmin:xmax] = ws
  return w


def resize_bicubic(images: jax.Array, size: Sequence[int], antialias: bool = False) -> jax.Array:
  """torch/torchvision bicubic resize of [B, H, W, C] to [B, h, w, C] (no clamping: values
  may overshoot the input range, as torch's float path)."""
  _, in_h, in_w, _ = images.shape
  out_h, out_w = int(size[0]), int(size[1])
  x = jnp.asarray(images)
  dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
  x = x.astype(dtype)
  hi = jax.lax.Precision.HIGHEST
  wh = jnp.asarray(bicubic_matrix(in_h, out_h, antialias), dtype)
  ww = jnp.asarray(bicubic_matrix(in_w, out_w, antialias), dtype)
  x = jnp.einsum("oh,bhwc->bowc", wh, x, precision=hi)
  return jnp.einsum("pw,bowc->bopc", ww, x, precision=hi)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
  """torchvision Resize(int): the shorter edge becomes `size`, the longer int(size * long /
  short)."""
  short, long = (width, height) if width <= height else (height, width)
  new_short, new_long = size, int(size * long / short)
  return (new_long, new_short) if width <= height else (new_short, new_long)


def center_crop(images: jax.Array, size: int) -> jax.Array:
  """torchvision CenterCrop(size) on [B, H, W, C]: top = int(round((H - size) / 2))."""
  _, h, w, _ = images.shape
  if size > h or size > w:
    raise ValueError(f"CenterCrop({size}) of a {h}x{w} image would pad; not supported")
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return images[:, top:top + size, left:left + size]


def preprocess(images, resize_size: int = 224, crop_size: int = 224,
               antialias: bool = False) -> jax.Array:
  """NSI's image transform: [B, H, W, C] floats in [0, 1] (no ImageNet normalisation)
  -> Resize(resize_size, BICUBIC, antialias) + CenterCrop(crop_size) -> [B, crop, crop, C]."""
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"preprocess expects [B, H, W, C] images, got shape {tuple(images.shape)}")
  _, h, w, _ = images.shape
  x = resize_bicubic(images, resized_shape(h, w, resize_size), antialias)
  return center_crop(x, crop_size)
