"""torch state-dict names of Neural Slot Interpreters and of timm / DINO ViTs ->
spelke_jax.models.nsi / spelke_jax.models.vit paths.

NSI's best_model.pt (trainer/train_nsi.py) is {'slot_encoder': ImageEncoder.state_dict(),
'program_encoder': CLEVRTexProgramEncoder.state_dict()}; the full training checkpoint adds
epoch / optimizer / ... next to the same two keys. `nsi_state_dict` flattens the two dicts
with the prefixes 'slot_encoder.' / 'program_encoder.' (registry hook `state_dict_fn`).

  slot_encoder.encoder.*                         timm ViT (table below, under encoder/)
  slot_encoder.slot_attn.slot_mu / slot_log_sigma          [1, 1, D] -> [D]
  slot_encoder.slot_attn.layer_norm.*, mlp.{0,2}.*         input LN + MLP
  slot_encoder.slot_attn.slot_attention.norm_{inputs,slots,mlp}.*, project_{q,k,v}.weight,
      gru.{weight_ih, weight_hh} [3H, in] -> [in, 3H] (gate rows r|z|n kept), bias_{ih,hh},
      mlp.{0,2}.*
  slot_encoder.decoder.postional_encoding.weight (sic), decoder.mlp.{0,2,4,6}.*
  slot_encoder.{embed_proj, norm_embed, embed_mlp.{0,2}}.*
  program_encoder.{size,shape,material}_embedding.weight, pos_embedding.0.*,
      program_embed.{0,2}.*, encoder.blocks.{i}.{attn_layer_norm, attn.proj_{q,k,v,o},
      ffn_layer_norm, ffn.{0,2}}.*, encoder.layer_norm.*, embed_proj, norm_embed, embed_mlp

timm ViT (also DINO's own checkpoints): patch_embed.proj.{weight [D, C, p, p], bias},
cls_token [1, 1, D], pos_embed [1, 1 + N, D], blocks.{i}.{norm1, attn.qkv (weight [3D, D] rows
q|k|v with heads contiguous, bias [3D]), attn.proj, norm2, mlp.fc1, mlp.fc2}, norm.*; a
classifier head (head.*, fc_norm.*) is ignored.
"""
from __future__ import annotations

from typing import Any, Mapping

from spelke_jax.convert.mapping import (CONV_OIHW_TO_HWIO, IDENTITY, LINEAR, Entry, MappingError,
                                        Table, Transform, fused_qkv)
from spelke_jax.models.nsi import NSIConfig
from spelke_jax.models.vit import ViTConfig

NSI_PARTS = ("slot_encoder", "program_encoder")
VIT_IGNORED = (r"head\..*", r"fc_norm\..*")

# slot_mu / slot_log_sigma [1, 1, D] -> [D].
def _squeeze_shape(s):
  if len(s) != 3 or tuple(s[:2]) != (1, 1):
    raise MappingError(f"expected a [1, 1, D] parameter, got {tuple(s)}")
  return (s[-1],)


SQUEEZE_11 = Transform("squeeze_1x1", lambda x: x.reshape(_squeeze_shape(x.shape)), _squeeze_shape,
                       lambda x: x.reshape(1, 1, -1))


