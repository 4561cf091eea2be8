"""EISEN on the synthetic Spelke world, sized for CPU (small ResNet-DeepLab, 128 px scenes).

Train (targets from flow only; `:round2` bootstraps with explaining away from a round-1 run,
starting from its weights, 400 steps at lr 5e-5 on a 256-scene target cache):
    python -m spelke_jax.main --config=configs/eisen_synth.py --workdir=out/eisen_synth
    python -m spelke_jax.main --config=configs/eisen_synth.py:round2 \
        --config.teacher=out/eisen_synth --workdir=out/eisen_synth_round2
The shipped EISEN is round 2 from a round-1 teacher trained in three steps (README: EISEN):
    python -m spelke_jax.main --config=configs/eisen_synth.py --config.init_from=out/eisen_synth \
        --config.lr=2e-4 --config.num_steps=2500 --config.data.seed=100 --workdir=out/eisen_synth_cont
    python -m spelke_jax.main --config=configs/eisen_synth.py --config.init_from=out/eisen_synth_cont \
        --config.lr=2e-4 --config.num_steps=2000 --config.data.seed=102 \
        --config.targets.rigid_merge_tol=0.25 --workdir=out/eisen_synth_rigid
    python -m spelke_jax.main --config=configs/eisen_synth.py:round2 \
        --config.teacher=out/eisen_synth_rigid --config.model.propagation_affinity_thresh=0.6 \
        --config.model.num_masks=64 --config.targets.rigid_merge_tol=0.25 \
        --config.targets.cache_batches=96 --config.num_steps=200 --workdir=out/eisen_synth_round2
Evaluate the shipped EISEN (assets/synth_eisen) on the shipped held-out set
(assets/synth_eval128.h5: 40 scenes of seed 7, never used in training or tuning; matched mIoU
0.6047, agent scenes 0.5465; 0.5732 with the original's --config.segment_upsample=nearest):
    python -m spelke_jax.main --config=configs/eisen_synth.py --config.mode=eval \
        --workdir=out/eisen_synth_eval
and a run of yours on another set (tools/make_synthetic.py writes one):
    python tools/make_synthetic.py --seed=8 --num=40 --resolution=128 --out=out/synth_eval128_s8.h5
    python -m spelke_jax.main --config=configs/eisen_synth.py --config.mode=eval \
        --config.checkpoint=out/eisen_synth --config.dataset_path=out/synth_eval128_s8.h5 \
        --workdir=out/eisen_synth_eval_s8
KProp-iterations ablation (the paper's Table 3) of a trained run:
    python tools/eisen_ablation.py --config=configs/eisen_synth.py \
        --config.checkpoint=out/eisen_synth --out=out/eisen_ablation
Where a model loses mIoU (stride ceiling, KProp + Competition, plain affinity components):
    python tools/eisen_grouping_diagnostic.py --config=configs/eisen_synth.py --out=out/eisen_diag
A run restarted in the same workdir resumes from its last checkpoint. The affinity map has
stride 4 (32 x 32 at 128 px): nearest-upsampled perfect labels at that stride score 0.82
matched mIoU on the seed-7 set (0.67 at 64 px, 0.90 at 256 px), the ceiling of this config.
"""
from pathlib import Path

import ml_collections

from spelke_jax.train.eisen_configs import base

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def get_config(arg=None):
  c = base()
  c.model.backbone = "small"
  c.model.local_window_size = 9
  c.model.num_affinity_samples = 256
  c.model.min_cc_area = 8
  c.data.source = "synthetic"
  c.data.resolution = 128
  c.data.seed = 0                    # training scenes; evaluate on other seeds
  # synthetic.make_scene arguments of the training scenes (the generator's defaults), so that
  # e.g. --config.data.scene_kwargs.p_move=1.0 can be set from the command line.
  c.data.scene_kwargs = ml_collections.ConfigDict(dict(camera_prob=0.5, p_move=0.5,
                                                        agent_prob=0.3))
  c.targets.kind = "motion_segments"
  c.targets.min_area = 8
  c.targets.min_overlap = 8
  c.batch_size = 8
  c.num_steps = 3000
  c.warmup_steps = 100
  c.log_every = 25
  c.checkpoint_every = 250
  c.eval_batch_size = 8
  c.dataset_path = str(ASSETS / "synth_eval128.h5")   # eval: the shipped held-out set
  c.checkpoint = str(ASSETS / "synth_eisen")          # eval: the shipped model
  # Segments are painted around the pixel each affinity cell's target was sampled at, not over
  # the stride x stride block below-right of it as the original's evaluation does ("nearest":
  # a 1.5 px shift at stride 4 that costs this model 0.04 mIoU; README: EISEN).
  c.segment_upsample = "cell_centred"
  if arg == "round2":                # fine-tunes the teacher's weights (README: round 2)
    c.targets.kind = "explain_away"
    c.targets.cache_batches = 32     # the teacher's targets for 256 scenes, computed once
    c.lr = 5e-5                      # re-warming to 5e-4 loses 0.2 mIoU (README)
    c.warmup_steps = 20
    c.num_steps = 400
    c.checkpoint_every = 200         # the teacher keeps the code's grouping (0.7, 32 masks)
  elif arg not in (None, "", "round1"):
    raise ValueError(f"unknown argument {arg!r} (round1 | round2)")
  else:
    # Grouping (eval) settings tuned on the seed-8 tuning set (README): KProp threshold 0.6
    # instead of the code's 0.7 and 64 Competition masks instead of 32 (+0.03 mIoU there).
    c.model.propagation_affinity_thresh = 0.6
    c.model.num_masks = 64
  return c
