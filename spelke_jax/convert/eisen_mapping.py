"""torch state-dict names of EISEN (core/eisen.py + core/resnet.py, detectron2 layers) ->
spelke_jax.models.eisen.

The released checkpoint is `convert_model(nn.DataParallel(EISEN())).state_dict()`, so every key
carries 'module.' (stripped by the converter). Layout behind it:

  backbone.backbone.stem.conv{1,2,3}.weight              [O, I, 3, 3]  + .norm.*
  backbone.backbone.res{2..5}.{i}.conv{1,2,3}.weight     bottleneck convs + .norm.*
  backbone.backbone.res{2..5}.0.shortcut.weight          projection (width changes) + .norm.*
  backbone.decoder.res5.project_conv.convs.{0..3}.weight ASPP 1x1 and the three dilated 3x3
  backbone.decoder.res5.project_conv.convs.4.1.{weight,bias}  image pooling 1x1 (with bias)
  backbone.decoder.res5.project_conv.project.weight      1x1 over the 5 concatenated branches
  backbone.decoder.res{3,2}.project_conv.weight          1x1 skip projections
  backbone.decoder.res{3,2}.fuse_conv.{0,1}.weight       3x3 fuse convs
  feat_conv.{weight,bias}, key_proj.{weight,bias}, query_proj.{weight,bias}

`.norm.*` = weight, bias, running_mean, running_var (BatchNorm / SyncBN); num_batches_tracked
is ignored, as are the non-persistent buffers (pixel_mean/std, local_indices_*) should a
checkpoint carry them.
"""
from __future__ import annotations

from spelke_jax.convert.mapping import CONV_OIHW_TO_HWIO, IDENTITY, LINEAR, Entry, Table
from spelke_jax.models.eisen import stage_specs
from spelke_jax.models.eisen_config import EisenConfig

IGNORED = (r".*\.num_batches_tracked", r"pixel_mean", r"pixel_std", r"local_indices_\d+_\d+")


def _conv_norm(t: str, f: str) -> list[Entry]:
  return [Entry(f"{t}.weight", f"{f}/conv/kernel", CONV_OIHW_TO_HWIO),
          Entry(f"{t}.norm.weight", f"{f}/norm/scale", IDENTITY),
          Entry(f"{t}.norm.bias", f"{f}/norm/bias", IDENTITY),
          Entry(f"{t}.norm.running_mean", f"{f}/norm/mean", IDENTITY),
          Entry(f"{t}.norm.running_var", f"{f}/norm/var", IDENTITY)]


def _conv(t: str, f: str, bias: bool = False) -> list[Entry]:
  out = [Entry(f"{t}.weight", f"{f}/kernel", CONV_OIHW_TO_HWIO)]
  if bias:
    out.append(Entry(f"{t}.bias", f"{f}/bias", IDENTITY))
  return out


def _head(f: str) -> list[Entry]:
  p = f"{f}/" if f else ""
  return [*_conv("feat_conv", f"{p}feat_conv", bias=True),
          Entry("key_proj.weight", f"{p}key_proj/kernel", LINEAR),
          Entry("key_proj.bias", f"{p}key_proj/bias", IDENTITY),
          Entry("query_proj.weight", f"{p}query_proj/kernel", LINEAR),
          Entry("query_proj.bias", f"{p}query_proj/bias", IDENTITY)]


def backbone_entries(config: EisenConfig) -> list[Entry]:
  """ResNet + DeepLabV3+ decoder (torch 'backbone.*' -> Flax 'backbone/...')."""
  tb, fb = "backbone.backbone", "backbone/backbone"
  entries: list[Entry] = []
  for i in (1, 2, 3):
    entries += _conv_norm(f"{tb}.stem.conv{i}", f"{fb}/stem/conv{i}")
  for s, blocks in enumerate(stage_specs(config)):
    stage = f"res{s + 2}"
    for i, b in enumerate(blocks):
      t, f = f"{tb}.{stage}.{i}", f"{fb}/{stage}/{i}"
      if b["in_channels"] != b["out_channels"]:
        entries += _conv_norm(f"{t}.shortcut", f"{f}/shortcut")
      for j in (1, 2, 3):
        entries += _conv_norm(f"{t}.conv{j}", f"{f}/conv{j}")
  td, fd = "backbone.decoder", "backbone/decoder"
  aspp_t, aspp_f = f"{td}.res5.project_conv", f"{fd}/res5"
  for j in range(4):
    entries += _conv(f"{aspp_t}.convs.{j}", f"{aspp_f}/convs/{j}")
  entries += _conv(f"{aspp_t}.convs.4.1", f"{aspp_f}/pool_conv", bias=True)
  entries += _conv(f"{aspp_t}.project", f"{aspp_f}/project")
  for stage in ("res3", "res2"):
    entries += _conv(f"{td}.{stage}.project_conv", f"{fd}/{stage}/project_conv")
    for j in (0, 1):
      entries += _conv(f"{td}.{stage}.fuse_conv.{j}", f"{fd}/{stage}/fuse_conv/{j}")
  return entries


def table(config: EisenConfig) -> Table:
  """The full EISEN checkpoint (backbone, decoder, affinity head): 294 entries for the
  ResNet-50 DeepLab (55 conv+BN x 5, 13 decoder tensors, 6 head); the checkpoint's 55
  num_batches_tracked are ignored."""
  return Table(system="eisen", entries=tuple(backbone_entries(config) + _head("head")),
               ignored=IGNORED)


def head_table(config: EisenConfig) -> Table:
  """Head-only checkpoints (feat_conv, key_proj, query_proj), e.g. the fixture packs'."""
  del config
  return Table(system="eisen_head", entries=tuple(_head("")), ignored=IGNORED)
