"""EISEN on Playroom (the original's TDW dataset and loader layout), the released settings.

    python -m spelke_jax.main --config=configs/eisen_playroom.py \
        --config.data.root=datasets/Playroom --workdir=out/eisen_playroom
    python -m spelke_jax.main --config=configs/eisen_playroom.py --config.mode=eval \
        --config.data.root=datasets/Playroom --config.checkpoint=out/eisen_playroom \
        --workdir=out/eisen_playroom_eval

Layout: <root>/{images,flows,segments}/model_split_<k>/<scene>/frame<t>.{png,npy,png} and
<root>/meta.json. Flows are precomputed RAFT flow (raft-sintel, 20 iterations) of frame 0 -> 1,
[2,H,W] .npy in pixels, as the original's dataset expects. 512 px input, ResNet-50 DeepLab,
batch 8, 200k steps, lr 5e-4 warmup-poly; the paper's variant: --config.model.hidden_dim=256
--config.model.propagation_iters=40 --config.model.propagation_affinity_thresh=0.5 --config.lr=0.005.
"""
from spelke_jax.train.eisen_configs import base


def get_config(arg=None):
  del arg
  c = base()
  c.data.source = "playroom"
  c.data.resolution = 512
  c.targets.kind = "motion"          # the public code's single-motion-source target
  return c
