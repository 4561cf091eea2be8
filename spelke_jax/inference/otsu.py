"""Otsu segmentation of a heat map, as SpelkeNet's `segment.threshold_heatmap` (cv2-free).

The original normalises the map to uint8 and calls
`cv2.threshold(u8, 0, 255, THRESH_BINARY + THRESH_OTSU)`; the segment is `u8 > t` as 0/1.

  u8 = ((m - m.min()) / (m.max() - m.min() + 1e-8) * 255).astype(uint8)   # float32, truncation

OpenCV's Otsu (`getThreshVal_Otsu<uchar>`, the portable C path) is reproduced operation by
operation in float64: 256-bin histogram, `mu = sum(i*h[i]) * (1/n)`, then for every bin
`p = h[i]*scale; mu1 *= q1; q1 += p; q2 = 1 - q1`, bins with `min(q1,q2) < FLT_EPSILON` or
`max(q1,q2) > 1 - FLT_EPSILON` skipped, `mu1 = (mu1 + i*p)/q1; mu2 = (mu - q1*mu1)/q2;
sigma = q1*q2*(mu1-mu2)*(mu1-mu2)`, first strict maximum wins (threshold 0 if none).

Two precision traps:
* The loop runs in Python floats (IEEE double, no fused multiply-add). XLA contracts f64
  `a*b + c` into FMAs, which moves the winner on exact variance ties, so the jnp version
  computes the u8 map and the histogram on device and runs this 256-step scan on the host
  through `jax.pure_callback` (exact on every backend, usable under jit and vmap).
* pip's cv2 wheels on x86 route 8-bit Otsu through Intel IPP (`ippiComputeThreshold_Otsu`),
  which agrees with the C loop except on exact between-class-variance ties between different
  partitions (e.g. a symmetric three-level histogram), where it may pick the other tied
  threshold. With `cv2.ipp.setUseIPP(False)` cv2 5.0 equals this module on all 8682
  histograms we tried (random, few-level and constructed ties); with IPP on, only the tie
  cases differ. Continuous heat maps essentially never produce exact ties.
"""
from __future__ import annotations

import numpy as np

NUM_BINS = 256
FLT_EPSILON = float(np.finfo(np.float32).eps)  # 1.1920928955078125e-07, as C's FLT_EPSILON


def heatmap_to_u8(m: np.ndarray, *, legacy_numpy1: bool = False) -> np.ndarray:
  """[H,W] float -> [H,W] uint8 = ((m - min) / (max - min + 1e-8) * 255) truncated, in float32.

  Every step is float32 (NumPy >= 2 semantics for a float32 map, which the fixtures use).
  `legacy_numpy1=True` reproduces NumPy 1.x (the original pins 1.26.4): there
  `float32 scalar + 1e-8` is float64, so the denominator is `float32(float64(max-min) + 1e-8)`;
  the two differ only for ranges below ~1e-3.
  """
  m = np.asarray(m, dtype=np.float32)
  if m.size == 0:
    raise ValueError("heatmap_to_u8: empty heat map")
  lo = m.min()
  hi = m.max()
  if legacy_numpy1:
    denom = np.float32(np.float64(hi - lo) + 1e-8)
  else:
    denom = (hi - lo) + np.float32(1e-8)
  return ((m - lo) / denom * np.float32(255)).astype(np.uint8)


def histogram_u8(u8: np.ndarray) -> np.ndarray:
  """[...] uint8 -> [256] int64 counts."""
  u8 = np.asarray(u8)
  if u8.dtype != np.uint8:
    raise TypeError(f"histogram_u8 expects uint8, got {u8.dtype}")
  return np.bincount(u8.ravel(), minlength=NUM_BINS).astype(np.int64)


