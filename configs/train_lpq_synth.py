"""Train the LPQ tokenizers (rgb and flow autoencoders with LFQ) on the synthetic Spelke world.

Sized for CPU at 128 px: patch 4 -> a 32x32 code grid, decoded back to 128x128 by two Upsample
stages (the released layout, narrower); codebooks of 2**10 (rgb) and 2**12 (flow) codes, so the
transformer's vocabulary (lras_config.compact_layout) follows. One after the other:
    python -m spelke_jax.main --config=configs/train_lpq_synth.py:rgb --workdir=out/lpq_rgb
    python -m spelke_jax.main --config=configs/train_lpq_synth.py:flow --workdir=out/lpq_flow
Each writes <workdir>/export/{rgb|flow}_quantizer.pt (+ flow_table.npz for flow) and
<workdir>/metrics.json (held-out PSNR / EPE, code usage, pokes, zero flow); train the
transformer with them (configs/train_lras_synth.py). Re-evaluate / re-export a trained one:
    python -m spelke_jax.main --config=configs/train_lpq_synth.py:flow --config.mode=eval \
        --config.checkpoint=out/lpq_flow --workdir=out/lpq_flow_eval
A run restarted in the same workdir resumes from its last checkpoint.
"""
import ml_collections


def _blocks(width: int, enc_blocks: int, dec_blocks: tuple[int, int, int]):
  """Encoder: 1x1 ResBlocks at `width`; decoder: ResBlocks at width, width/2, width/4 with an
  Upsample between stages (32x32 codes -> 128x128)."""
  enc = tuple(("ResBlock", width, width, 2 * width, 1, 1, 0) for _ in range(enc_blocks))
  dec = []
  widths = (width, width // 2, width // 4)
  for i, (w, n) in enumerate(zip(widths, dec_blocks)):
    dec += [("ResBlock", w, w, 2 * w, 3, 1, 1)] * n
    if i < 2:
      dec.append(("Upsample", w, widths[i + 1]))
  return enc, tuple(dec)


def get_config(arg=None):
  kind = arg or "rgb"
  if kind not in ("rgb", "flow"):
    raise ValueError(f"unknown argument {arg!r} (rgb | flow)")
  c = ml_collections.ConfigDict()
  c.mode = "train"
  c.family = "lpq"
  c.kind = kind
  c.seed = 0
  channels = 3 if kind == "rgb" else 2
  enc, dec = _blocks(64, 2, (2, 1, 1))
  c.model = ml_collections.ConfigDict(dict(
      patch_size=4, vocab_size=2**10 if kind == "rgb" else 2**12, num_codebooks=1,
      num_in_channels=channels, num_out_channels=channels,
      encoder_blocks=enc, decoder_blocks=dec, dropout=0.1 if kind == "rgb" else 0.0))
  # vector-quantize-pytorch LFQ settings of the original (local_patch_quantizer/model.py).
  c.loss = ml_collections.ConfigDict(dict(
      entropy_loss_weight=0.001, commitment_loss_weight=0.0025, diversity_gamma=1.0,
      inv_temperature=100.0))
  c.data = ml_collections.ConfigDict(dict(
      seed=0, resolution=128, crop=64, crops_per_scene=2,
      scene_kwargs=ml_collections.ConfigDict(),
      eval_seed=9, num_eval=64,
      flow_aug=ml_collections.ConfigDict(dict(
          zero_prob=0.25, scale_prob=0.5, scale_min=0.5, scale_max=2.5, max_patches=6,
          patch_sizes=(4, 8, 8, 16), max_mag=28.0))))
  c.batch_size = 16
  c.num_steps = 1500
  c.lr = 2e-3
  c.final_lr_fraction = 0.05
  c.warmup_steps = 100
  c.weight_decay = 1e-4
  c.b1 = 0.9
  c.b2 = 0.99
  c.grad_clip = 1.0
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.sharding = "dp"
  c.log_every = 25
  c.checkpoint_every = 250
  c.keep_checkpoints = 2
  c.export = True                    # evaluate on held-out scenes and export at the end
  c.eval_batch_size = 32
  c.eval_poke_magnitudes = (5.0, 10.0, 15.0, 20.0, 25.0)
  c.checkpoint = ""                  # eval mode: the training workdir (default: --workdir)
  return c
