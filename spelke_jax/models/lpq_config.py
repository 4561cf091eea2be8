"""LPQ (Local Patch Quantizer) configuration: the RGB and flow tokenizers of SpelkeNet.

Field names follow the original dataclasses (spelke_net/local_patch_quantizer/config.py) so a
checkpoint's `cfg` dict maps onto `LPQConfig.from_dict` directly. Blocks are tuples:
  ("ResBlock", in, out, hidden, kernel, stride, padding)   PatchResidualConvBlock
  ("Upsample", in, out)                                    nearest x2, conv k3 p1 (decoder)
  ("Downsample", in, out)                                  pad right/bottom 1, conv k3 s2 (encoder)
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

# torchvision ImageNet statistics used by LRASFlowPredictor.in_transform (on [0, 1] RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The flow tokenizer always sees flow / FLOW_SCALE (flow in pixels at 256 px).
FLOW_SCALE = 20.0

Block = tuple  # ("ResBlock", in, out, hidden, k, s, p) | ("Upsample" | "Downsample", in, out)

_RESBLOCK_LEN = 7
_RESAMPLE_LEN = 3


def _released_encoder() -> tuple[Block, ...]:
  return (("ResBlock", 512, 512, 1024, 1, 1, 0),)


def _released_decoder() -> tuple[Block, ...]:
  blocks: list[Block] = []
  for width, nxt in ((512, 256), (256, 128), (128, None)):
    blocks += [("ResBlock", width, width, 2 * width, 3, 1, 1)] * 3
    if nxt is not None:
      blocks.append(("Upsample", width, nxt))
  return tuple(blocks)


def _as_blocks(blocks: Sequence[Sequence[Any]]) -> tuple[Block, ...]:
  out = []
  for b in blocks:
    b = tuple(b)
    out.append((str(b[0]),) + tuple(int(v) for v in b[1:]))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class LPQConfig:
  """Sizes of one LPQ tokenizer. `kind` is 'rgb' or 'flow' (decides pre/post-processing only).

  `dropout` is kept for fidelity with the cfg dict; the original never passes it to its blocks
  (they hard-code 0.1) and the port is inference-only, so it has no effect.
  """
  patch_size: int = 4
  vocab_size: int = 65536
  num_codebooks: int = 1
  num_in_channels: int = 3
  num_out_channels: int = 3
  encoder_blocks: tuple[Block, ...] = dataclasses.field(default_factory=_released_encoder)
  decoder_blocks: tuple[Block, ...] = dataclasses.field(default_factory=_released_decoder)
  dropout: float = 0.1
  kind: str = "rgb"
  ln_eps: float = 1e-5
  codebook_scale: float = 1.0

  def __post_init__(self):
    object.__setattr__(self, "encoder_blocks", _as_blocks(self.encoder_blocks))
    object.__setattr__(self, "decoder_blocks", _as_blocks(self.decoder_blocks))
    if self.kind not in ("rgb", "flow"):
      raise ValueError(f"kind must be 'rgb' or 'flow', got {self.kind!r}")
    if self.vocab_size < 2 or self.vocab_size & (self.vocab_size - 1):
      raise ValueError(f"vocab_size={self.vocab_size} must be a power of two (LFQ)")
    if self.codebook_bits * self.num_codebooks > 31:
      raise ValueError("indices must fit in int32: codebook_bits > 31 is not supported")
    if not self.encoder_blocks or not self.decoder_blocks:
      raise ValueError("encoder_blocks and decoder_blocks must not be empty")
    self._check_blocks(self.encoder_blocks, ("ResBlock", "Downsample"), "encoder")
    self._check_blocks(self.decoder_blocks, ("ResBlock", "Upsample"), "decoder")
    if self.decoder_blocks[0][1] != self.embed_width:
      raise ValueError(f"decoder input width {self.decoder_blocks[0][1]} != encoder output width "
                       f"{self.embed_width}")

  @staticmethod
  def _check_blocks(blocks, allowed, where):
    prev = None
    for i, b in enumerate(blocks):
      kind = b[0]
      if kind not in allowed:
        raise ValueError(f"{where} block {i}: type {kind!r} not in {allowed}")
      want = _RESBLOCK_LEN if kind == "ResBlock" else _RESAMPLE_LEN
      if len(b) != want:
        raise ValueError(f"{where} block {i}: {b} should have {want} entries")
      if kind == "ResBlock" and b[1] != b[2]:
        raise ValueError(f"{where} block {i}: ResBlock in/out widths differ ({b}); the residual "
                         "add needs them equal")
      if prev is not None and b[1] != prev:
        raise ValueError(f"{where} block {i}: input width {b[1]} != previous output width {prev}")
      prev = b[2]

  @property
  def codebook_bits(self) -> int:
    """D = log2(vocab_size): bits per code (16 for rgb, 15 for flow)."""
    return int(math.log2(self.vocab_size))

  @property
  def codebook_dims(self) -> int:
    """Width of the LFQ pre-activation: D * num_codebooks."""
    return self.codebook_bits * self.num_codebooks

  @property
  def embed_width(self) -> int:
    """C': width of the encoder output / LFQ input (the last encoder block's output)."""
    return self.encoder_blocks[-1][2]

  @property
  def stem_width(self) -> int:
    """Output channels of the patch conv (the first encoder block's input)."""
    return self.encoder_blocks[0][1]

  @property
  def has_projections(self) -> bool:
    """LFQ has project_in/out Linears only when C' != D * num_codebooks (else identity)."""
    return self.embed_width != self.codebook_dims

  @property
  def downsample_factor(self) -> int:
    """Input pixels per code along each side: patch_size * 2**(#Downsample)."""
    n = sum(1 for b in self.encoder_blocks if b[0] == "Downsample")
    return self.patch_size * 2**n

  @property
  def upsample_factor(self) -> int:
    """Output pixels per code along each side: 2**(#Upsample)."""
    return 2 ** sum(1 for b in self.decoder_blocks if b[0] == "Upsample")

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **overrides) -> "LPQConfig":
    """Builds from an original `cfg` dict (lists accepted; unknown keys ignored).

    `kind` comes from `config_class` (LPQFlowConfig -> 'flow', LPQConfig -> 'rgb') or else
    from num_in_channels (2 -> flow, otherwise rgb), unless given explicitly.
    """
    d = {**dict(d), **overrides}
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in names}
    if "kind" not in kw:
      kw["kind"] = infer_kind(d)
    return cls(**kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **kw) -> "LPQConfig":
    return dataclasses.replace(self, **kw)


def infer_kind(cfg: Mapping[str, Any]) -> str:
  """'flow' or 'rgb' from a cfg dict's config_class, else from num_in_channels."""
  cls_name = str(cfg.get("config_class", "")).rsplit(".", 1)[-1]
  if cls_name == "LPQFlowConfig":
    return "flow"
  if cls_name == "LPQConfig":
    return "rgb"
  return "flow" if int(cfg.get("num_in_channels", 3)) == 2 else "rgb"


def lpq_rgb(**kw) -> LPQConfig:
  """LPQConfig of the released rgb_quantizer.pt: 3 channels, 65536 codes (16 bits), 512 wide."""
  return LPQConfig(**{"vocab_size": 65536, "num_in_channels": 3, "num_out_channels": 3,
                      "dropout": 0.1, "kind": "rgb", **kw})


def lpq_flow(**kw) -> LPQConfig:
  """LPQFlowConfig of the released flow_quantizer.pt: 2 channels, 32768 codes (15 bits)."""
  return LPQConfig(**{"vocab_size": 32768, "num_in_channels": 2, "num_out_channels": 2,
                      "dropout": 0.0, "kind": "flow", **kw})


PRESETS = {"rgb": lpq_rgb, "flow": lpq_flow}
