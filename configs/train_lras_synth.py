"""Train the flow-completion transformer (LRAS) on the synthetic Spelke world, sized for CPU.

On the shipped tokenizers (assets/synth_spelkenet; 96-px scenes; the shipped transformer is
step 700 of this run, `--config.stop_after=700`):
    python -m spelke_jax.main --config=configs/train_lras_synth.py --workdir=out/lras_synth
On tokenizers of your own (configs/train_lpq_synth.py:rgb and :flow):
    python -m spelke_jax.main --config=configs/train_lras_synth.py \
        --config.tokenizers.rgb=out/lpq_rgb/export/rgb_quantizer.pt \
        --config.tokenizers.flow=out/lpq_flow/export/flow_quantizer.pt \
        --config.tokenizers.flow_table=out/lpq_flow/export/flow_table.npz --workdir=out/lras_synth
Then evaluate the complete SpelkeNet it exports on the shipped held-out scenes (96 px):
    python -m spelke_jax.main --config=configs/spelkebench.py \
        --config.lras_checkpoint=out/lras_synth/export/lras.pt \
        --config.rgb_checkpoint=out/lras_synth/export/rgb_quantizer.pt \
        --config.flow_checkpoint=out/lras_synth/export/flow_quantizer.pt \
        --config.flow_table=out/lras_synth/export/flow_table.npz --workdir=out/lras_synth_bench
A run restarted in the same workdir resumes from its last checkpoint.
"""
from pathlib import Path

import ml_collections

SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "synth_spelkenet"


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.mode = "train"
  c.family = "lras"
  c.seed = 0
  c.model = ml_collections.ConfigDict(dict(n_layer=4, n_head=4, n_embd=128))
  c.tokenizers = ml_collections.ConfigDict(dict(          # .pt files or converted dirs
      rgb=str(SHIPPED / "rgb_quantizer"), flow=str(SHIPPED / "flow_quantizer"),
      flow_table=str(SHIPPED / "flow_table.npz")))
  c.data = ml_collections.ConfigDict(dict(
      resolution=96, seed=0,
      # synthetic.make_scene arguments (p_move, agent_prob: the generator's defaults)
      scene_kwargs=ml_collections.ConfigDict(dict(camera_prob=0.0, p_move=0.5, agent_prob=0.3))))
  c.probe_order_prob = 0.5           # flow order as probing asks (corners, a poke, the rest)
  c.frame0_loss_weight = 0.1         # weight of frame-0 code prediction vs flow codes (1.0)
  c.spatial_init = 0.03              # 2-D sin-cos place codes added to the initial embeddings
                                     # (train/lras_init.py; 0 = the original's init)
  c.restricted_softmax = True        # softmax over the target's own code range (train/lras.py)
  c.batch_size = 8
  c.num_steps = 6000                 # length of the learning-rate schedule
  c.stop_after = 0                   # > 0: stop, checkpoint and export after this many steps
  c.lr = 1e-3
  c.warmup_steps = 100
  c.weight_decay = 0.01
  c.grad_clip = 1.0
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.sharding = "dp"
  c.log_every = 10
  c.checkpoint_every = 100
  return c