def _otsu_from_hist_1d(hist) -> int:
  h = [int(v) for v in hist]
  n = sum(h)
  if n <= 0:
    return 0
  scale = 1.0 / n
  mu = 0.0
  for i in range(NUM_BINS):
    mu += i * float(h[i])
  mu *= scale
  mu1 = 0.0
  q1 = 0.0
  max_sigma = 0.0
  max_val = 0
  for i in range(NUM_BINS):
    p_i = h[i] * scale
    mu1 *= q1
    q1 += p_i
    q2 = 1.0 - q1
    if min(q1, q2) < FLT_EPSILON or max(q1, q2) > 1.0 - FLT_EPSILON:
      continue
    mu1 = (mu1 + i * p_i) / q1
    mu2 = (mu - q1 * mu1) / q2
    sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
    if sigma > max_sigma:
      max_sigma = sigma
      max_val = i
  return max_val


def otsu_threshold_from_hist(hist: np.ndarray) -> np.ndarray:
  """[..., 256] integer counts -> [...] int32 Otsu thresholds (OpenCV's C loop)."""
  hist = np.asarray(hist)
  if hist.shape[-1:] != (NUM_BINS,):
    raise ValueError(f"histogram must end in {NUM_BINS} bins, got shape {hist.shape}")
  flat = hist.reshape(-1, NUM_BINS)
  out = np.array([_otsu_from_hist_1d(row) for row in flat], dtype=np.int32)
  return out.reshape(hist.shape[:-1])


def otsu_threshold_u8(u8: np.ndarray) -> int:
  """[H,W] uint8 -> the threshold cv2.threshold(..., THRESH_OTSU) returns (as int)."""
  return int(_otsu_from_hist_1d(histogram_u8(u8)))


def threshold_heatmap(m: np.ndarray, *, legacy_numpy1: bool = False
                      ) -> tuple[np.ndarray, int, np.ndarray]:
  """[H,W] float map -> (segment bool [H,W] = u8 > t, threshold int t, u8 [H,W] uint8).

  A constant map gives u8 all 0, t = 0 and an empty segment.
  """
  u8 = heatmap_to_u8(m, legacy_numpy1=legacy_numpy1)
  t = otsu_threshold_u8(u8)
  return u8 > t, t, u8


# ----------------------------------------------------------------------------- jnp version


def heatmap_to_u8_jax(m):
  """[H,W] float -> [H,W] uint8 on device; same float32 op order as `heatmap_to_u8`."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  m = jnp.asarray(m, jnp.float32)
  lo = jnp.min(m)
  hi = jnp.max(m)
  denom = (hi - lo) + jnp.float32(1e-8)
  # XLA (CPU) turns `x / broadcast(scalar)` into `x * (1/scalar)`, which is not correctly
  # rounded (a two-valued map then gives 254 instead of 255). An elementwise denominator it
  # cannot prove uniform keeps a true division; `m == m` only differs for NaN, which the
  # division would propagate anyway.
  denom = jnp.where(m == m, denom, m)
  return ((m - lo) / denom * jnp.float32(255)).astype(jnp.uint8)


def otsu_threshold_from_hist_jax(hist):
  """[..., 256] int counts -> [...] int32 thresholds; the scan runs on host (exact, see above)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  hist = jnp.asarray(hist, jnp.int32)
  out = jax.ShapeDtypeStruct(hist.shape[:-1], jnp.int32)
  return jax.pure_callback(otsu_threshold_from_hist, out, hist, vmap_method="expand_dims")


def threshold_heatmap_jax(m):
  """jit/vmap-friendly `threshold_heatmap`: [H,W] -> (segment bool, threshold int32 [], u8).

  u8 and the histogram (segment_sum over the 256 bins) are computed on device; only the
  256-entry histogram crosses to the host for OpenCV's float64 scan.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  u8 = heatmap_to_u8_jax(m)
  hist = jax.ops.segment_sum(jnp.ones(u8.size, jnp.int32), u8.reshape(-1).astype(jnp.int32),
                             num_segments=NUM_BINS)
  t = otsu_threshold_from_hist_jax(hist)
  return u8.astype(jnp.int32) > t, t, u8
