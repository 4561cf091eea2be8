"""EISEN's affinity network in flax.nnx, and its affinity sampling and loss as pure functions.

Same computation as the original (core/eisen.py, core/resnet.py, detectron2's DeepLab pieces),
channels-last:

  images [B, H, W, 3] RGB 0..255  -> (x - pixel_mean) / pixel_std
  ResNet (DeepLab stem: 3x3 s2 -> 3x3 -> 3x3, each conv+BN+ReLU, maxpool 3x3 s2 p1;
          bottleneck stages res2..res5, stride in the 3x3, res5 stride 1 dilated 2/4/8)
  DeepLabV3+ decoder (ASPP on res5, then res3 and res2 projection + fuse; no bias, no norm)
                                  -> features [B, H/4, W/4, 128]
  affinity head: feat_conv 1x1 -> key_proj / query_proj  -> key, query [B, h, w, C]

Affinities: node n = y * w + x (row-major) samples S nodes: its K x K window (row-major
(dy, dx), out-of-image neighbours are the sentinel index N) and S - K*K uniform global nodes.
logits[b, n, s] = <query_n, key_sample> * C**-0.5, the sentinel reading a zero key (logit 0).
Nothing here builds an N x N matrix unless asked for full affinities.

BatchNorm follows torch: biased batch variance to normalise, unbiased to update the running
variance, running = (1 - momentum) * running + momentum * batch. Models are created in eval
mode (running statistics, no dropout); `model.train()` / `model.eval()` switch (nnx).
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spelke_jax.models import layers
from spelke_jax.models.eisen_config import EisenConfig

_PRECISION = {"default": jax.lax.Precision.DEFAULT, "high": jax.lax.Precision.HIGH,
              "highest": jax.lax.Precision.HIGHEST}

# ---- Initialisers (the original's) -----------------------------------------------------------

# fvcore c2_msra_fill: kaiming_normal_(mode='fan_out', nonlinearity='relu'), bias 0.
MSRA = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# fvcore c2_xavier_fill: kaiming_uniform_(a=1) = U(+-sqrt(3 / fan_in)), bias 0.
XAVIER = jax.nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
# torch nn.Conv2d / nn.Linear defaults: kaiming_uniform_(a=sqrt(5)) = U(+-1 / sqrt(fan_in)).
TORCH_DEFAULT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias(fan_in: int):
  """torch's default bias init: U(+-1 / sqrt(fan_in))."""
  bound = 1.0 / np.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


# ---- Resampling helpers ------------------------------------------------------------------------

def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       np.ndarray]:
  """torch's align_corners=False source taps: (i0, i1, w0, w1), float32 arithmetic.

  src = (in/out) * (dst + 0.5) - 0.5, clamped at 0; i0 = floor(src), i1 = min(i0 + 1, in - 1),
  w1 = src - i0, w0 = 1 - w1 (so the last row/column repeats: edge clamp)."""
  scale = np.float32(in_size) / np.float32(out_size)
  src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
  src = np.maximum(src, np.float32(0)).astype(np.float32)
  i0 = np.floor(src).astype(np.int32)
  i0 = np.minimum(i0, in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  w1 = np.minimum(src - i0.astype(np.float32), np.float32(1)).astype(np.float32)
  w0 = (np.float32(1) - w1).astype(np.float32)
  return i0, i1, w0, w1


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """torch F.interpolate(mode='bilinear', align_corners=False) on [B, H, W, C] -> [B, h, w, C].

  Half-pixel centres, source clamped at 0 and at the last pixel, no antialiasing; computed as
  h0 * (w0 * x00 + w1 * x01) + h1 * (w0 * x10 + w1 * x11), the order of torch's CPU kernel."""
  out_h, out_w = int(size[0]), int(size[1])
  _, in_h, in_w, _ = x.shape
  if (in_h, in_w) == (out_h, out_w):
    return x
  hi0, hi1, hw0, hw1 = _linear_taps(in_h, out_h)
  wi0, wi1, ww0, ww1 = _linear_taps(in_w, out_w)
  ww0 = jnp.asarray(ww0, x.dtype)[None, None, :, None]
  ww1 = jnp.asarray(ww1, x.dtype)[None, None, :, None]
  rows = (jnp.take(x, hi0, axis=1), jnp.take(x, hi1, axis=1))
  r0, r1 = ((jnp.take(r, wi0, axis=2) * ww0 + jnp.take(r, wi1, axis=2) * ww1) for r in rows)
  return (r0 * jnp.asarray(hw0, x.dtype)[None, :, None, None]
          + r1 * jnp.asarray(hw1, x.dtype)[None, :, None, None])


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
  """torch's 'nearest' source index: min(floor(dst * (in / out)), in - 1) in float32."""
  if in_size == out_size:
    return np.arange(out_size, dtype=np.int32)
  if out_size == 2 * in_size:
    return np.arange(out_size, dtype=np.int32) >> 1
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int32)
  return np.minimum(src, in_size - 1)


