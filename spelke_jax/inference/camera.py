"""Camera-pose tokenisation of SpelkeNet/LRAS (numpy).

A 4x4 camera transform becomes a 7-vector (axis-angle rotation in degrees, unit translation
direction, translation norm), which is quantised and offset into the camera-pose vocabulary:
`[campose index token] + (q + campose_range[0])`, 8 tokens at `campose_pos_range`.

The numerics follow the original (spelke_net/utils/camera.py, transforms/so3.py): the rotation
matrix is built in float32, the matrix logarithm runs in float64 (via a quaternion), and
everything after it is float32.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

# Quantisation of the 7-vector (original defaults of quantize_6dof_campose).
ROTATION_STEP_DEG = 0.1
ROTATION_OFFSET = 1801
DIRECTION_STEP = 0.001
DIRECTION_OFFSET = 1001
SCALE_STEP = 0.001
SCALE_OFFSET = 1
NUM_CAMPOSE_VALUES = 7

# The "camera fixed" pose SpelkeNet always conditions on.
IDENTITY_POSE = np.eye(4, dtype=np.float32)


def pose_list_to_matrix(pose6: Sequence[float]) -> np.ndarray:
  """(x_rot, y_rot, z_rot [rad], x, y, z) -> [4, 4] float32 transform with R = Rz @ Ry @ Rx."""
  pose6 = np.asarray(pose6, dtype=np.float64).reshape(-1)
  if pose6.shape != (6,):
    raise ValueError(f"pose list must have 6 entries, got shape {pose6.shape}")
  rx, ry, rz = pose6[:3].astype(np.float32)
  cx, sx = np.cos(rx), np.sin(rx)
  cy, sy = np.cos(ry), np.sin(ry)
  cz, sz = np.cos(rz), np.sin(rz)
  one, zero = np.float32(1), np.float32(0)
  r_x = np.array([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]], np.float32)
  r_y = np.array([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]], np.float32)
  r_z = np.array([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]], np.float32)
  out = np.eye(4, dtype=np.float32)
  out[:3, :3] = r_z @ r_y @ r_x
  out[:3, 3] = pose6[3:].astype(np.float32)
  return out


def _matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
  """[3, 3] rotation (float64) -> [4] quaternion (w, x, y, z) with w >= 0.

  Builds the four candidate quaternions (scaled by w, x, y, z) and keeps the best-conditioned
  one (largest |component|; the first on ties), dividing by max(2|q_i|, 0.2) as the original.
  """
  m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.reshape(9)
  q_sq = np.array([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
                   1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22])
  q_abs = np.where(q_sq > 0, np.sqrt(np.maximum(q_sq, 0.0)), 0.0)
  cand = np.array([
      [q_abs[0] ** 2, m21 - m12, m02 - m20, m10 - m01],
      [m21 - m12, q_abs[1] ** 2, m10 + m01, m02 + m20],
      [m02 - m20, m10 + m01, q_abs[2] ** 2, m12 + m21],
      [m10 - m01, m20 + m02, m21 + m12, q_abs[3] ** 2],
  ])
  cand = cand / (2.0 * np.maximum(q_abs, 0.1))[:, None]
  q = cand[int(np.argmax(q_abs))]
  return -q if q[0] < 0 else q


def so3_log(rotation: np.ndarray) -> np.ndarray:
  """[3, 3] rotation matrix -> [3] float64 axis-angle (radians; norm = angle).

  Computed in float64 through a quaternion (the original's so3_log_map = matrix_to_axis_angle):
  angle = 2 atan2(|q_xyz|, q_w); for angles below 1e-6 sin(a/2)/a uses its series 1/2 - a^2/48,
  so the identity maps to exactly 0 and angles near pi stay well conditioned.
  """
  r = np.asarray(rotation, dtype=np.float64)
  if r.shape != (3, 3):
    raise ValueError(f"expected a [3, 3] rotation matrix, got shape {r.shape}")
  q = _matrix_to_quaternion(r)
  half = np.arctan2(np.linalg.norm(q[1:]), q[0])
  angle = 2.0 * half
  if abs(angle) < 1e-6:
    ratio = 0.5 - angle * angle / 48.0
  else:
    ratio = np.sin(half) / angle
  return q[1:] / ratio


def matrix_to_6dof(matrix: np.ndarray, scale: bool = True) -> np.ndarray:
  """[4, 4] transform -> float32 pose vector.

  scale=True: [7] = (axis-angle in degrees (3), unit translation direction t/(|t|+1e-6) (3), |t|).
  scale=False: [6] = (axis-angle in degrees (3), t (3)).
  """
  matrix = np.asarray(matrix)
  if matrix.shape != (4, 4):
    raise ValueError(f"expected a [4, 4] transform, got shape {matrix.shape}")
  translation = matrix[:3, 3]
  rot_deg = so3_log(matrix[:3, :3]).astype(np.float32) * 180 / np.pi
  if not scale:
    return np.concatenate([rot_deg, translation]).astype(np.float32)
  norm = np.linalg.norm(translation, keepdims=True)
  direction = translation / (norm + 1e-6)
  return np.concatenate([rot_deg, direction, norm]).astype(np.float32)


def quantize_6dof(v: np.ndarray) -> np.ndarray:
  """[7] pose vector (matrix_to_6dof, scale=True) -> [7] int16 quantised values.

  round(rot/0.1)+1801, round(dir/0.001)+1001, round(|t|/0.001)+1, stored as int16 exactly as
  the original (so |t| above ~32.77 overflows int16 there too).
  """
  v = np.asarray(v)
  if v.shape != (NUM_CAMPOSE_VALUES,):
    raise ValueError(f"expected a [7] pose vector, got shape {v.shape}")
  rot = np.round(v[0:3] / ROTATION_STEP_DEG) + ROTATION_OFFSET
  direction = np.round(v[3:6] / DIRECTION_STEP) + DIRECTION_OFFSET
  norm = np.round(v[6] / SCALE_STEP) + SCALE_OFFSET
  out = np.zeros(NUM_CAMPOSE_VALUES, dtype=np.int16)
  out[3:6] = direction
  out[0:3] = rot
  out[6] = norm
  return out


def campose_tokens(pose_matrix: np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
  """[4, 4] transform -> (tokens [8] int64, positions [8] int64).

  tokens = [campose_patch_idx_range[0]] + (quantize_6dof(matrix_to_6dof(m)) + campose_range[0]),
  positions = campose_pos_range[0] + arange(8). `config` is an `LRASConfig`.
  """
  if config.campose_range is None or config.campose_patch_idx_range is None:
    raise ValueError("this LRAS config has no camera-pose vocabulary")
  q = quantize_6dof(matrix_to_6dof(pose_matrix, scale=True)).astype(np.int64)
  tokens = np.concatenate([[config.campose_patch_idx_range[0]], q + config.campose_range[0]])
  positions = config.campose_pos_range[0] + np.arange(tokens.size, dtype=np.int64)
  return tokens.astype(np.int64), positions
