"""EISEN configuration: the backbone, the affinity head and sampling, KProp, Competition.

Field names follow the original's constructor arguments where they exist (EISEN.__init__ in
core/eisen.py: affinity_res, kq_dim, local_window_size, ...; compute_segments: hidden_dim,
min_cc_area; detectron2's RESNETS / SEM_SEG_HEAD names for the backbone), so a dict of the
original's arguments maps onto `EisenConfig.from_dict` directly.

Two parameter sets exist (../shared/reference/eisen.md, "Paper vs. code"):
  eisen_code()   the public code at HEAD (released checkpoint): Q=32, 25 iterations, t=0.7
  eisen_paper()  the paper: Q=256, 40 iterations, t=0.5

The backbone structure comes from a preset named by `backbone` ("resnet50_deeplab": the
original ResNet-50 DeepLab stem + DeepLabV3+ decoder; "small": a CPU-trainable variant;
"tiny": for tests); any structural field given explicitly overrides the preset. Training
settings (lr 5e-4, batch 8, ...) live in the training configs, not here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

# The original's input normalisation (RGB on the 0..255 scale): (img - mean) / std.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)

# Structural fields filled from the backbone preset when left as None.
_BACKBONE_FIELDS = ("stem_out_channels", "res2_out_channels", "width_per_group", "num_blocks",
                    "res4_dilation", "res5_dilation", "res5_multi_grid", "project_channels",
                    "aspp_channels", "aspp_dilations", "aspp_dropout", "decoder_channels")

BACKBONES: dict[str, dict[str, Any]] = {
    # build_resnet_deeplab_backbone + ResNet_Deeplab.from_config (core/resnet.py).
    "resnet50_deeplab": dict(stem_out_channels=128, res2_out_channels=256, width_per_group=64,
                             num_blocks=(3, 4, 6, 3), res4_dilation=1, res5_dilation=2,
                             res5_multi_grid=(1, 2, 4), project_channels=(32, 64),
                             aspp_channels=256, aspp_dilations=(6, 12, 18), aspp_dropout=0.1,
                             decoder_channels=(128, 128, 256)),
    # One bottleneck per stage at half width, lighter ASPP: 6.7M parameters (ResNet-50: 40M).
    "small": dict(stem_out_channels=64, res2_out_channels=128, width_per_group=32,
                  num_blocks=(1, 1, 1, 1), res4_dilation=1, res5_dilation=2,
                  res5_multi_grid=(1,), project_channels=(32, 64), aspp_channels=128,
                  aspp_dilations=(6, 12, 18), aspp_dropout=0.1,
                  decoder_channels=(128, 128, 128)),
    # Smallest working shape, for tests.
    "tiny": dict(stem_out_channels=16, res2_out_channels=32, width_per_group=8,
                 num_blocks=(1, 1, 1, 1), res4_dilation=1, res5_dilation=2,
                 res5_multi_grid=(1,), project_channels=(8, 8), aspp_channels=16,
                 aspp_dilations=(6, 12, 18), aspp_dropout=0.1, decoder_channels=(16, 16, 16)),
}

_PRECISIONS = ("default", "high", "highest")


def _ints(v) -> tuple[int, ...]:
  return tuple(int(x) for x in v)


@dataclasses.dataclass(frozen=True)
class EisenConfig:
  """All sizes of an EISEN model and its grouping stages (defaults: the public code at HEAD).

  Affinities: `kq_dim` C (key/query width), `local_window_size` K (K x K window, odd),
  `num_affinity_samples` S (K*K local + S - K*K uniform global samples per node),
  `subsample_affinity` False means full N x N affinities, `supervision_level` scales
  (strides 1, 2, 4, ...) in the training loss, `affinity_res` (h, w) of the affinity map
  (image size / 4).
  KProp: `hidden_dim` Q, `propagation_iters`, `propagation_affinity_thresh`.
  Competition: `num_masks` M, `num_competition_rounds` R. Post-processing: `min_cc_area`.
  Backbone: see BACKBONES; `feature_dim` is the backbone output width (the decoder's first
  channel count, 128 in the original; the head-only model uses it alone).
  """
  # EISEN.__init__
  affinity_res: tuple[int, int] = (128, 128)
  kq_dim: int = 32
  subsample_affinity: bool = True
  eval_full_affinity: bool = False
  local_window_size: int = 25
  num_affinity_samples: int = 1024
  propagation_iters: int = 25
  propagation_affinity_thresh: float = 0.7
  num_masks: int = 32
  num_competition_rounds: int = 3
  supervision_level: int = 3
  # compute_segments
  hidden_dim: int = 32
  run_cc: bool = True
  min_cc_area: int = 20
  # backbone
  backbone: str = "resnet50_deeplab"
  feature_dim: int | None = None
  stem_out_channels: int | None = None
  res2_out_channels: int | None = None
  width_per_group: int | None = None
  num_blocks: tuple[int, int, int, int] | None = None
  res4_dilation: int | None = None
  res5_dilation: int | None = None
  res5_multi_grid: tuple[int, ...] | None = None
  project_channels: tuple[int, int] | None = None
  aspp_channels: int | None = None
  aspp_dilations: tuple[int, int, int] | None = None
  aspp_dropout: float | None = None
  decoder_channels: tuple[int, int, int] | None = None
  bn_eps: float = 1e-5
  bn_momentum: float = 0.1  # torch convention: running = (1 - m) * running + m * batch
  pixel_mean: tuple[float, float, float] = PIXEL_MEAN
  pixel_std: tuple[float, float, float] = PIXEL_STD
  precision: str = "highest"  # XLA conv/matmul precision ('highest': no TF32 on GPU)

  def __post_init__(self):
    if self.backbone not in BACKBONES:
      raise ValueError(f"unknown backbone {self.backbone!r}; known: {sorted(BACKBONES)}")
    preset = BACKBONES[self.backbone]
    for name in _BACKBONE_FIELDS:
      if getattr(self, name) is None:
        object.__setattr__(self, name, preset[name])
    for name in ("num_blocks", "res5_multi_grid", "project_channels", "aspp_dilations",
                 "decoder_channels"):
      object.__setattr__(self, name, _ints(getattr(self, name)))
    object.__setattr__(self, "affinity_res", _ints(self.affinity_res))
    object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
    object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))
    if self.feature_dim is None:
      object.__setattr__(self, "feature_dim", int(self.decoder_channels[0]))
    self._validate()

  def _validate(self):
    if len(self.affinity_res) != 2:
      raise ValueError(f"affinity_res must be (h, w), got {self.affinity_res}")
    if self.local_window_size < 1 or self.local_window_size % 2 == 0:
      raise ValueError(f"local_window_size must be odd, got {self.local_window_size}")
    if len(self.num_blocks) != 4 or min(self.num_blocks) < 1:
      raise ValueError(f"num_blocks must be 4 positive stage depths, got {self.num_blocks}")
    if len(self.res5_multi_grid) != self.num_blocks[3]:
      raise ValueError(f"res5_multi_grid {self.res5_multi_grid} needs one entry per res5 block "
                       f"({self.num_blocks[3]})")
    if self.res4_dilation not in (1, 2) or self.res5_dilation not in (1, 2, 4):
      raise ValueError("res4_dilation must be 1 or 2 and res5_dilation 1, 2 or 4")
    if self.res4_dilation == 2 and self.res5_dilation != 4:
      raise ValueError("res4_dilation=2 needs res5_dilation=4 (as detectron2)")
    if len(self.project_channels) != 2 or len(self.decoder_channels) != 3:
      raise ValueError("project_channels has 2 entries (res2, res3), decoder_channels 3 "
                       "(res2, res3, res5)")
    if len(self.aspp_dilations) != 3:
      raise ValueError(f"aspp_dilations must have 3 entries, got {self.aspp_dilations}")
    if self.decoder_channels[2] != self.aspp_channels:
      raise ValueError(f"decoder_channels[2]={self.decoder_channels[2]} must equal "
                       f"aspp_channels={self.aspp_channels} (the ASPP output feeds res3)")
    if self.stem_out_channels % 2:
      raise ValueError("stem_out_channels must be even (the stem's first convs have half)")
    if self.precision not in _PRECISIONS:
      raise ValueError(f"precision must be one of {_PRECISIONS}, got {self.precision!r}")
    if self.supervision_level < 1:
      raise ValueError("supervision_level must be >= 1")

  # ---- derived sizes -----------------------------------------------------------------------

  @property
  def num_local(self) -> int:
    """K*K local samples per node."""
    return self.local_window_size ** 2

  @property
  def num_global(self) -> int:
    """S - K*K random global samples per node (0 when the window alone exceeds S: the
    original then uses the local window only)."""
    return max(self.num_affinity_samples - self.num_local, 0)

  @property
  def num_samples(self) -> int:
    """Samples per node actually used: S, or K*K when K*K > S."""
    return self.num_local + self.num_global

  @property
  def stage_out_channels(self) -> tuple[int, int, int, int]:
    """Output widths of res2..res5 (res2_out_channels doubling per stage)."""
    return tuple(self.res2_out_channels * 2**i for i in range(4))

  @property
  def stage_bottleneck_channels(self) -> tuple[int, int, int, int]:
    return tuple(self.width_per_group * 2**i for i in range(4))

  # ---- (de)serialisation ---------------------------------------------------------------------

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **overrides) -> "EisenConfig":
    """From a dict of the original's arguments (lists accepted, unknown keys ignored).

    Nested sections named like the original's call sites ('EISEN', 'compute_segments',
    as in the fixture manifests) are flattened first."""
    flat: dict[str, Any] = {}
    for section in ("EISEN", "compute_segments"):
      if isinstance(d.get(section), Mapping):
        flat.update(d[section])
    flat.update({k: v for k, v in d.items() if not isinstance(v, Mapping)})
    flat.update(overrides)
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in flat.items() if k in names})

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def replace(self, **kw) -> "EisenConfig":
    return dataclasses.replace(self, **kw)


def eisen_code(**kw) -> EisenConfig:
  """The public code at HEAD df4854e (released checkpoint): ResNet-50 DeepLab, C=32, K=25,
  S=1024, Q=32, 25 KProp iterations, threshold 0.7, M=32, R=3, 3 scales, min CC area 20."""
  return EisenConfig(**kw)


def eisen_paper(**kw) -> EisenConfig:
  """The paper's values where they differ from the code: Q=256, 40 iterations, t=0.5."""
  return EisenConfig(**{"hidden_dim": 256, "propagation_iters": 40,
                        "propagation_affinity_thresh": 0.5, **kw})


def tiny(**kw) -> EisenConfig:
  """Test-sized: tiny backbone (16 channels out), 16x16 affinities, C=8, K=5, S=40, M=8."""
  return EisenConfig(**{"backbone": "tiny", "affinity_res": (16, 16), "kq_dim": 8,
                        "local_window_size": 5, "num_affinity_samples": 40, "num_masks": 8,
                        "min_cc_area": 4, **kw})


PRESETS = {"code": eisen_code, "paper": eisen_paper, "tiny": tiny}
