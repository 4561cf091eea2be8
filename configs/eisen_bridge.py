"""EISEN on Bridge-style robot videos (an arm moves objects: explaining away matters here).

    python -m spelke_jax.main --config=configs/eisen_bridge.py --config.data.root=datasets/bridge \
        --workdir=out/eisen_bridge
    python -m spelke_jax.main --config=configs/eisen_bridge.py:round2 \
        --config.data.root=datasets/bridge --config.teacher=out/eisen_bridge \
        --workdir=out/eisen_bridge_round2

Layout: <root>/<trajectory>/images0/im_<t>.jpg frames and <root>/Flows/<trajectory>/images0/
im_<t>.npy precomputed RAFT flow (pixels); no GT needed for training.
"""
from spelke_jax.train.eisen_configs import base


def get_config(arg=None):
  c = base()
  c.data.source = "folders"
  c.data.frames_dir = "*/images0"
  c.data.gt_dir = ""
  c.data.resolution = 512
  c.targets.kind = "explain_away" if arg == "round2" else "motion_segments"
  return c
