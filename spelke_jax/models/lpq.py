"""LPQ, the Local Patch Quantizer (SpelkeNet's RGB and flow tokenizers), in flax.nnx.

Same computation as the original (spelke_net/local_patch_quantizer/model.py with
utils/modeling.py and vector-quantize-pytorch's LFQ, spherical, eval mode), channels-last:

  encoder   Conv(k=patch, s=patch) -> SiLU -> blocks (PatchResidualConvBlock | Downsample)
  quantizer LFQ: p = project_in(z) [.., D]; index = sum_d (p_d > 0) * 2**(D-1-d) (MSB first,
            p_d == 0 gives bit 0); codes = project_out((2*bit - 1) / sqrt(D))
  decoder   blocks (PatchResidualConvBlock | Upsample) -> Conv(k3, p1) to C_out

Images are [B, H, W, C]; codes/features [B, h, w, C']; indices int32 [B, h, w] (or
[B, h, w, num_codebooks] when num_codebooks > 1). The model works in normalised space; the
plain functions at the bottom convert uint8 RGB / pixel flow to and from it. The original's
dropout (p=0.1 in the ResBlocks, eval-off) is omitted. `LPQ.train_forward` (with
`LFQ.train_quantize`) is the training-mode forward: straight-through codes plus the LFQ entropy
and commitment terms (train/lpq.py trains with it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from spelke_jax.models import layers
from spelke_jax.models.lpq_config import FLOW_SCALE, IMAGENET_MEAN, IMAGENET_STD, LPQConfig

_HIGHEST = jax.lax.Precision.HIGHEST


class PatchResidualConvBlock(nnx.Module):
  """x + SiLU(conv2(SiLU(conv1(LayerNorm_C(x))))) on [B, H, W, C]; LayerNorm has weight+bias."""

  def __init__(self, in_dim: int, out_dim: int, hidden_dim: int, kernel_size: int, stride: int,
               padding: int, *, eps: float = 1e-5, rngs: nnx.Rngs | None = None):
    self.ln1 = layers.LayerNorm(in_dim, use_bias=True, eps=eps, rngs=rngs)
    self.conv1 = layers.Conv2d(in_dim, hidden_dim, kernel_size, stride=stride, padding=padding,
                               rngs=rngs)
    self.conv2 = layers.Conv2d(hidden_dim, out_dim, kernel_size, stride=stride, padding=padding,
                               rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    z = jax.nn.silu(self.conv1(self.ln1(x)))
    z = jax.nn.silu(self.conv2(z))
    return z + x


class Upsample(nnx.Module):
  """Nearest-neighbour x2 then Conv(k3, s1, p1): [B, H, W, Cin] -> [B, 2H, 2W, Cout]."""

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs | None = None):
    self.conv = layers.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return self.conv(x)


class Downsample(nnx.Module):
  """Zero-pad right/bottom by 1 then Conv(k3, s2, p0): [B, H, W, Cin] -> [B, H', W', Cout]."""

  def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs | None = None):
    self.conv = layers.Conv2d(in_channels, out_channels, 3, stride=2, padding=0, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return self.conv(x)


def _block(spec: tuple, eps: float, rngs: nnx.Rngs | None) -> nnx.Module:
  kind = spec[0]
  if kind == "ResBlock":
    return PatchResidualConvBlock(*spec[1:], eps=eps, rngs=rngs)
  if kind == "Upsample":
    return Upsample(*spec[1:], rngs=rngs)
  if kind == "Downsample":
    return Downsample(*spec[1:], rngs=rngs)
  raise ValueError(f"unknown LPQ block type {kind!r}")


def _dense(lin: layers.Linear, x: jax.Array) -> jax.Array:
  """x @ kernel + bias in float32 at full precision (signs of the LFQ pre-activation matter)."""
  y = jnp.einsum("...i,io->...o", x.astype(jnp.float32), lin.kernel[...].astype(jnp.float32),
                 precision=_HIGHEST)
  if lin.bias is not None:
    y = y + lin.bias[...].astype(jnp.float32)
  return y


class LFQ(nnx.Module):
  """Lookup-free quantizer (spherical, eval semantics) with D = codebook_bits per codebook.

  project_in/project_out are Linears with bias when dim != D * num_codebooks, else identity
  (as in vector-quantize-pytorch).
  """

  def __init__(self, dim: int, codebook_bits: int, num_codebooks: int = 1, *,
               codebook_scale: float = 1.0, rngs: nnx.Rngs | None = None):
    self.dim = dim
    self.codebook_bits = codebook_bits
    self.num_codebooks = num_codebooks
    self.codebook_scale = codebook_scale
    cd = codebook_bits * num_codebooks
    if dim != cd:
      self.project_in = layers.Linear(dim, cd, axes=("embed", "lfq"), use_bias=True, rngs=rngs)
      self.project_out = layers.Linear(cd, dim, axes=("lfq", "embed"), use_bias=True, rngs=rngs)
    else:
      self.project_in = None
      self.project_out = None

  def _weights(self) -> jax.Array:
    """[D] int32 bit weights 2**(D-1-d), most significant first."""
    return jnp.left_shift(jnp.int32(1), jnp.arange(self.codebook_bits - 1, -1, -1, dtype=jnp.int32))

  def preact(self, z: jax.Array) -> jax.Array:
    """[..., dim] features -> [..., D * num_codebooks] float32 pre-activation."""
    z = z.astype(jnp.float32)
    return z if self.project_in is None else _dense(self.project_in, z)

  def indices_from_preact(self, p: jax.Array) -> jax.Array:
    """[..., D * c] pre-activation -> int32 indices [...] (c == 1) or [..., c]."""
    p = p.reshape(p.shape[:-1] + (self.num_codebooks, self.codebook_bits))
    idx = jnp.sum(jnp.where(p > 0, self._weights(), 0), axis=-1, dtype=jnp.int32)
    return idx[..., 0] if self.num_codebooks == 1 else idx

  def indices(self, z: jax.Array) -> jax.Array:
    """[..., dim] features -> int32 indices [...] (or [..., c])."""
    return self.indices_from_preact(self.preact(z))

  def bits(self, indices: jax.Array) -> jax.Array:
    """int indices [...] (or [..., c]) -> bool bits [..., c, D], most significant first."""
    idx = jnp.asarray(indices).astype(jnp.int32)
    if self.num_codebooks == 1:
      idx = idx[..., None]
    return (idx[..., None] & self._weights()) != 0

  def unit_codes(self, indices: jax.Array) -> jax.Array:
    """indices -> [..., D * c] float32 spherical codes (2*bit - 1) * scale / sqrt(D)."""
    b = self.bits(indices)
    sign = jnp.where(b, jnp.float32(1), jnp.float32(-1))
    codes = sign / jnp.sqrt(jnp.float32(self.codebook_bits)) * jnp.float32(self.codebook_scale)
    return codes.reshape(codes.shape[:-2] + (-1,))

  def codes(self, indices: jax.Array) -> jax.Array:
    """indices -> [..., dim] float32 embeddings (project_out of the spherical codes)."""
    c = self.unit_codes(indices)
    return c if self.project_out is None else _dense(self.project_out, c)

  def codebook(self) -> jax.Array:
    """[2**D, D] float32: every code of one codebook, (2*bit - 1) * scale / sqrt(D) (spherical)."""
    idx = jnp.arange(2**self.codebook_bits, dtype=jnp.int32)
    bits = (idx[:, None] & self._weights()) != 0
    sign = jnp.where(bits, jnp.float32(1), jnp.float32(-1))
    return sign / jnp.sqrt(jnp.float32(self.codebook_bits)) * jnp.float32(self.codebook_scale)

  def train_quantize(self, z: jax.Array, *, inv_temperature: float = 100.0,
                     diversity_gamma: float = 1.0) -> tuple[jax.Array, jax.Array, dict]:
    """Training-mode LFQ (vector-quantize-pytorch with spherical=True, in training mode).

    z [..., dim] -> (out [..., dim], indices int32 [...] (or [..., c]), aux), per codebook:
      x   = l2norm(project_in(z)) * scale                    [..., c, D]
      q   = where(x > 0, 1, -1) * scale / sqrt(D)            the spherical code (= unit_codes)
      out = project_out(x + stop_gradient(q - x))            straight-through; value == codes(idx)
    aux (unweighted scalars):
      per_sample_entropy  mean_n H(softmax_k(-||x_n - c_k||^2 * inv_temperature))
                          (= softmax_k(2 * inv_temperature * <x_n, c_k>): |x_n|, |c_k| are constant)
      codebook_entropy    mean_c H(mean_n softmax(...)), over every token of the (global) batch
      entropy_aux_loss    per_sample_entropy - diversity_gamma * codebook_entropy
      commit_loss         mean((x - stop_gradient(q))**2)
    with H(p) = -sum_k p_k log(max(p_k, 1e-5)) as the original. The softmax is over the full
    codebook: [N, c, 2**D] floats for N tokens (cheap for small codebooks).
    """
    d, c = self.codebook_bits, self.num_codebooks
    p = self.preact(z)
    p = p.reshape(p.shape[:-1] + (c, d))
    # F.normalize's max(||p||, 1e-12), with the clamp inside the sqrt so that the gradient at
    # p == 0 (a zero flow through a bias-free encoder) is 0 instead of NaN.
    norm = jnp.sqrt(jnp.maximum(jnp.sum(p * p, axis=-1, keepdims=True), 1e-24))
    x = p / norm * jnp.float32(self.codebook_scale)
    unit = jnp.float32(self.codebook_scale) / jnp.sqrt(jnp.float32(d))
    q = jnp.where(x > 0, unit, -unit)
    idx = jnp.sum(jnp.where(x > 0, self._weights(), 0), axis=-1, dtype=jnp.int32)
    st = x + jax.lax.stop_gradient(q - x)
    st = st.reshape(st.shape[:-2] + (c * d,))
    out = st if self.project_out is None else _dense(self.project_out, st)

    flat = x.reshape(-1, c, d)
    logits = (2.0 * inv_temperature) * jnp.einsum("ncd,kd->nck", flat, self.codebook(),
                                                  precision=_HIGHEST)
    prob = jax.nn.softmax(logits, axis=-1)
    entropy = lambda pr: -jnp.sum(pr * jnp.log(jnp.maximum(pr, 1e-5)), axis=-1)
    per_sample = jnp.mean(entropy(prob))
    codebook_entropy = jnp.mean(entropy(jnp.mean(prob, axis=0)))
    commit = jnp.mean((x - jax.lax.stop_gradient(q)) ** 2)
    aux = {"per_sample_entropy": per_sample, "codebook_entropy": codebook_entropy,
           "entropy_aux_loss": per_sample - diversity_gamma * codebook_entropy,
           "commit_loss": commit}
    return out, (idx[..., 0] if c == 1 else idx), aux


class LPQ(nnx.Module):
  """The tokenizer: images/flows [B, H, W, C_in] (normalised) <-> int32 indices [B, h, w]."""

  def __init__(self, config: LPQConfig, *, rngs: nnx.Rngs | None = None):
    self.config = config
    eps = config.ln_eps
    self.patch_conv = layers.Conv2d(config.num_in_channels, config.stem_width, config.patch_size,
                                    stride=config.patch_size, padding=0, rngs=rngs)
    self.encoder_blocks = nnx.List([_block(b, eps, rngs) for b in config.encoder_blocks])
    self.quantizer = LFQ(config.embed_width, config.codebook_bits, config.num_codebooks,
                         codebook_scale=config.codebook_scale, rngs=rngs)
    self.decoder_blocks = nnx.List([_block(b, eps, rngs) for b in config.decoder_blocks])
    self.out_conv = layers.Conv2d(config.decoder_blocks[-1][2], config.num_out_channels, 3,
                                  stride=1, padding=1, rngs=rngs)

  def encode_features(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C_in] normalised input -> encoder output [B, H/4, W/4, C'] (patch 4, floor)."""
    z = jax.nn.silu(self.patch_conv(x.astype(jnp.float32)))
    for block in self.encoder_blocks:
      z = block(z)
    return z

  def preact(self, z: jax.Array) -> jax.Array:
    """Encoder output [B, h, w, C'] -> LFQ pre-activation [B, h, w, D]."""
    return self.quantizer.preact(z)

  def quantize(self, x: jax.Array) -> jax.Array:
    """[B, H, W, C_in] normalised input -> int32 indices [B, h, w]."""
    return self.quantizer.indices(self.encode_features(x))

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """int indices [B, h, w] -> decoder input [B, h, w, C'] float32."""
    return self.quantizer.codes(indices)

  def decode_codes(self, codes: jax.Array) -> jax.Array:
    """[B, h, w, C'] -> [B, h*up, w*up, C_out] in normalised space (up = 4 for released)."""
    y = codes
    for block in self.decoder_blocks:
      y = block(y)
    return self.out_conv(y)

  def decode(self, indices: jax.Array) -> jax.Array:
    """int indices [B, h, w] -> [B, H, W, C_out] in normalised space."""
    return self.decode_codes(self.indices_to_codes(indices))

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eval-mode forward: (reconstruction [B, H, W, C_out], indices [B, h, w])."""
    idx = self.quantize(x)
    return self.decode(idx), idx

  def train_forward(self, x: jax.Array, *, inv_temperature: float = 100.0,
                    diversity_gamma: float = 1.0) -> tuple[jax.Array, dict]:
    """Training forward: [B, H, W, C_in] normalised -> (reconstruction [B, H, W, C_out], aux).

    The decoder sees the straight-through codes (values equal `indices_to_codes(indices)`, so
    the reconstruction equals `self(x)[0]`; gradients pass to the encoder). aux holds `indices`
    [B, h, w] and the unweighted LFQ terms of `LFQ.train_quantize`."""
    z = self.encode_features(x)
    codes, idx, aux = self.quantizer.train_quantize(z, inv_temperature=inv_temperature,
                                                    diversity_gamma=diversity_gamma)
    return self.decode_codes(codes), {"indices": idx, **aux}


def create(config: LPQConfig, seed: int = 0) -> LPQ:
  """A randomly initialised tokenizer (not the original's init; for tests and shapes)."""
  return LPQ(config, rngs=nnx.Rngs(seed))


def abstract(config: LPQConfig) -> LPQ:
  """Shapes and dtypes only (no memory), for loading converted weights."""
  return nnx.eval_shape(lambda: LPQ(config, rngs=nnx.Rngs(0)))


# ---- Pre/post-processing (the original LRASFlowPredictor transforms) --------------------------

def _true_div(x: jax.Array, d) -> jax.Array:
  """x / d rounded like torch (IEEE division).

  XLA rewrites division by a constant into multiplication by its reciprocal (up to a few ulp
  off); hiding the divisor behind an optimization barrier keeps a real divide (still fused).
  """
  d = jax.lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(d, jnp.float32), x.shape))
  return x / d


