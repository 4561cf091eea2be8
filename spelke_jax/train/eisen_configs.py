"""Shared defaults of the EISEN config files (configs/eisen_*.py)."""
from __future__ import annotations

import ml_collections


def base(mode: str = "train") -> ml_collections.ConfigDict:
  """The original's training recipe (HEAD of neuroailab/EISEN) and eval settings."""
  c = ml_collections.ConfigDict()
  c.mode = mode                      # train | eval
  c.family = "eisen"
  c.seed = 1
  c.model = ml_collections.ConfigDict(dict(
      backbone="resnet50_deeplab", kq_dim=32, local_window_size=25, num_affinity_samples=1024,
      propagation_iters=25, propagation_affinity_thresh=0.7, hidden_dim=32, num_masks=32,
      num_competition_rounds=3, min_cc_area=20, supervision_level=3))
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic", root="", frames_dir="JPEGImages/480p", flow_dir="Flows",
      gt_dir="Annotations/480p", train_path="", eval_path="", resolution=512, seed=0,
      scene_kwargs={}))
  c.targets = ml_collections.ConfigDict(dict(
      kind="motion", flow_threshold=0.5, flow_grid=(8, 8), num_masks=32, rounds=3,
      min_area=20, teacher_runs=5,
      min_overlap=20,                # explaining away: pixels a confident part needs (= min_area)
      rigid_merge_tol=0.0,           # > 0: merge adjacent motion segments one affine flow fits
                                     # within this RMS px (ours, not the paper's; 0 = off)
      cache_batches=0))              # > 0: precompute the targets of that many batches once
                                     # and cycle over them (train/eisen_target_cache.py)
  c.teacher = ""                     # a round-1 training workdir, for targets.kind=explain_away
  c.init_from = ""                   # weights to start from (a workdir or a converted export);
                                     # "" = random init, or the teacher's for explain_away
  c.batch_size = 8
  c.num_steps = 200_000
  c.lr = 5e-4                        # the code's value (the paper states 0.005)
  c.warmup_steps = 1000
  c.warmup_factor = 0.001
  c.lr_power = 0.9
  c.grad_clip = 1.0
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.sharding = "dp"
  c.log_every = 50
  c.checkpoint_every = 5000
  c.keep_checkpoints = 3
  c.eval_every = 0                   # 0 = only at the end (eval mode)
  c.eval_images = 0                  # 0 = all
  c.eval_batch_size = 1              # the original evaluates one image at a time
  c.segment_upsample = "nearest"     # eval: segments to the GT size as the original (torch
                                     # 'nearest', shifts them (stride-1)/2 px) | "cell_centred"
                                     # (evals/matched_miou.py upsample_cell_centred)
  c.dataset_path = ""                # eval: a synthetic / SpelkeBench-style h5 with GT
  c.checkpoint = ""                  # eval: the training workdir to load
  c.write_figures = True
  return c
