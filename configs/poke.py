"""Poke one point of an image: motion affordance, expected displacement, correlation, segment.

Embedded default (the first image of the shipped synthetic set assets/synth_eval96.h5 and its
first probe point, the small SpelkeNet trained on the synthetic world, assets/synth_spelkenet;
CPU, no downloads):
    python -m spelke_jax.main --config=configs/poke.py --workdir=out/poke_demo

Your image and point with the converted SpelkeNet 1B (see README for converting):
    python -m spelke_jax.main --config=configs/poke.py --config.image=photo.jpg \\
        --config.point=120,96 --config.preset=spelkenet_1b \\
        --config.lras_checkpoint=out/spelkenet_1b/model \\
        --config.rgb_checkpoint=out/rgb_quantizer/model \\
        --config.flow_checkpoint=out/flow_quantizer/model \\
        --config.flow_table=checkpoints/flow_token_to_flow_vector_mapping.pt --workdir=out/poke

Writes affordance.png, displacement.png, correlation.png, segment.png and poke.npz.
"""
import ml_collections


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.mode = "poke"
  c.image = ""                  # an RGB image file; "" = the embedded demo image
  c.point = ""                  # "X,Y" pixels (x horizontal); "" = the demo's probe point
  c.resize = True               # resize + centre-crop other sizes to the model's size
  # The SpelkeNet (same fields as configs/spelkebench.py; '' = the shipped small model).
  c.lras_checkpoint = ""
  c.rgb_checkpoint = ""
  c.flow_checkpoint = ""
  c.flow_table = ""
  c.preset = "synthetic_small"  # ours for the shipped model; released: spelkenet_1b | _7b | _1b_fast
  c.num_zoom_iters = -1
  c.num_seq_patches = -1
  c.num_seeds = -1
  c.num_dirs = -1
  c.num_zoom_dirs = -1
  c.point_crop = -1.0
  c.seed = 0
  c.dtype = "float32"
  c.parity = False
  return c