def normalize_rgb(image_uint8: jax.Array) -> jax.Array:
  """[B, H, W, 3] uint8 RGB -> [B, H, W, 3] float32: (x/255 - mean) / std (ToTensor+Normalize)."""
  x = _true_div(jnp.asarray(image_uint8).astype(jnp.float32), 255.0)
  return _true_div(x - jnp.asarray(IMAGENET_MEAN, jnp.float32), IMAGENET_STD)


def denormalize_rgb(x: jax.Array) -> jax.Array:
  """[B, H, W, 3] normalised -> RGB in [0, 1] float32 (inv_in_transform without ToPILImage).

  As the original: Normalize(mean=-m/s, std=1/s) with float64 constants cast to float32, i.e.
  (x - (-m/s)) / (1/s), then clamp to [0, 1].
  """
  m, s = np.asarray(IMAGENET_MEAN, np.float64), np.asarray(IMAGENET_STD, np.float64)
  y = jnp.asarray(x, jnp.float32) - jnp.asarray((-m / s).astype(np.float32))
  return jnp.clip(_true_div(y, (1.0 / s).astype(np.float32)), 0.0, 1.0)


def normalize_flow(flow_px: jax.Array) -> jax.Array:
  """[B, H, W, 2] flow in pixels (dx, dy) -> [B, H, W, 2] flow / 20 float32."""
  return _true_div(jnp.asarray(flow_px).astype(jnp.float32), FLOW_SCALE)


