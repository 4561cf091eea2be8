"""Writes assets/tiny_spelkenet/: the small embedded SpelkeNet in the original layouts.

    python tools/make_tiny_spelkenet.py --out=assets/tiny_spelkenet

lras.pt, rgb_quantizer.pt, flow_quantizer.pt ({'model': state_dict, 'cfg': ...}, loadable by the
converter and by the original's ModelFactory) and flow_table.npz (every flow code's decoded 4x4
flow and the zero-motion codes). Random weights (deterministic in --seed); the embedded default
of the spelkebench and poke modes until trained small models replace it.
"""
from __future__ import annotations

from absl import app, flags

from spelke_jax.inference import spelkenet_model

_OUT = flags.DEFINE_string("out", str(spelkenet_model.TINY_DIR), "Output directory.")
_SEED = flags.DEFINE_integer("seed", 0, "Init seed.")


def main(argv):
  del argv
  print(spelkenet_model.write_tiny_assets(_OUT.value, _SEED.value))


if __name__ == "__main__":
  app.run(main)