def nearest_resize_labels(target: jax.Array, h: int, w: int) -> jax.Array:
  """torch F.interpolate(mode='nearest') of integer labels: [B, H, W] (or [B, 1, H, W]) ->
  [B, h, w], same dtype. Labels are gathered, not cast through float32 as the original does
  (identical for ids below 2**24)."""
  target = jnp.asarray(target)
  if target.ndim == 4:
    if target.shape[1] != 1:
      raise ValueError(f"target must be [B, H, W] or [B, 1, H, W], got {target.shape}")
    target = target[:, 0]
  if target.ndim != 3:
    raise ValueError(f"target must be [B, H, W] or [B, 1, H, W], got {target.shape}")
  _, in_h, in_w = target.shape
  rows = _nearest_index(in_h, h)
  cols = _nearest_index(in_w, w)
  return jnp.take(jnp.take(target, rows, axis=1), cols, axis=2)


def downsample(x: jax.Array, s: int) -> jax.Array:
  """x[:, ::s, ::s] (the original's downsample_tensor, channels-last): [B, H, W, ...]."""
  return x if s == 1 else x[:, ::s, ::s]


def _true_div(x: jax.Array, d) -> jax.Array:
  """x / d as a real IEEE division (XLA would otherwise multiply by the reciprocal)."""
  d = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(d, jnp.float32), x.shape))
  return x / d


def normalize_images(images: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
  """[B, H, W, 3] RGB on the 0..255 scale (uint8 or float) -> (x - mean) / std, float32."""
  x = jnp.asarray(images).astype(jnp.float32)
  return _true_div(x - jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """torch F.max_pool2d(kernel_size=3, stride=2, padding=1) on [B, H, W, C] (-inf padding)."""
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                               ((0, 0), (1, 1), (1, 1), (0, 0)))


# ---- Modules ---------------------------------------------------------------------------------

class BatchNorm2d(nnx.Module):
  """torch BatchNorm2d on [B, H, W, C] (statistics over B, H, W), float32.

  Params `scale` (torch weight), `bias`; statistics `mean`, `var` (nnx.BatchStat, torch
  running_mean / running_var). `use_running_average` True = eval mode."""

  def __init__(self, features: int, *, eps: float = 1e-5, momentum: float = 0.1,
               use_running_average: bool = True, rngs: nnx.Rngs | None = None):
    self.scale = layers.param(rngs, (features,), ("norm",), jnp.float32, jax.nn.initializers.ones)
    self.bias = layers.param(rngs, (features,), ("norm",), jnp.float32, jax.nn.initializers.zeros)
    self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32), logical_axes=("norm",))
    self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32), logical_axes=("norm",))
    self.eps = eps
    self.momentum = momentum
    self.use_running_average = use_running_average

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      mean = jnp.mean(x, axis=(0, 1, 2))
      var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
      n = x.shape[0] * x.shape[1] * x.shape[2]
      unbiased = var * (n / max(n - 1, 1))
      m = self.momentum
      self.mean.set_value((1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean))
      self.var.set_value((1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased))
    inv = jax.lax.rsqrt(var + self.eps) * self.scale[...]
    return ((x - mean) * inv + self.bias[...]).astype(dtype)