def denormalize_flow(x: jax.Array) -> jax.Array:
  """[B, H, W, 2] normalised flow -> pixels: x / float32(1/20) (inv_flow_transform)."""
  return _true_div(jnp.asarray(x, jnp.float32), np.float32(1.0 / FLOW_SCALE))


def _check_kind(model: LPQ, kind: str):
  if model.config.kind != kind:
    raise ValueError(f"this is the {model.config.kind} tokenizer, not the {kind} one")


def encode_image(model: LPQ, image_uint8: jax.Array) -> jax.Array:
  """[B, H, W, 3] uint8 RGB -> int32 rgb codes [B, H/4, W/4]."""
  _check_kind(model, "rgb")
  return model.quantize(normalize_rgb(image_uint8))


def decode_image(model: LPQ, indices: jax.Array) -> jax.Array:
  """int rgb codes [B, h, w] -> [B, h*up, w*up, 3] RGB float32 in [0, 1] (up = 4 released)."""
  _check_kind(model, "rgb")
  return denormalize_rgb(model.decode(indices))


def encode_flow(model: LPQ, flow_px: jax.Array) -> jax.Array:
  """[B, H, W, 2] flow in pixels -> int32 flow codes [B, H/4, W/4]."""
  _check_kind(model, "flow")
  return model.quantize(normalize_flow(flow_px))


def decode_flow(model: LPQ, indices: jax.Array) -> jax.Array:
  """int flow codes [B, h, w] -> [B, h*up, w*up, 2] flow in pixels (up = 4 released)."""
  _check_kind(model, "flow")
  return denormalize_flow(model.decode(indices))
