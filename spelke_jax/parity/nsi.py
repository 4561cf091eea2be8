"""Parity runner for the `nsi` fixture packs: NSI's data transform, image side (timm ViT ->
slot attention -> broadcast decoder -> projection head), program encoder, score and losses.

Everything is built from the manifest config (sections 'ImageEncoder_args',
'CLEVRTexProgramEncoder', 'loss', 'dino_vit', 'transform'); the sizes the original hard-codes
(vocabularies 3 / 4 / 60, decoder width 1024 x 3) are read from model.pt's shapes, which the
converter then checks against the model. model.pt goes through the converter (`load_torch`,
system 'nsi'). The slot initialisation replays the recorded `slot_noise`.

Stage isolation: the model is fed the recorded `x` (the manifest lists it as an input); our
own transform of `raw_images` is compared separately as `x` / `x_resize_aa_true`.
"""
from __future__ import annotations

import copy

import numpy as np

from spelke_jax.parity.pack import FixturePack


def _nhwc(x) -> np.ndarray:
  return np.transpose(np.asarray(x), (0, 2, 3, 1))


def _nchw(x) -> np.ndarray:
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def checkpoint_sizes(path) -> dict[str, int]:
  """Sizes the original hard-codes, read from the checkpoint: vocabularies, decoder MLP."""
  from spelke_jax.convert.nsi_mapping import nsi_state_dict  # pylint: disable=g-import-not-at-top
  from spelke_jax.convert.torch_reader import load_checkpoint  # pylint: disable=g-import-not-at-top
  shapes = {k: tuple(v.shape) for k, v in nsi_state_dict(load_checkpoint(path)).items()}
  out: dict[str, int] = {}
  for field, name in (("num_sizes", "size"), ("num_shapes", "shape"),
                      ("num_materials", "material")):
    key = f"program_encoder.{name}_embedding.weight"
    if key in shapes:
      out[field] = shapes[key][0]
  dec = sorted(int(k.split(".")[3]) for k in shapes
               if k.startswith("slot_encoder.decoder.mlp.") and k.endswith(".weight"))
  if dec:
    out["decoder_layers"] = len(dec) - 1
    out["decoder_hidden"] = shapes[f"slot_encoder.decoder.mlp.{dec[0]}.weight"][0]
  return out


def model_config(pack: FixturePack) -> dict:
  """The manifest config plus the checkpoint-derived sizes the manifest does not state."""
  cfg = copy.deepcopy(pack.config)
  prog = cfg.get("CLEVRTexProgramEncoder", {})
  for field, value in checkpoint_sizes(pack.file("model.pt")).items():
    original = {"num_sizes": "sizes_size", "num_shapes": "shape_size",
                "num_materials": "material_size"}.get(field)
    if original is None or original not in prog:
      cfg.setdefault(field, value)
  return cfg


def run(pack: FixturePack) -> dict[str, np.ndarray]:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from spelke_jax.convert.load import load_torch  # pylint: disable=g-import-not-at-top
  from spelke_jax.models import vit as vit_lib  # pylint: disable=g-import-not-at-top

  cfg = model_config(pack)
  model = load_torch(pack.file("model.pt"), "nsi", config=cfg)
  model.eval()
  c = model.config
  out: dict[str, np.ndarray] = {}

  raw = np.asarray(pack["raw_images"])                     # [B, H, W, 3] in [0, 1]
  for name, aa in (("x", False), ("x_resize_aa_true", True)):
    x = vit_lib.preprocess(raw, c.vit.resize_size, c.vit.crop_size, antialias=aa)
    out[name] = _nchw(x).astype(np.float32)

  res = model(jnp.asarray(_nhwc(pack["x"]), jnp.float32), jnp.asarray(pack["labels"]),
              jnp.asarray(pack["lengths"]),
              slot_noise=jnp.asarray(pack["slot_noise"], jnp.float32))
  img = res.image
  alpha = np.asarray(img.alpha)
  out.update(
      vit_features=np.asarray(img.features), slots_init=np.asarray(img.slots_init),
      slots_per_iter=np.asarray(img.slots_per_iter), slots=np.asarray(img.slots),
      sa_attn=np.asarray(img.sa_attn), attns_raw=alpha[:, :, None], mse=np.asarray(img.mse),
      slots_proj=np.asarray(img.slots_proj), prog_proj=np.asarray(res.prog_proj),
      z_program=np.asarray(res.z_program), mask=np.asarray(res.mask),
      logits=np.asarray(res.logits), contrastive_loss=np.asarray(res.contrastive_loss),
      loss=np.asarray(res.loss))
  return out
