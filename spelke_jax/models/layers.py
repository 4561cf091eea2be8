"""Small flax.nnx layers whose parameters carry logical axis names.

Every parameter is an `nnx.Param` with metadata `logical_axes` (one name or None per dim);
`spelke_jax.sharding` maps the names to mesh axes with the rules of a config. Layouts are
channels-last: Linear kernels are [in, out], conv kernels [kh, kw, in, out] (HWIO).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]


def param(rngs: nnx.Rngs | None, shape: Sequence[int], axes: Axes, dtype, init=None) -> nnx.Param:
  """A parameter of `shape` with logical `axes`; zeros when no rngs are given (for loading)."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match shape {tuple(shape)}")
  if rngs is None or init is None:
    value = jnp.zeros(shape, dtype)
  else:
    value = init(rngs.params(), tuple(shape), dtype)
  return nnx.Param(value, logical_axes=tuple(axes))


def normal(stddev: float):
  return jax.nn.initializers.normal(stddev)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias). kernel [in, out]."""

  def __init__(self, in_features: int, out_features: int, *, axes: Axes, use_bias: bool = False,
               param_dtype=jnp.float32, dtype=None, init=None, rngs: nnx.Rngs | None = None):
    self.kernel = param(rngs, (in_features, out_features), axes, param_dtype,
                        init or jax.nn.initializers.lecun_normal())
    self.bias = (param(rngs, (out_features,), (axes[1],), param_dtype, jax.nn.initializers.zeros)
                 if use_bias else None)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = self.dtype or x.dtype
    y = jnp.einsum("...i,io->...o", x.astype(dtype), self.kernel[...].astype(dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(dtype)
    return y


class Embed(nnx.Module):
  """Lookup table [num, features]."""

  def __init__(self, num: int, features: int, *, axes: Axes, param_dtype=jnp.float32,
               init=None, rngs: nnx.Rngs | None = None):
    self.embedding = param(rngs, (num, features), axes, param_dtype, init or normal(0.02))

  def __call__(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], ids, axis=0)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in float32 (as torch autocast does).

  Two-pass variance (mean of squared deviations), like torch, not E[x^2] - E[x]^2.
  """

  def __init__(self, features: int, *, use_bias: bool, eps: float = 1e-5, axis_name: str | None = "norm",
               param_dtype=jnp.float32, rngs: nnx.Rngs | None = None):
    self.scale = param(rngs, (features,), (axis_name,), param_dtype, jax.nn.initializers.ones)
    self.bias = (param(rngs, (features,), (axis_name,), param_dtype, jax.nn.initializers.zeros)
                 if use_bias else None)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)


class Conv2d(nnx.Module):
  """2-D convolution on [B, H, W, C] with a [kh, kw, in, out] kernel and bias.

  `padding` is symmetric zero padding in pixels (torch's `padding=p`), `dilation` torch's
  `dilation=d` (kernel taps d pixels apart). `init` / `bias_init` default to lecun normal /
  zeros; `precision` is the XLA precision of the convolution (HIGHEST: no TF32 on GPU).
  """

  def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1,
               padding: int = 0, dilation: int = 1, use_bias: bool = True,
               param_dtype=jnp.float32, init=None, bias_init=None,
               precision=jax.lax.Precision.HIGHEST, rngs: nnx.Rngs | None = None):
    k = kernel_size
    self.kernel = param(rngs, (k, k, in_channels, out_channels), (None, None, "conv_in", "conv_out"),
                        param_dtype, init or jax.nn.initializers.lecun_normal())
    self.bias = (param(rngs, (out_channels,), ("conv_out",), param_dtype,
                       bias_init or jax.nn.initializers.zeros)
                 if use_bias else None)
    self.stride = stride
    self.padding = padding
    self.dilation = dilation
    self.precision = precision

  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.padding
    y = jax.lax.conv_general_dilated(
        x, self.kernel[...].astype(x.dtype), window_strides=(self.stride, self.stride),
        padding=((p, p), (p, p)), rhs_dilation=(self.dilation, self.dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    if self.bias is not None:
      y = y + self.bias[...].astype(x.dtype)
    return y
