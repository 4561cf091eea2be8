"""torch state-dict names of LPQ (spelke_net/local_patch_quantizer/model.py) -> spelke_jax.models.lpq.

torch layout: `encoder` = Sequential(Conv2d, SiLU, *blocks) so block i is `encoder.{2+i}`;
`decoder` = Sequential(*blocks, Conv2d) so the final conv is `decoder.{len(blocks)}`;
`quantizer` = vector-quantize-pytorch LFQ (project_in/out only when dim != D * num_codebooks).
The only persistent buffer is `quantizer.mask` (int64 powers of two, recomputed here); LFQ's
`zero` and `codebook` buffers are non-persistent and never saved.
"""
from __future__ import annotations

from spelke_jax.convert.mapping import CONV_OIHW_TO_HWIO, IDENTITY, LINEAR, Entry, Table
from spelke_jax.models.lpq_config import LPQConfig

IGNORED = (r"quantizer\.mask",)


def _conv(t: str, f: str) -> list[Entry]:
  return [Entry(f"{t}.weight", f"{f}/kernel", CONV_OIHW_TO_HWIO),
          Entry(f"{t}.bias", f"{f}/bias", IDENTITY)]


def _block(spec: tuple, t: str, f: str) -> list[Entry]:
  if spec[0] == "ResBlock":
    return [Entry(f"{t}.ln1.weight", f"{f}/ln1/scale", IDENTITY),
            Entry(f"{t}.ln1.bias", f"{f}/ln1/bias", IDENTITY),
            *_conv(f"{t}.conv1", f"{f}/conv1"),
            *_conv(f"{t}.conv2", f"{f}/conv2")]
  if spec[0] in ("Upsample", "Downsample"):
    return _conv(f"{t}.conv", f"{f}/conv")
  raise ValueError(f"unknown LPQ block type {spec[0]!r}")


def table(config: LPQConfig) -> Table:
  """Every tensor of the original LPQ, explicitly (72 entries for the released configs)."""
  entries = _conv("encoder.0", "patch_conv")
  for i, spec in enumerate(config.encoder_blocks):
    entries += _block(spec, f"encoder.{2 + i}", f"encoder_blocks/{i}")
  if config.has_projections:
    entries += [
        Entry("quantizer.project_in.weight", "quantizer/project_in/kernel", LINEAR),
        Entry("quantizer.project_in.bias", "quantizer/project_in/bias", IDENTITY),
        Entry("quantizer.project_out.weight", "quantizer/project_out/kernel", LINEAR),
        Entry("quantizer.project_out.bias", "quantizer/project_out/bias", IDENTITY),
    ]
  for j, spec in enumerate(config.decoder_blocks):
    entries += _block(spec, f"decoder.{j}", f"decoder_blocks/{j}")
  entries += _conv(f"decoder.{len(config.decoder_blocks)}", "out_conv")
  return Table(system=f"lpq_{config.kind}", entries=tuple(entries), ignored=IGNORED)
