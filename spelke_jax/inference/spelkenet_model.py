"""SpelkeNet as a SpelkeBench model (`--config.model=spelkenet`), and a small embedded SpelkeNet.

Weights come from `config.lras_checkpoint`, `config.rgb_checkpoint`, `config.flow_checkpoint`
(each a converted directory (convert mode) or an original .pt, converted on the fly) and
`config.flow_table` (the original's flow_token_to_flow_vector_mapping.pt, or an .npz with
`token_ids`, `vectors` and optionally `no_motion_codes`). With no checkpoint configured, the
shipped small SpelkeNet trained on the synthetic Spelke world (assets/synth_spelkenet/: 96-px
images, converted Orbax directories written by tools/ship_synth_models.py) is used, so every
command runs without downloads. `build_tiny` makes a random-weight model of the same kind for
tests.
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from spelke_jax.evals import models as bench_models
from spelke_jax.inference import maps, probe
from spelke_jax.models import lpq as lpq_lib
from spelke_jax.models import lras
from spelke_jax.models.lpq_config import LPQConfig
from spelke_jax.models.lras_config import NO_MOTION_FLOW_CODES, LRASConfig, compact_layout

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "assets" / "synth_spelkenet"
SHIPPED_FILES = ("lras", "rgb_quantizer", "flow_quantizer", "flow_table.npz")

# The embedded small model: 8-bit codebooks, the compact vocabulary layout, 2 layers.
TINY_RGB = LPQConfig(vocab_size=256, num_in_channels=3, num_out_channels=3, kind="rgb",
                     encoder_blocks=(("ResBlock", 16, 16, 32, 1, 1, 0),),
                     decoder_blocks=(("ResBlock", 16, 16, 32, 3, 1, 1), ("Upsample", 16, 8),
                                     ("ResBlock", 8, 8, 16, 3, 1, 1), ("Upsample", 8, 8)))
TINY_FLOW = dataclasses.replace(TINY_RGB, num_in_channels=2, num_out_channels=2, kind="flow",
                                dropout=0.0)
TINY_LRAS = LRASConfig(n_layer=2, n_head=2, n_embd=32, **compact_layout(256, 256))


# ---- Flow-token table of a flow tokenizer --------------------------------------------------------

def derive_flow_table(flow_lpq, chunk: int = 1024) -> maps.FlowTable:
  """Every code's flow (the 'flow token epigraphy'): decode a 3x3 grid of the code and keep the
  centre code's [s, s, 2] pixels. For tokenizers without the original's table file."""
  bits = flow_lpq.config.codebook_bits
  codes = np.arange(2**bits)
  decode = jax.jit(lambda m, i: lpq_lib.denormalize_flow(m.decode(i)))
  vecs = []
  for start in range(0, len(codes), chunk):
    c = jnp.asarray(codes[start:start + chunk], jnp.int32)
    flow = np.asarray(decode(flow_lpq, jnp.broadcast_to(c[:, None, None], (len(c), 3, 3))))
    s = flow.shape[1] // 3
    vecs.append(flow[:, s:2 * s, s:2 * s])
  return maps.FlowTable.from_arrays(codes, np.concatenate(vecs))


def zero_flow_codes(flow_lpq) -> tuple[int, ...]:
  """The codes the flow tokenizer gives to zero motion (the 'no-motion' tokens)."""
  codes = flow_lpq.quantize(jnp.zeros((1, 16, 16, 2), jnp.float32))
  return tuple(int(c) for c in np.unique(np.asarray(codes)))


# ---- Building and loading -----------------------------------------------------------------------

def build_tiny(seed: int = 0) -> tuple[Any, Any, Any, maps.FlowTable, tuple[int, ...]]:
  """(lras, rgb_lpq, flow_lpq, table, no_motion_codes) of the small model, random weights."""
  rgb = lpq_lib.create(TINY_RGB, seed + 1)
  flow = lpq_lib.create(TINY_FLOW, seed + 2)
  return (lras.create(TINY_LRAS, seed), rgb, flow, derive_flow_table(flow),
          zero_flow_codes(flow))


def write_flow_table(path: str | Path, table: maps.FlowTable, no_motion: Sequence[int]) -> Path:
  """flow_table.npz (token_ids, vectors, no_motion_codes), written to a temp name and renamed."""
  path = Path(path)
  tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
  np.savez(tmp, token_ids=np.asarray(table.token_ids), vectors=np.asarray(table.vectors),
           no_motion_codes=np.asarray(no_motion, np.int64))
  tmp.replace(path)
  return path


def _load(path: str | Path, system: str, **overrides):
  from spelke_jax.convert.load import load_converted, load_torch  # pylint: disable=g-import-not-at-top
  path = Path(path)
  if path.is_dir():
    return load_converted(path, **overrides)
  return load_torch(path, system, **overrides)


def load_table(path: str | Path) -> tuple[maps.FlowTable, tuple[int, ...]]:
  """Flow table + no-motion codes (from the .npz, else the released ones)."""
  path = Path(path)
  table = maps.load_flow_table(path)
  codes = NO_MOTION_FLOW_CODES
  if path.suffix.lower() == ".npz":
    with np.load(path, allow_pickle=False) as z:
      if "no_motion_codes" in z.files:
        codes = tuple(int(c) for c in z["no_motion_codes"])
  return table, codes


def load_spelkenet(lras_path, rgb_path, flow_path, table_path, probe_config: probe.ProbeConfig,
                   *, dtype: str = "float32") -> probe.SpelkeNet:
  """A SpelkeNet from checkpoints (converted dirs or original .pt files)."""
  table, no_motion = load_table(table_path)
  return probe.SpelkeNet(_load(lras_path, "lras", param_dtype=dtype, dtype=dtype),
                         _load(rgb_path, "lpq"), _load(flow_path, "lpq"), table, probe_config,
                         no_motion_codes=no_motion)


def probe_config_from(config: ml_collections.ConfigDict) -> probe.ProbeConfig:
  """The preset named by config.preset, with every hyperparameter >= 0 overriding it
  (num_zoom_iters, num_seq_patches, num_seeds, num_dirs, num_zoom_dirs, point_crop)."""
  preset = config.get("preset", "spelkenet_1b")
  if preset not in probe.PRESETS:
    raise ValueError(f"unknown probing preset {preset!r}; known: {sorted(probe.PRESETS)}")
  base = probe.PRESETS[preset]()
  kw = {}
  for name in ("num_zoom_iters", "num_seq_patches", "num_seeds", "num_dirs", "num_zoom_dirs"):
    v = config.get(name, -1)
    if v is not None and v >= 0:
      kw[name] = int(v)
  if config.get("point_crop", -1) >= 0:
    kw["point_crop"] = float(config.point_crop)
  cfg = dataclasses.replace(base, **kw)
  return cfg.original() if config.get("parity", False) else cfg


# ---- The SpelkeBench model ----------------------------------------------------------------------

class SpelkeNetBenchModel:
  """SpelkeBenchModel wrapper: deterministic per (seed, image, point), whatever the call order."""

  def __init__(self, net: probe.SpelkeNet, seed: int = 0):
    self.net = net
    self.seed = seed

  def run_inference(self, image: np.ndarray, poke_point) -> np.ndarray:
    image = np.asarray(image)
    x, y = (int(round(float(v))) for v in poke_point)
    key = jax.random.key(self.seed)
    key = jax.random.fold_in(key, zlib.crc32(np.ascontiguousarray(image).tobytes()) & 0x7FFFFFFF)
    key = jax.random.fold_in(jax.random.fold_in(key, x), y)
    return self.net.run_inference(image, poke_point, key=key)

  def on_device(self, device) -> "SpelkeNetBenchModel":
    net = self.net
    copies = []
    for m in (net.lras, net.rgb_lpq, net.flow_lpq):
      graphdef, state = nnx.split(m)
      copies.append(nnx.merge(graphdef, jax.device_put(state, device)))
    moved = probe.SpelkeNet(*copies, net.table, net.probe, no_motion_codes=net.no_motion_codes)
    return SpelkeNetBenchModel(moved, self.seed)


@bench_models.register("spelkenet")
def spelkenet_factory(config: ml_collections.ConfigDict) -> SpelkeNetBenchModel:
  """From config.lras_checkpoint / rgb_checkpoint / flow_checkpoint / flow_table, or the
  shipped small model (SHIPPED_DIR) when lras_checkpoint is empty."""
  probe_cfg = probe_config_from(config)
  if config.get("lras_checkpoint", ""):
    paths = [config.get(k, "") for k in ("lras_checkpoint", "rgb_checkpoint", "flow_checkpoint",
                                          "flow_table")]
    missing = [k for k, v in zip(("rgb_checkpoint", "flow_checkpoint", "flow_table"), paths[1:])
               if not v]
    if missing:
      raise ValueError(f"model spelkenet with lras_checkpoint also needs {missing}")
  else:
    paths = [SHIPPED_DIR / n for n in SHIPPED_FILES]
  net = load_spelkenet(*paths, probe_cfg, dtype=config.get("dtype", "float32"))
  return SpelkeNetBenchModel(net, int(config.get("seed", 0)))
