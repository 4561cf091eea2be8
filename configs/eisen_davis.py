"""EISEN on DAVIS-style video folders (frames + precomputed flow + optional GT annotations).

    python -m spelke_jax.main --config=configs/eisen_davis.py --config.data.root=datasets/DAVIS \
        --workdir=out/eisen_davis

Layout: <root>/JPEGImages/480p/<video>/<frame>.jpg, <root>/Flows/<video>/<frame>.npy (precomputed
RAFT forward flow in pixels, [H,W,2] or [2,H,W]), <root>/Annotations/480p/<video>/<frame>.png.
Paper targets (motion segments); evaluation with --config.mode=eval as in eisen_playroom.py.
"""
from spelke_jax.train.eisen_configs import base


def get_config(arg=None):
  del arg
  c = base()
  c.data.source = "folders"
  c.data.resolution = 512
  c.targets.kind = "motion_segments"
  return c
