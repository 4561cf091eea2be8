"""LRAS configuration: sizes, dtype policy, and the token/position layout of the vocabulary.

Field names follow the original dataclasses (spelke_net/spelke_net/config.py) so a checkpoint's
`cfg` dict maps onto `LRASConfig.from_dict` directly. Ranges are half-open [start, end).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

Range = tuple[int, int]

# ---- Layout of the released 111616-token vocabulary (1B and 7B SpelkeNet) --------------------
RGB_RANGE: Range = (0, 65536)                 # rgb LPQ codes (16-bit LFQ)
RGB_PATCH_0_IDX_RANGE: Range = (65536, 66560)  # frame-0 pointer tokens, one per patch
RGB_PATCH_1_IDX_RANGE: Range = (66560, 67584)  # frame-1 pointer tokens (unused by SpelkeNet)
FLOW_RANGE: Range = (67584, 100352)            # flow LPQ codes (15-bit LFQ)
FLOW_PATCH_IDX_RANGE: Range = (100352, 101376)  # flow pointer tokens
CAMPOSE_RANGE: Range = (101376, 111376)        # camera-pose value tokens
CAMPOSE_PATCH_IDX_RANGE: Range = (111376, 111377)  # the camera-pose "index" token
# Positions (ids into the learned position table).
FRAME_0_RGB_POS_RANGE: Range = (0, 5120)       # 1024 patches x 5 tokens
FRAME_1_RGB_POS_RANGE: Range = (5120, 10240)
FLOW_POS_RANGE: Range = (10240, 22528)         # only the first 5120 are used
CAMPOSE_POS_RANGE: Range = (22528, 22536)      # 8 camera-pose tokens

# Patch structure shared by all released models.
PATCH_SIZE = 2                    # codes per patch side: a patch is 2x2 codes = 8x8 pixels at 256 px
TOKENS_PER_PATCH = PATCH_SIZE**2 + 1  # [pointer, c0, c1, c2, c3]
NO_MOTION_FLOW_CODES = (11646, 11582)  # relative flow codes that decode to zero motion


@dataclasses.dataclass(frozen=True)
class LRASConfig:
  """Sizes of the flow-completion transformer and its vocabulary layout.

  dtype policy: `param_dtype` stores weights, `dtype` is the compute dtype (bf16 as the
  original's autocast; float32 for CPU parity). LayerNorm and softmax always run in float32.
  `attention_impl` is passed to `jax.nn.dot_product_attention` for full causal passes
  ('xla' or 'cudnn'); cached decode steps always use the XLA path (cuDNN needs a causal mask
  aligned with the query start).
  """
  vocab_size: int = 111616
  block_size: int = 22536
  n_layer: int = 36
  n_head: int = 20
  n_embd: int = 1280
  patch_size: int = PATCH_SIZE
  bias: bool = False
  dropout: float = 0.0
  mlp_ratio: int = 4
  ln_eps: float = 1e-5
  # Layout.
  frame_0_rgb_pos_range: Range = FRAME_0_RGB_POS_RANGE
  frame_1_rgb_pos_range: Range = FRAME_1_RGB_POS_RANGE
  flow_pos_range: Range = FLOW_POS_RANGE
  campose_pos_range: Range | None = CAMPOSE_POS_RANGE
  rgb_range: Range = RGB_RANGE
  rgb_patch_0_idx_range: Range = RGB_PATCH_0_IDX_RANGE
  rgb_patch_1_idx_range: Range = RGB_PATCH_1_IDX_RANGE
  flow_range: Range = FLOW_RANGE
  flow_patch_idx_range: Range = FLOW_PATCH_IDX_RANGE
  campose_range: Range | None = CAMPOSE_RANGE
  campose_patch_idx_range: Range | None = CAMPOSE_PATCH_IDX_RANGE
  # Numerics.
  param_dtype: str = "float32"
  dtype: str = "float32"
  attention_impl: str = "xla"

  @property
  def head_dim(self) -> int:
    return self.n_embd // self.n_head

  @property
  def mlp_dim(self) -> int:
    return self.mlp_ratio * self.n_embd

  @property
  def patches_per_frame(self) -> int:
    """Patches of one frame: the frame-0 position range / (patch_size**2 + 1 tokens per patch)."""
    lo, hi = self.frame_0_rgb_pos_range
    return (hi - lo) // (self.patch_size**2 + 1)

  @property
  def patch_grid(self) -> int:
    """Side of the square patch grid of a frame (32 for the released 256-px models).

    Raises ValueError when the patches of a frame do not make a square grid."""
    p = self.patches_per_frame
    g = int(round(p**0.5))
    if g * g != p:
      raise ValueError(f"{p} patches per frame do not make a square grid")
    return g

  def __post_init__(self):
    if self.n_embd % self.n_head:
      raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
    if self.bias:
      raise ValueError("LRAS checkpoints have no biases (bias=True is not supported)")
    if self.attention_impl not in ("xla", "cudnn"):
      raise ValueError(f"attention_impl must be 'xla' or 'cudnn', got {self.attention_impl!r}")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **overrides) -> "LRASConfig":
    """Builds from an original `cfg` dict (extra keys such as config_class are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {}
    for k, v in {**dict(d), **overrides}.items():
      if k in names:
        kw[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **kw) -> "LRASConfig":
    return dataclasses.replace(self, **kw)


def lras_1b(**kw) -> LRASConfig:
  """LRAS1B_Campose_FlowQuantized_Patch8_RGBConfig (SpelkeNet1B.pt): 36 layers, 20 heads, 1280."""
  return LRASConfig(n_layer=36, n_head=20, n_embd=1280, **kw)


def lras_7b(**kw) -> LRASConfig:
  """LRAS7B_Campose_FlowQuantized_Patch8_RGBConfig (SpelkeNet7B.pt): 32 layers, 32 heads, 4096."""
  return LRASConfig(n_layer=32, n_head=32, n_embd=4096, **kw)


def lras3d_7b(**kw) -> LRASConfig:
  """LRAS7B_Patch8_RGB_Flow_Config (LRAS_3D_7B.pt, the 3DEditBench editor): 512 flow bins, no camera."""
  return LRASConfig(
      vocab_size=69120, block_size=19456, n_layer=32, n_head=32, n_embd=4096,
      flow_pos_range=(10240, 19456), flow_range=(67584, 68096), flow_patch_idx_range=(68096, 69120),
      campose_pos_range=None, campose_range=None, campose_patch_idx_range=None, **kw)


def lras_tiny(**kw) -> LRASConfig:
  """A small model with the real vocabulary and positions, for tests and CPU demos."""
  return LRASConfig(n_layer=2, n_head=4, n_embd=64, **kw)


PRESETS = {"1b": lras_1b, "7b": lras_7b, "3d_7b": lras3d_7b, "tiny": lras_tiny}


def compact_layout(rgb_vocab: int, flow_vocab: int, num_patches: int = 1024,
                   patch_size: int = PATCH_SIZE, campose_values: int = 4096) -> dict:
  """Token and position ranges packed back to back for small codebooks (no frame-1 tokens).

  For models trained here with small LPQ codebooks: rgb codes, frame-0 pointers, flow codes, flow
  pointers, camera values (4096 covers every rotation of the identity-centred quantisation and
  |t| < 4.1), camera index token. Positions: frame 0, flow, camera. Returns LRASConfig fields
  including vocab_size and block_size."""
  t = patch_size * patch_size + 1
  edges = {}
  at = 0
  for name, size in (("rgb_range", rgb_vocab), ("rgb_patch_0_idx_range", num_patches),
                     ("flow_range", flow_vocab), ("flow_patch_idx_range", num_patches),
                     ("campose_range", campose_values), ("campose_patch_idx_range", 1)):
    edges[name] = (at, at + size)
    at += size
  edges["rgb_patch_1_idx_range"] = (edges["rgb_patch_0_idx_range"][1],) * 2  # empty
  frame = num_patches * t
  edges.update(frame_0_rgb_pos_range=(0, frame), frame_1_rgb_pos_range=(frame, frame),
               flow_pos_range=(frame, 2 * frame), campose_pos_range=(2 * frame, 2 * frame + 8),
               vocab_size=at, block_size=2 * frame + 8, patch_size=patch_size)
  return edges
