"""Writes assets/lras_demo_tiny.pt: a tiny randomly initialised LRAS in the original torch layout.

    python tools/make_demo_checkpoint.py --out=assets/lras_demo_tiny.pt

It is the embedded default input of configs/convert.py (so the main command runs on a fresh
machine without downloads). Deterministic: the same seed gives the same bytes of weights.
"""
from __future__ import annotations

from absl import app, flags

from spelke_jax.convert.export import export_torch
from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig

_OUT = flags.DEFINE_string("out", "assets/lras_demo_tiny.pt", "Output .pt path.")
_SEED = flags.DEFINE_integer("seed", 0, "Init seed.")

DEMO = LRASConfig(vocab_size=512, block_size=256, n_layer=2, n_head=4, n_embd=64)
CONFIG_CLASS = "spelke_net.spelke_net.config.LRAS1B_Campose_FlowQuantized_Patch8_RGBConfig"


def main(argv):
  del argv
  model = lras.create(DEMO, seed=_SEED.value)
  cfg = {"config_class": CONFIG_CLASS, **DEMO.to_dict()}
  print(export_torch(model, "lras", _OUT.value, cfg=cfg))


if __name__ == "__main__":
  app.run(main)
