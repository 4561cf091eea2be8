"""The `convert` mode: torch checkpoint -> <workdir>/model, then load it back and run it once."""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from spelke_jax.convert.convert import convert_checkpoint
from spelke_jax.convert.load import load_converted


def smoke_forward(system: str, model) -> dict:
  """One forward on a fixed input: LRAS -> logits of 16 tokens; LPQ -> encode/decode 64x64."""
  if system == "lras":
    cfg = model.config
    t = min(16, cfg.block_size)
    tokens = (jnp.arange(t, dtype=jnp.int32) * 7919 % cfg.vocab_size)[None]
    positions = jnp.arange(t, dtype=jnp.int32)[None]
    logits = np.asarray(model(tokens, positions), np.float32)
    return {"input_tokens": tokens[0].tolist(), "logits_shape": list(logits.shape),
            "last_logits_head": [round(float(v), 5) for v in logits[0, -1, :5]],
            "argmax_next_token": int(logits[0, -1].argmax()),
            "finite": bool(np.isfinite(logits).all())}
  if system == "lpq":
    c = model.config.num_in_channels
    x = jnp.asarray(np.linspace(-1, 1, 64 * 64 * c, dtype=np.float32).reshape(1, 64, 64, c))
    idx = model.quantize(x)
    y = np.asarray(model.decode(idx))
    return {"indices_shape": list(idx.shape), "decoded_shape": list(y.shape),
            "first_indices": np.asarray(idx)[0, 0, :4].tolist(), "finite": bool(np.isfinite(y).all())}
  if system in ("eisen", "eisen_head"):
    cfg = model.config
    if system == "eisen":
      x = jnp.asarray(np.linspace(0, 255, 64 * 64 * 3).reshape(1, 64, 64, 3).astype(np.uint8))
    else:
      x = jnp.ones((1, 8, 8, cfg.feature_dim), jnp.float32)
    key, query = model(x)
    return {"key_shape": list(key.shape), "query_shape": list(query.shape),
            "finite": bool(np.isfinite(np.asarray(key)).all())}
  raise ValueError(f"no smoke test for system {system!r}")


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  out = workdir / "model"
  overrides = json.loads(config.model_config) if config.model_config else {}
  if not isinstance(overrides, dict):
    raise ValueError(f"--config.model_config must be a JSON object, got {config.model_config!r}")
  if config.param_dtype:
    overrides["param_dtype"] = config.param_dtype
  t0 = time.time()
  convert_checkpoint(config.src, out, config.system, config_overrides=overrides,
                     overwrite=config.overwrite, store_dtype=config.get("store_dtype", "") or None)
  report = {"system": config.system, "src": str(config.src), "out": str(out),
            "seconds": round(time.time() - t0, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
  logging.info("converted %s -> %s in %.1fs", config.src, out, report["seconds"])
  if config.smoke_test:
    report["smoke_test"] = smoke_forward(config.system, load_converted(out))
    print(f"loaded {out}: {json.dumps(report['smoke_test'])}")
  tmp = workdir / f".convert_report.json.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(report, indent=2))
  os.replace(tmp, workdir / "convert_report.json")
  return report
