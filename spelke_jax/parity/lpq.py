"""Parity runner for the `lpq_rgb` / `lpq_flow` packs (the LPQ tokenizers).

`load_lpq_from_torch` is the generic checkpoint -> filled nnx model path (to move into a shared
loader later); `run` rebuilds the pack's model and returns every output in the pack's layouts
(NCHW for x / encoder_out / codes / decoded, channels-last for the rest).
"""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from flax import nnx

from spelke_jax.convert import lpq_mapping, mapping
from spelke_jax.convert.torch_reader import load_checkpoint
from spelke_jax.models import lpq
from spelke_jax.models.lpq_config import LPQConfig


def flax_shapes(model_state: nnx.State) -> dict[str, tuple[int, ...]]:
  """{'a/b/c': shape} of an nnx state (nnx.List indices become '0', '1', ...)."""
  return mapping.flat_shapes(nnx.to_pure_dict(model_state))


def load_lpq_from_torch(path: str | os.PathLike, config: LPQConfig | None = None) -> lpq.LPQ:
  """Reads an original LPQ checkpoint ({'model': state_dict, 'cfg': ...}) into an `LPQ`.

  config: built from the checkpoint's `cfg` when None. Raises `MappingError` listing every
  missing / unexpected key and shape mismatch before reading any tensor.
  """
  ckpt = load_checkpoint(path)
  if config is None:
    cfg = ckpt.config()
    if cfg is None:
      raise ValueError(f"{path} holds no 'cfg'; pass an LPQConfig")
    config = LPQConfig.from_dict(cfg)
  state_dict = ckpt.state_dict()
  graphdef, state = nnx.split(lpq.abstract(config))
  steps = mapping.plan(lpq_mapping.table(config), {k: v.shape for k, v in state_dict.items()},
                       flax_shapes(state))
  values = []
  for step in steps:
    arr = np.asarray(step.transform.fn(state_dict[step.source].read()), dtype=np.float32)
    values.append((step.flax_path, jnp.asarray(arr)))
  pure = mapping.unflatten(values)
  _int_keys(pure)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def _int_keys(tree: dict) -> None:
  """In place: digit keys -> int (nnx.List children are int-keyed in the pure dict)."""
  for k in list(tree):
    v = tree[k]
    if isinstance(v, dict):
      _int_keys(v)
    if isinstance(k, str) and k.isdigit():
      tree[int(k)] = tree.pop(k)


def _nchw(x) -> np.ndarray:
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def run(pack) -> dict[str, np.ndarray]:
  """Outputs of lpq_rgb / lpq_flow packs: x, encoder_out, lfq_preact, indices, codes, decoded,
  decoded_rgb01 (rgb) or decoded_flow_px (flow)."""
  config = LPQConfig.from_dict(pack.config)
  model = load_lpq_from_torch(pack.file(pack.manifest.get("checkpoint") or "model.pt"), config)
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