def qkv_bias(n_head: int) -> Transform:
  """timm qkv bias [3D] (q|k|v, heads contiguous) -> [3, H, hd]."""
  def shape_fn(s):
    if len(s) != 1 or s[0] % (3 * n_head):
      raise MappingError(f"fused qkv bias {s} does not split into 3 x {n_head} heads")
    return (3, n_head, s[0] // (3 * n_head))
  return Transform(f"qkv_bias_split(heads={n_head})", lambda x: x.reshape(shape_fn(x.shape)),
                   shape_fn, lambda b: b.reshape(-1))


def nsi_state_dict(ckpt) -> dict[str, Any]:
  """The flat state dict of an NSI checkpoint: {'slot_encoder': sd, 'program_encoder': sd}
  (plus optional training state) -> {'slot_encoder.<k>': tensor, 'program_encoder.<k>': ...}.
  A checkpoint that is already flat (keys with those prefixes) is returned as is."""
  root = ckpt.root
  if isinstance(root, Mapping) and all(isinstance(root.get(p), Mapping) for p in NSI_PARTS):
    import dataclasses  # pylint: disable=g-import-not-at-top
    out = {}
    for part in NSI_PARTS:
      for k, v in root[part].items():
        name = f"{part}.{k}"
        out[name] = dataclasses.replace(v, name=name) if dataclasses.is_dataclass(v) else v
    return out
  flat = ckpt.state_dict()
  if not any(k.startswith(NSI_PARTS) for k in flat):
    raise MappingError(f"{ckpt.path}: not an NSI checkpoint: expected top-level keys "
                       f"{NSI_PARTS} (trainer/train_nsi.py's best_model.pt)")
  return flat


def _linear(t: str, f: str, bias: bool = True) -> list[Entry]:
  out = [Entry(f"{t}.weight", f"{f}/kernel", LINEAR)]
  if bias:
    out.append(Entry(f"{t}.bias", f"{f}/bias", IDENTITY))
  return out


def _norm(t: str, f: str) -> list[Entry]:
  return [Entry(f"{t}.weight", f"{f}/scale", IDENTITY), Entry(f"{t}.bias", f"{f}/bias", IDENTITY)]


def _mlp(t: str, f: str) -> list[Entry]:
  """nn.Sequential(Linear, ReLU, Linear[, Dropout]) -> MLP fc1 / fc2."""
  return _linear(f"{t}.0", f"{f}/fc1") + _linear(f"{t}.2", f"{f}/fc2")


def _p(prefix: str, sep: str) -> str:
  return f"{prefix}{sep}" if prefix else ""


def vit_entries(config: ViTConfig, torch_prefix: str = "", flax_prefix: str = "") -> list[Entry]:
  """timm VisionTransformer keys (under `torch_prefix`) -> ViT paths (under `flax_prefix`)."""
  t, f = _p(torch_prefix, "."), _p(flax_prefix, "/")
  h = config.num_heads
  entries = [Entry(f"{t}patch_embed.proj.weight", f"{f}patch_embed/kernel", CONV_OIHW_TO_HWIO),
             Entry(f"{t}patch_embed.proj.bias", f"{f}patch_embed/bias", IDENTITY),
             Entry(f"{t}cls_token", f"{f}cls_token", IDENTITY),
             Entry(f"{t}pos_embed", f"{f}pos_embed", IDENTITY)]
  for i in range(config.depth):
    tb, fb = f"{t}blocks.{i}", f"{f}blocks/{i}"
    entries += _norm(f"{tb}.norm1", f"{fb}/norm1")
    entries.append(Entry(f"{tb}.attn.qkv.weight", f"{fb}/attn/qkv", fused_qkv(h)))
    if config.qkv_bias:
      entries.append(Entry(f"{tb}.attn.qkv.bias", f"{fb}/attn/qkv_bias", qkv_bias(h)))
    entries += _linear(f"{tb}.attn.proj", f"{fb}/attn/proj")
    entries += _norm(f"{tb}.norm2", f"{fb}/norm2")
    entries += _linear(f"{tb}.mlp.fc1", f"{fb}/mlp/fc1")
    entries += _linear(f"{tb}.mlp.fc2", f"{fb}/mlp/fc2")
  entries += _norm(f"{t}norm", f"{f}norm")
  return entries


def _head(t: str, f: str) -> list[Entry]:
  return (_linear(f"{t}embed_proj", f"{f}/proj") + _norm(f"{t}norm_embed", f"{f}/norm")
          + _mlp(f"{t}embed_mlp", f"{f}/mlp"))


def slot_attention_entries(config: NSIConfig, t: str = "slot_encoder.slot_attn",
                           f: str = "slot_attn") -> list[Entry]:
  sc = config.slot_config()
  if sc.variant != "nsi" or sc.init != "gaussian":
    raise MappingError(f"the NSI checkpoint layout has the 'nsi' slot attention with the "
                       f"gaussian init, not variant={sc.variant!r} init={sc.init!r}")
  ts, fs = f"{t}.slot_attention", f"{f}/slot_attention"
  entries = [Entry(f"{t}.slot_mu", f"{f}/slot_mu", SQUEEZE_11),
             Entry(f"{t}.slot_log_sigma", f"{f}/slot_log_sigma", SQUEEZE_11)]
  entries += _norm(f"{t}.layer_norm", f"{f}/layer_norm") + _mlp(f"{t}.mlp", f"{f}/mlp")
  for n in ("norm_inputs", "norm_slots", "norm_mlp"):
    entries += _norm(f"{ts}.{n}", f"{fs}/{n}")
  for n in ("project_q", "project_k", "project_v"):
    entries += _linear(f"{ts}.{n}", f"{fs}/{n}", bias=False)
  entries += [Entry(f"{ts}.gru.weight_ih", f"{fs}/gru/weight_ih", LINEAR),
              Entry(f"{ts}.gru.weight_hh", f"{fs}/gru/weight_hh", LINEAR),
              Entry(f"{ts}.gru.bias_ih", f"{fs}/gru/bias_ih", IDENTITY),
              Entry(f"{ts}.gru.bias_hh", f"{fs}/gru/bias_hh", IDENTITY)]
  entries += _mlp(f"{ts}.mlp", f"{fs}/mlp")
  return entries


def program_entries(config: NSIConfig, t: str = "program_encoder",
                    f: str = "program_encoder") -> list[Entry]:
  entries = [Entry(f"{t}.{n}_embedding.weight", f"{f}/{n}_embedding/embedding", IDENTITY)
             for n in ("size", "shape", "material")]
  entries += _linear(f"{t}.pos_embedding.0", f"{f}/pos_embedding")
  entries += _mlp(f"{t}.program_embed", f"{f}/program_embed")
  for i in range(config.program_blocks):
    tb, fb = f"{t}.encoder.blocks.{i}", f"{f}/blocks/{i}"
    entries += _norm(f"{tb}.attn_layer_norm", f"{fb}/attn_layer_norm")
    for n in ("q", "k", "v", "o"):
      entries += _linear(f"{tb}.attn.proj_{n}", f"{fb}/attn/proj_{n}", bias=False)
    entries += _norm(f"{tb}.ffn_layer_norm", f"{fb}/ffn_layer_norm")
    entries += _mlp(f"{tb}.ffn", f"{fb}/ffn")
  entries += _norm(f"{t}.encoder.layer_norm", f"{f}/layer_norm")
  entries += _head(f"{t}.", f"{f}/head")
  return entries


def table(config: NSIConfig) -> Table:
  """The whole NSI checkpoint (flattened by `nsi_state_dict`): ViT + slot encoder + program
  encoder; nothing is ignored except a ViT classifier head, should one be present."""
  entries = vit_entries(config.vit, "slot_encoder.encoder", "encoder")
  entries += slot_attention_entries(config)
  entries.append(Entry("slot_encoder.decoder.postional_encoding.weight",
                       "decoder/positions/embedding", IDENTITY))
  for j in range(config.decoder_layers + 1):
    entries += _linear(f"slot_encoder.decoder.mlp.{2 * j}", f"decoder/layers/{j}")
  entries += _head("slot_encoder.", "image_head")
  entries += program_entries(config)
  return Table(system="nsi", entries=tuple(entries),
               ignored=tuple(f"slot_encoder\\.encoder\\.{p}" for p in VIT_IGNORED))


def vit_table(config: ViTConfig) -> Table:
  """A plain timm / DINO ViT state dict (4 + 12 * depth + 2 entries with qkv bias)."""
  return Table(system="vit", entries=tuple(vit_entries(config)), ignored=VIT_IGNORED)
