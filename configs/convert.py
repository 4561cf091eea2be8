"""Convert an original PyTorch checkpoint (LRAS transformer or LPQ tokenizer) to Orbax.

Embedded default (a tiny demo checkpoint shipped in assets/, random weights, torch layout):
    python -m spelke_jax.main --config=configs/convert.py --workdir=out/demo_convert

The released SpelkeNet checkpoints (download them first, see README):
    python -m spelke_jax.main --config=configs/convert.py --config.system=lras \
        --config.src=checkpoints/SpelkeNet1B.pt --workdir=out/spelkenet_1b
    python -m spelke_jax.main --config=configs/convert.py --config.system=lpq \
        --config.src=checkpoints/rgb_quantizer.pt --workdir=out/rgb_quantizer

The workdir receives `model/` (config.json + Orbax params; load it with
`spelke_jax.convert.load_converted(workdir + '/model')`) and `convert_report.json` (tensor count,
seconds, peak memory, and a smoke-test forward of the loaded model).
"""
from pathlib import Path

import ml_collections

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.mode = "convert"
  c.system = "lras"                                   # lras | lpq
  c.src = str(ASSETS / "lras_demo_tiny.pt")           # .pt/.pth/.safetensors/.npz
  c.overwrite = False
  c.param_dtype = ""                                  # e.g. "bfloat16" to store bf16; "" = float32
  c.smoke_test = True                                 # load back and run one forward
  return c
