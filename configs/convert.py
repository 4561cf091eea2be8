"""Convert an original PyTorch checkpoint (LRAS transformer or LPQ tokenizer) to Orbax.

Embedded default (a tiny demo checkpoint shipped in assets/, random weights, torch layout):
    python -m spelke_jax.main --config=configs/convert.py --workdir=out/demo_convert

The released SpelkeNet checkpoints (download them first, see README):
    python -m spelke_jax.main --config=configs/convert.py --config.system=lras \
        --config.src=checkpoints/SpelkeNet1B.pt --workdir=out/spelkenet_1b
    python -m spelke_jax.main --config=configs/convert.py --config.system=lpq \
        --config.src=checkpoints/rgb_quantizer.pt --workdir=out/rgb_quantizer

EISEN (the released tdw_playroom_128x128_ckpt.pth has no saved config, so name the backbone):
    python -m spelke_jax.main --config=configs/convert.py --config.system=eisen \
        --config.src=checkpoints/tdw_playroom_128x128_ckpt.pth \
        --config.model_config='{"backbone": "resnet50_deeplab"}' --workdir=out/eisen_playroom

Add --config.store_dtype=int8 to store every kernel as int8 with per-channel float32 scales (a
quarter of the float32 size; dequantized to param_dtype on load).

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
  c.system = "lras"                                   # lras | lpq | eisen | eisen_head
  c.src = str(ASSETS / "lras_demo_tiny.pt")           # .pt/.pth/.safetensors/.npz
  c.overwrite = False
  c.param_dtype = ""                                  # e.g. "bfloat16" to store bf16; "" = float32
  c.store_dtype = ""                                  # "int8": kernels as int8 + per-channel scales
  c.model_config = ""                                 # JSON object of config fields to override
  c.smoke_test = True                                 # load back and run one forward
  return c
