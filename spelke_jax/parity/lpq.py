"""Parity runner for the `lpq_rgb` / `lpq_flow` packs (the LPQ tokenizers).

The pack's model.pt goes through the converter (convert.load.load_torch) with the manifest's
config; `run` returns every output in the pack's layouts (NCHW for x / encoder_out / codes /
decoded, channels-last for the rest).
"""
from __future__ import annotations

import numpy as np

from spelke_jax.convert.load import load_torch
from spelke_jax.models import lpq
from spelke_jax.models.lpq_config import LPQConfig


def _nchw(x) -> np.ndarray:
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def run(pack) -> dict[str, np.ndarray]:
  """Outputs of lpq_rgb / lpq_flow packs: x, encoder_out, lfq_preact, indices, codes, decoded,
  decoded_rgb01 (rgb) or decoded_flow_px (flow)."""
  config = LPQConfig.from_dict(pack.config)
  model = load_torch(pack.file(pack.manifest.get("checkpoint") or "model.pt"), "lpq",
                     config=pack.config)
  if config.kind == "rgb":
    x = lpq.normalize_rgb(pack["image_uint8"])
  else:
    x = lpq.normalize_flow(pack["flow_px"])
  z = model.encode_features(x)
  idx = model.quantize(x)
  decoded = model.decode(idx)
  out = {
      "x": _nchw(x),
      "encoder_out": _nchw(z),
      "lfq_preact": np.asarray(model.preact(z)),
      "indices": np.asarray(idx).astype(np.int64),
      "codes": _nchw(model.indices_to_codes(idx)),
      "decoded": _nchw(decoded),
  }
  if config.kind == "rgb":
    out["decoded_rgb01"] = np.asarray(lpq.denormalize_rgb(decoded))
  else:
    out["decoded_flow_px"] = np.asarray(lpq.denormalize_flow(decoded))
  return out