class ConvNorm(nnx.Module):
  """detectron2 Conv2d(bias=False, norm=BN): conv -> BatchNorm (activation applied outside)."""

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
               padding: int = 0, dilation: int = 1, config: EisenConfig,
               rngs: nnx.Rngs | None = None):
    self.conv = layers.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                              padding=padding, dilation=dilation, use_bias=False, init=MSRA,
                              precision=_PRECISION[config.precision], rngs=rngs)
    self.norm = BatchNorm2d(out_channels, eps=config.bn_eps, momentum=config.bn_momentum,
                            rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(self.conv(x))


class DeepLabStem(nnx.Module):
  """3x3 s2 (3 -> c/2) -> 3x3 (c/2 -> c/2) -> 3x3 (c/2 -> c), each + BN + ReLU, then
  maxpool 3x3 s2 p1: [B, H, W, 3] -> [B, H/4, W/4, c]."""

  def __init__(self, out_channels: int, *, config: EisenConfig, rngs: nnx.Rngs | None = None):
    half = out_channels // 2
    self.conv1 = ConvNorm(3, half, 3, stride=2, padding=1, config=config, rngs=rngs)
    self.conv2 = ConvNorm(half, half, 3, padding=1, config=config, rngs=rngs)
    self.conv3 = ConvNorm(half, out_channels, 3, padding=1, config=config, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(self.conv1(x))
    x = jax.nn.relu(self.conv2(x))
    x = jax.nn.relu(self.conv3(x))
    return max_pool_3x3_s2(x)


class Bottleneck(nnx.Module):
  """detectron2 BottleneckBlock (stride_in_1x1=False): 1x1 -> 3x3 (stride, dilation) -> 1x1,
  BN after each, ReLU after the first two and after the residual add; projection shortcut
  (1x1 with the stride + BN) when the width changes."""

  def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, *,
               stride: int, dilation: int, config: EisenConfig, rngs: nnx.Rngs | None = None):
    if in_channels == out_channels and stride != 1:
      raise ValueError("a strided block needs a projection shortcut (in != out channels)")
    self.shortcut = (ConvNorm(in_channels, out_channels, 1, stride=stride, config=config,
                              rngs=rngs) if in_channels != out_channels else None)
    self.conv1 = ConvNorm(in_channels, bottleneck_channels, 1, config=config, rngs=rngs)
    self.conv2 = ConvNorm(bottleneck_channels, bottleneck_channels, 3, stride=stride,
                          padding=dilation, dilation=dilation, config=config, rngs=rngs)
    self.conv3 = ConvNorm(bottleneck_channels, out_channels, 1, config=config, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(self.conv1(x))
    y = jax.nn.relu(self.conv2(y))
    y = self.conv3(y)
    s = self.shortcut(x) if self.shortcut is not None else x
    return jax.nn.relu(y + s)


def stage_specs(config: EisenConfig) -> list[list[dict]]:
  """Per stage res2..res5, per block: in/out/bottleneck channels, stride, dilation (as
  build_resnet_deeplab_backbone)."""
  specs = []
  in_ch = config.stem_out_channels
  for idx in range(4):
    dilation = (1, 1, config.res4_dilation, config.res5_dilation)[idx]
    first_stride = 1 if idx == 0 or dilation > 1 else 2
    n = config.num_blocks[idx]
    out_ch = config.stage_out_channels[idx]
    bott = config.stage_bottleneck_channels[idx]
    dilations = ([dilation * g for g in config.res5_multi_grid] if idx == 3 else [dilation] * n)
    blocks = []
    for i in range(n):
      blocks.append(dict(in_channels=in_ch if i == 0 else out_ch, out_channels=out_ch,
                         bottleneck_channels=bott, stride=first_stride if i == 0 else 1,
                         dilation=dilations[i]))
    specs.append(blocks)
    in_ch = out_ch
  return specs


class ResNet(nnx.Module):
  """The DeepLab ResNet: stem + res2..res5 -> {'res2', 'res3', 'res4', 'res5'} features at
  strides 4, 8, 16, 16 (res4_dilation=1, res5 dilated)."""

  def __init__(self, config: EisenConfig, *, rngs: nnx.Rngs | None = None):
    self.stem = DeepLabStem(config.stem_out_channels, config=config, rngs=rngs)
    specs = stage_specs(config)
    self.res2 = nnx.List([Bottleneck(**b, config=config, rngs=rngs) for b in specs[0]])
    self.res3 = nnx.List([Bottleneck(**b, config=config, rngs=rngs) for b in specs[1]])
    self.res4 = nnx.List([Bottleneck(**b, config=config, rngs=rngs) for b in specs[2]])
    self.res5 = nnx.List([Bottleneck(**b, config=config, rngs=rngs) for b in specs[3]])

  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    out = {}
    x = self.stem(x)
    for name in ("res2", "res3", "res4", "res5"):
      for block in getattr(self, name):
        x = block(x)
      out[name] = x
    return out


def _decoder_conv(cin: int, cout: int, k: int, config: EisenConfig, rngs, *, dilation: int = 1,
                  use_bias: bool = False) -> layers.Conv2d:
  """A DeepLabV3+ decoder conv: no norm, bias only where the original has one, c2_xavier."""
  return layers.Conv2d(cin, cout, k, padding=dilation * (k // 2), dilation=dilation,
                       use_bias=use_bias, init=XAVIER, precision=_PRECISION[config.precision],
                       rngs=rngs)


class ASPP(nnx.Module):
  """detectron2 ASPP with norm=None: [1x1, 3x3 d6, 3x3 d12, 3x3 d18, image pooling (global
  mean -> 1x1 with bias -> bilinear back)], each + ReLU, concat -> 1x1 + ReLU -> dropout
  (train only). [B, h, w, Cin] -> [B, h, w, C]."""

  def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int],
               dropout: float, *, config: EisenConfig, rngs: nnx.Rngs | None = None):
    convs = [_decoder_conv(in_channels, out_channels, 1, config, rngs)]
    convs += [_decoder_conv(in_channels, out_channels, 3, config, rngs, dilation=d)
              for d in dilations]
    self.convs = nnx.List(convs)
    self.pool_conv = _decoder_conv(in_channels, out_channels, 1, config, rngs, use_bias=True)
    self.project = _decoder_conv(5 * out_channels, out_channels, 1, config, rngs)
    self.dropout = dropout
    self.deterministic = True

  def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    size = x.shape[1:3]
    res = [jax.nn.relu(conv(x)) for conv in self.convs]
    pooled = jax.nn.relu(self.pool_conv(jnp.mean(x, axis=(1, 2), keepdims=True)))
    res.append(resize_bilinear(pooled, size))
    y = jax.nn.relu(self.project(jnp.concatenate(res, axis=-1)))
    if not self.deterministic and self.dropout > 0:
      if dropout_rng is None:
        raise ValueError("ASPP dropout in train mode needs dropout_rng (or call model.eval())")
      keep = jax.random.bernoulli(dropout_rng, 1.0 - self.dropout, y.shape)
      y = jnp.where(keep, y / (1.0 - self.dropout), 0.0).astype(y.dtype)
    return y


class DecoderStage(nnx.Module):
  """project_conv 1x1 (+ReLU) on the skip feature, bilinear upsample of y to its size,
  concat [proj, y], fuse_conv: two 3x3 (+ReLU)."""

  def __init__(self, in_channels: int, project_channels: int, y_channels: int,
               out_channels: int, *, config: EisenConfig, rngs: nnx.Rngs | None = None):
    self.project_conv = _decoder_conv(in_channels, project_channels, 1, config, rngs)
    self.fuse_conv = nnx.List([
        _decoder_conv(project_channels + y_channels, out_channels, 3, config, rngs),
        _decoder_conv(out_channels, out_channels, 3, config, rngs)])

  def __call__(self, skip: jax.Array, y: jax.Array) -> jax.Array:
    proj = jax.nn.relu(self.project_conv(skip))
    y = resize_bilinear(y, proj.shape[1:3])
    y = jnp.concatenate([proj, y], axis=-1)
    for conv in self.fuse_conv:
      y = jax.nn.relu(conv(y))
    return y


class DeepLabV3PlusDecoder(nnx.Module):
  """in_features res2, res3, res5 (decoder_only): ASPP(res5) -> res3 stage -> res2 stage ->
  [B, H/4, W/4, decoder_channels[0]]."""

  def __init__(self, config: EisenConfig, *, rngs: nnx.Rngs | None = None):
    c2, c3, _, c5 = config.stage_out_channels
    p2, p3 = config.project_channels
    d2, d3, _ = config.decoder_channels
    self.res5 = ASPP(c5, config.aspp_channels, config.aspp_dilations, config.aspp_dropout,
                     config=config, rngs=rngs)
    self.res3 = DecoderStage(c3, p3, config.aspp_channels, d3, config=config, rngs=rngs)
    self.res2 = DecoderStage(c2, p2, d3, d2, config=config, rngs=rngs)

  def __call__(self, feats: dict[str, jax.Array], dropout_rng: jax.Array | None = None):
    y = self.res5(feats["res5"], dropout_rng)
    y = self.res3(feats["res3"], y)
    return self.res2(feats["res2"], y)


class ResNetDeepLab(nnx.Module):
  """The original's ResNet_Deeplab: `backbone` (ResNet) + `decoder`; normalised images
  [B, H, W, 3] -> features [B, H/4, W/4, decoder_channels[0]]."""

  def __init__(self, config: EisenConfig, *, rngs: nnx.Rngs | None = None):
    self.backbone = ResNet(config, rngs=rngs)
    self.decoder = DeepLabV3PlusDecoder(config, rngs=rngs)

  def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    return self.decoder(self.backbone(x), dropout_rng)


class EisenHead(nnx.Module):
  """The affinity head: feat_conv 1x1 (F -> C, bias, no activation), then key_proj and
  query_proj Linear(C, C) with bias. features [B, h, w, F] -> (key, query) [B, h, w, C].

  Init as torch's defaults (the original sets none): U(+-1/sqrt(fan_in)) weights and biases."""

  def __init__(self, config: EisenConfig, *, rngs: nnx.Rngs | None = None):
    self.config = config
    f, c = config.feature_dim, config.kq_dim
    prec = _PRECISION[config.precision]
    self.feat_conv = layers.Conv2d(f, c, 1, use_bias=True, init=TORCH_DEFAULT,
                                   bias_init=torch_default_bias(f), precision=prec, rngs=rngs)
    self.key_proj = layers.Linear(c, c, axes=("kq_in", "kq"), use_bias=True, init=TORCH_DEFAULT,
                                  rngs=rngs)
    self.query_proj = layers.Linear(c, c, axes=("kq_in", "kq"), use_bias=True,
                                    init=TORCH_DEFAULT, rngs=rngs)
    if rngs is not None:
      for lin in (self.key_proj, self.query_proj):
        lin.bias.set_value(torch_default_bias(c)(rngs.params(), (c,)))
    self.precision = prec

  def _linear(self, lin: layers.Linear, x: jax.Array) -> jax.Array:
    y = jnp.einsum("...i,io->...o", x, lin.kernel[...], precision=self.precision)
    return y + lin.bias[...]

  def __call__(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = self.feat_conv(jnp.asarray(features, jnp.float32))
    return self._linear(self.key_proj, x), self._linear(self.query_proj, x)


class EISEN(nnx.Module):
  """The whole affinity network: images [B, H, W, 3] (RGB 0..255, uint8 or float) ->
  (key, query) [B, H/4, W/4, C]. `features()` stops before the head.

  In train mode (`model.train()`) BatchNorm uses and updates batch statistics and the ASPP
  dropout (p = aspp_dropout) needs `dropout_rng`."""

  def __init__(self, config: EisenConfig, *, rngs: nnx.Rngs | None = None):
    self.config = config
    self.backbone = ResNetDeepLab(config, rngs=rngs)
    self.head = EisenHead(config, rngs=rngs)

  def features(self, images: jax.Array, *, dropout_rng: jax.Array | None = None) -> jax.Array:
    """[B, H, W, 3] -> [B, H/4, W/4, feature_dim]."""
    x = normalize_images(images, self.config.pixel_mean, self.config.pixel_std)
    return self.backbone(x, dropout_rng)

  def __call__(self, images: jax.Array, *,
               dropout_rng: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    return self.head(self.features(images, dropout_rng=dropout_rng))


def create(config: EisenConfig, seed: int = 0) -> EISEN:
  """A freshly initialised EISEN (the original's inits), in eval mode."""
  return EISEN(config, rngs=nnx.Rngs(seed))


def abstract(config: EisenConfig) -> EISEN:
  """Shapes and dtypes only, for loading converted weights."""
  return nnx.eval_shape(lambda: EISEN(config, rngs=nnx.Rngs(0)))


def create_head(config: EisenConfig, seed: int = 0) -> EisenHead:
  return EisenHead(config, rngs=nnx.Rngs(seed))


def abstract_head(config: EisenConfig) -> EisenHead:
  return nnx.eval_shape(lambda: EisenHead(config, rngs=nnx.Rngs(0)))


# ---- Affinity sampling, logits, loss (pure functions) -----------------------------------------

@functools.lru_cache(maxsize=64)
def _local_indices_np(h: int, w: int, k: int) -> np.ndarray:
  if k % 2 == 0:
    raise ValueError(f"local window size must be odd, got {k}")
  n = h * w
  r = k // 2
  padded = np.full((h + 2 * r, w + 2 * r), n, np.int32)
  padded[r:r + h, r:r + w] = np.arange(n, dtype=np.int32).reshape(h, w)
  out = np.empty((h, w, k, k), np.int32)
  for dy in range(k):
    for dx in range(k):
      out[:, :, dy, dx] = padded[dy:dy + h, dx:dx + w]
  out = out.reshape(n, k * k)
  out.setflags(write=False)
  return out


def local_indices(h: int, w: int, k: int) -> np.ndarray:
  """[N, k*k] int32 (N = h*w): node n's k x k window in row-major (dy, dx) order, the node
  itself at the centre (k*k // 2), out-of-image neighbours = the sentinel N. A constant
  (numpy, read-only), as the original's generate_local_indices."""
  return _local_indices_np(int(h), int(w), int(k))


def random_global_indices(rng: jax.Array, b: int, n: int, count: int) -> jax.Array:
  """[b, n, count] int32 uniform in [0, n) with replacement (torch.randint(n, [b, n, count]))."""
  return jax.random.randint(rng, (b, n, count), 0, n, dtype=jnp.int32)


def sample_indices(local: jax.Array, global_idx: jax.Array | None) -> jax.Array:
  """local [N, K*K] + global_idx [B, N, G] -> [B, N, K*K + G] int32 (local first).
  global_idx None: local only, [1, N, K*K] (broadcasts over the batch)."""
  local = jnp.asarray(local, jnp.int32)
  if global_idx is None:
    return local[None]
  global_idx = jnp.asarray(global_idx, jnp.int32)
  if global_idx.ndim != 3 or global_idx.shape[1] != local.shape[0]:
    raise ValueError(f"global_idx must be [B, {local.shape[0]}, G], got {global_idx.shape}")
  b = global_idx.shape[0]
  return jnp.concatenate([jnp.broadcast_to(local[None], (b,) + local.shape), global_idx], -1)


def _flat_nodes(x: jax.Array) -> jax.Array:
  """[B, h, w, C] or [B, N, C] -> [B, N, C]."""
  x = jnp.asarray(x)
  if x.ndim == 4:
    return x.reshape(x.shape[0], -1, x.shape[-1])
  if x.ndim != 3:
    raise ValueError(f"expected [B, h, w, C] or [B, N, C], got {x.shape}")
  return x


def gather_nodes(x: jax.Array, idx: jax.Array, fill=0) -> jax.Array:
  """x [B, N, ...] at idx [B', N', S] (B' in {1, B}) along the node axis -> [B, N', S, ...];
  the sentinel index N reads `fill`."""
  b, n = x.shape[:2]
  pad = jnp.full((b, 1) + x.shape[2:], fill, x.dtype)
  xp = jnp.concatenate([x, pad], axis=1)
  idx = jnp.broadcast_to(idx, (b,) + idx.shape[1:])
  flat = idx.reshape(b, -1)
  out = jax.vmap(lambda a, i: jnp.take(a, i, axis=0))(xp, flat)
  return out.reshape(idx.shape + x.shape[2:])


_GATHER_BUDGET_BYTES = 1 << 28  # per chunk of the [B, rows, S, C] gathered keys


def _auto_node_chunk(b: int, n: int, s: int, c: int) -> int:
  """Rows per chunk so that the gathered keys of one chunk stay near 256 MiB (all rows when
  they fit)."""
  rows = max(1, _GATHER_BUDGET_BYTES // max(1, b * s * c * 4))
  return n if rows >= n else 1 << (rows.bit_length() - 1)  # a power of two


def affinity_logits(key: jax.Array, query: jax.Array, sample_idx: jax.Array,
                    precision=jax.lax.Precision.HIGHEST,
                    node_chunk: int | None = None) -> jax.Array:
  """[B, N, S] = <query_n, key_{sample_idx[b, n, s]}> * C**-0.5; sentinel N -> exactly 0.

  key, query: [B, h, w, C] or [B, N, C]; sample_idx [B, N, S] (or [1, N, S]).
  The gathered keys [B, rows, S, C] are formed `node_chunk` rows at a time (default: as many
  as fit in ~256 MiB) under lax.map + checkpoint, so forward and backward memory stay
  O(B * N * S) plus one chunk; every logit is the same computation either way."""
  k = _flat_nodes(key).astype(jnp.float32)
  q = _flat_nodes(query).astype(jnp.float32)
  b, n, c = k.shape
  idx = jnp.asarray(sample_idx, jnp.int32)
  idx = jnp.broadcast_to(idx, (b,) + idx.shape[1:])
  s = idx.shape[-1]
  kp = jnp.concatenate([k, jnp.zeros((b, 1, c), k.dtype)], axis=1)  # sentinel row N

  def rows(q_rows, idx_rows):  # [B, r, C], [B, r, S] -> [B, r, S]
    g = jax.vmap(lambda a, i: jnp.take(a, i, axis=0))(kp, idx_rows)
    return jnp.einsum("brc,brsc->brs", q_rows, g, precision=precision)

  chunk = _auto_node_chunk(b, n, s, c) if node_chunk is None else int(node_chunk)
  if chunk >= n:
    logits = rows(q, idx)
  else:
    m = -(-n // chunk)
    pad = m * chunk - n
    qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0)))
    ip = jnp.pad(idx, ((0, 0), (0, pad), (0, 0)), constant_values=n)
    qs = qp.reshape(b, m, chunk, c).transpose(1, 0, 2, 3)
    is_ = ip.reshape(b, m, chunk, s).transpose(1, 0, 2, 3)
    out = jax.lax.map(jax.checkpoint(lambda a: rows(*a)), (qs, is_))  # [m, B, chunk, S]
    logits = out.transpose(1, 0, 2, 3).reshape(b, m * chunk, s)[:, :n]
  return logits * np.float32(c ** -0.5)


def full_affinity_logits(key: jax.Array, query: jax.Array,
                         precision=jax.lax.Precision.HIGHEST) -> jax.Array:
  """All pairs: [B, N, N] = <query_n, key_m> * C**-0.5 (memory N*N; for small maps)."""
  k = _flat_nodes(key).astype(jnp.float32)
  q = _flat_nodes(query).astype(jnp.float32)
  return jnp.einsum("bnc,bmc->bnm", q, k, precision=precision) * np.float32(k.shape[-1] ** -0.5)


def softmax_max_norm(logits: jax.Array) -> jax.Array:
  """softmax over the last axis divided by its row max (clamped at 1e-12): row max is 1."""
  a = jax.nn.softmax(logits, axis=-1)
  return a / jnp.maximum(jnp.max(a, axis=-1, keepdims=True), 1e-12)


def affinity_loss_from_targets(logits: jax.Array, targets: jax.Array,
                               mask: jax.Array) -> jax.Array:
  """Row-wise KL(target || prediction) over the loss mask, the original's compute_loss.

  logits [B, N, S]; targets [B, N, S] >= 0 (connectivity, normalised per row here);
  mask [B, N] (row mask, as the original) or [B, N, S] (per entry). Returns a scalar:
    p = exp(l - max l) / (sum_s exp(l - max l) * m + 1e-12) * m;  log p clamped at 1e-8
    t = targets / (sum_s targets + 1e-9)
    loss = sum_{b,n,s} m * t (log t - log p) / (#rows with sum_s m > 0 + 1e-9)
  """
  logits = jnp.asarray(logits, jnp.float32)
  targets = jnp.asarray(targets, jnp.float32)
  m = jnp.asarray(mask, jnp.float32)
  if m.ndim == logits.ndim - 1:
    m = m[..., None]
  mx = jnp.max(logits, axis=-1, keepdims=True)
  e = jnp.exp(logits - mx)
  p = e / (jnp.sum(e * m, axis=-1, keepdims=True) + 1e-12) * m
  logp = jnp.log(jnp.maximum(p, 1e-8))
  t = targets / (jnp.sum(targets, axis=-1, keepdims=True) + 1e-9)
  tlogt = jnp.where(t > 0, t * jnp.log(jnp.where(t > 0, t, 1.0)), 0.0)
  kl = jnp.sum((tlogt - t * logp) * m, axis=-1)
  rows = jnp.sum((jnp.sum(m, axis=-1) > 0).astype(jnp.float32))
  return jnp.sum(kl) / (rows + 1e-9)


def connectivity_targets(target: jax.Array, sample_idx: jax.Array | None) -> tuple[jax.Array,
                                                                                  jax.Array]:
  """Labels [B, h, w] -> (targets [B, N, S] float: label_n == label_sample, with the sentinel
  reading label 0; row mask [B, N]: label_n != 0). sample_idx None: all pairs [B, N, N]."""
  seg = jnp.asarray(target).reshape(target.shape[0], -1)
  if sample_idx is None:
    samples = jnp.broadcast_to(seg[:, None, :], seg.shape + seg.shape[1:])
  else:
    samples = gather_nodes(seg, jnp.asarray(sample_idx, jnp.int32), fill=0)
  return (seg[:, :, None] == samples).astype(jnp.float32), seg != 0


def affinity_loss(logits: jax.Array, sample_idx: jax.Array | None, target: jax.Array,
                  size: Sequence[int] | None = None) -> jax.Array:
  """The original's compute_loss: KL between predicted affinities and "same label" targets
  over rows whose label is non-zero (moving pixels).

  logits [B, N, S]; sample_idx [B, N, S] (None: full affinities, S = N); target int labels
  [B, H', W'] or [B, 1, H', W'], nearest-resized to `size` = (h, w) with h*w = N when given
  (default: its own size)."""
  target = jnp.asarray(target)
  if target.ndim == 4:
    target = target[:, 0]
  if size is not None and tuple(target.shape[1:]) != tuple(size):
    target = nearest_resize_labels(target, int(size[0]), int(size[1]))
  if target.shape[1] * target.shape[2] != logits.shape[1]:
    raise ValueError(f"target {target.shape} has not N={logits.shape[1]} pixels; pass size")
  targets, mask = connectivity_targets(target, sample_idx)
  return affinity_loss_from_targets(logits, targets, mask)


def sample_affinities(key: jax.Array, query: jax.Array, *, local_window_size: int,
                      num_samples: int, rng: jax.Array | None = None,
                      global_idx: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """key, query [B, h, w, C] -> (logits [B, N, S], sample_idx [B, N, S]) with the K x K
  window plus S - K*K global samples (recorded `global_idx` [B, N, S - K*K], else drawn from
  `rng`); K*K >= S: local window only (as the original)."""
  b, h, w, _ = key.shape
  local = local_indices(h, w, local_window_size)
  count = num_samples - local_window_size ** 2
  if count > 0 and global_idx is None:
    if rng is None:
      raise ValueError("global samples need rng or global_idx")
    global_idx = random_global_indices(rng, b, h * w, count)
  elif count <= 0:
    global_idx = None
  idx = sample_indices(local, global_idx)
  idx = jnp.broadcast_to(idx, (b,) + idx.shape[1:])
  return affinity_logits(key, query, idx), idx


def multiscale_loss(key: jax.Array, query: jax.Array, target: jax.Array, *,
                    local_window_size: int, num_samples: int, levels: int = 3,
                    global_idx: Sequence[jax.Array] | None = None,
                    rng: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """The training loss: affinity_loss at strides 1, 2, 4, ... (key/query subsampled
  x[:, ::s, ::s], the same K x K window, fresh global samples per level: `global_idx[l]`
  or drawn from fold_in(rng, l)), target nearest-resized per level. Returns (sum, per level).

  key, query [B, h, w, C]; target int labels [B, H', W'] or [B, 1, H', W']."""
  losses = []
  for level in range(levels):
    s = 2 ** level
    k, q = downsample(key, s), downsample(query, s)
    g = None if global_idx is None else global_idx[level]
    r = None if rng is None else jax.random.fold_in(rng, level)
    logits, idx = sample_affinities(k, q, local_window_size=local_window_size,
                                    num_samples=num_samples, rng=r, global_idx=g)
    losses.append(affinity_loss(logits, idx, target, size=k.shape[1:3]))
  return sum(losses), tuple(losses)
