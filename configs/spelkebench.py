"""SpelkeBench: one segment per ground-truth probe point, then AR / mIoU as the original.

Embedded default (the small SpelkeNet trained on the synthetic Spelke world, assets/synth_spelkenet,
on the shipped held-out set assets/synth_eval96.h5: 40 scenes of seed 7 at 96 px; the
synthetic_small probing preset; a few minutes on CPU, no downloads):
    python -m spelke_jax.main --config=configs/spelkebench.py --workdir=out/spelkebench_demo

Another registered model (`:NAME` picks it too, e.g. configs/spelkebench.py:whole_image):
    python -m spelke_jax.main --config=configs/spelkebench.py --config.model=whole_image \
        --workdir=out/spelkebench_whole_image

The original's probing (1 zoom iteration, 4 directions) on the shipped model:
    python -m spelke_jax.main --config=configs/spelkebench.py --config.preset=spelkenet_1b_fast \
        --workdir=out/spelkebench_fast_preset

The real benchmark with the converted SpelkeNet 1B (download and convert first, see README):
    python -m spelke_jax.main --config=configs/spelkebench.py \
        --config.dataset_path=datasets/spelke_bench.h5 --config.preset=spelkenet_1b \
        --config.lras_checkpoint=out/spelkenet_1b/model \
        --config.rgb_checkpoint=out/rgb_quantizer/model \
        --config.flow_checkpoint=out/flow_quantizer/model \
        --config.flow_table=checkpoints/flow_token_to_flow_vector_mapping.pt \
        --config.dtype=bfloat16 --workdir=out/spelkebench

The workdir receives `predictions/<key>.h5` (segment_pred, segment_gt, probe_points, image;
a killed run resumes and skips them), `metrics.json` (AR, mIoU, AP, per-image rows),
`figures/<key>.png` and `summary.png`. Images are spread over all local devices and, with
num_splits / split_num (the original's seed-42 split) and jax.process_index, over jobs / hosts.
"""
from pathlib import Path

import ml_collections

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.mode = "spelkebench"
  c.dataset_path = str(ASSETS / "synth_eval96.h5")
  c.model = arg or "spelkenet"           # a name registered in spelke_jax.evals.models
  c.img_names = ""                       # comma-separated subset of the dataset's keys; "" = all
  c.max_images = 0                       # first N keys in sorted order; 0 = all
  c.num_splits = 1                       # the original's run_inference_parallel.py split
  c.split_num = 0
  c.write_figures = True                 # figures/<key>.png and summary.png
  c.log_every = 10                       # absl progress line every N images

  # floodfill baseline
  c.floodfill_tolerance = 0.1            # max abs channel difference, [0,1] units

  # spelkenet: converted dirs (convert mode) or original .pt files; '' = the shipped small model
  c.lras_checkpoint = ""
  c.rgb_checkpoint = ""
  c.flow_checkpoint = ""
  c.flow_table = ""                      # flow_token_to_flow_vector_mapping
  # synthetic_small: ours, tuned for the shipped small model; the released models use the
  # original presets spelkenet_1b | spelkenet_7b | spelkenet_1b_fast (pass one with them).
  c.preset = "synthetic_small"
  c.num_zoom_iters = -1                  # -1 = the preset's value
  c.num_seq_patches = -1
  c.num_seeds = -1
  c.num_dirs = -1
  c.num_zoom_dirs = -1
  c.point_crop = -1.0                    # crop side / image side (synthetic_small: 0.5); -1 = preset
  c.seed = 0
  c.dtype = "float32"                    # transformer compute/param dtype (bfloat16 on GPU/TPU)
  c.parity = False                       # every probing parity switch set to the original
  return c
