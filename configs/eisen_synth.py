"""EISEN on the synthetic Spelke world, sized for CPU (small ResNet-DeepLab, 64 px scenes).

Train (targets from flow only; `:round2` bootstraps with explaining away from a round-1 run):
    python -m spelke_jax.main --config=configs/eisen_synth.py --workdir=out/eisen_synth
    python -m spelke_jax.main --config=configs/eisen_synth.py:round2 \
        --config.teacher=out/eisen_synth --workdir=out/eisen_synth_round2
Evaluate (matched mIoU on held-out synthetic scenes: make them with tools/make_synthetic.py):
    python tools/make_synthetic.py --seed=7 --num=100 --resolution=64 --out=out/synth_eval.h5
    python -m spelke_jax.main --config=configs/eisen_synth.py --config.mode=eval \
        --config.checkpoint=out/eisen_synth --config.dataset_path=out/synth_eval.h5 \
        --workdir=out/eisen_synth_eval
A run restarted in the same workdir resumes from its last checkpoint.
"""
from spelke_jax.train.eisen_configs import base


def get_config(arg=None):
  c = base()
  c.model.backbone = "small"
  c.model.local_window_size = 7
  c.model.num_affinity_samples = 128
  c.model.min_cc_area = 4
  c.data.source = "synthetic"
  c.data.resolution = 64
  c.data.seed = 0                    # training scenes; evaluate on other seeds
  c.targets.kind = "motion_segments"
  c.targets.min_area = 4
  c.batch_size = 8
  c.num_steps = 2000
  c.warmup_steps = 100
  c.log_every = 10
  c.checkpoint_every = 200
  c.eval_batch_size = 8
  if arg == "round2":
    c.targets.kind = "explain_away"
    c.targets.cache_batches = 64     # the teacher's targets for 512 scenes, computed once
  elif arg not in (None, "", "round1"):
    raise ValueError(f"unknown argument {arg!r} (round1 | round2)")
  return c
