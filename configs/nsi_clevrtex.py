"""Neural Slot Interpreters on CLEVRTex (or, by default, on a CLEVR-like stand-in, sized for CPU).

Default: the stand-in set (spelke_jax/data/nsi_standin.py, 64 px, 1024 / 128 / 256 scenes,
generated on first use into <workdir>/nsi_standin), a tiny randomly initialised frozen ViT
(no DINO weights needed: random patch features are enough for the stand-in), a few minutes on
CPU; prints Recall@1/5/10 on the stand-in's test split at the end:
    python -m spelke_jax.main --config=configs/nsi_clevrtex.py --workdir=out/nsi_standin
Evaluate a training workdir again (its best/ weights; or --config.eval_best=False for the last):
    python -m spelke_jax.main --config=configs/nsi_clevrtex.py --config.mode=eval \
        --config.checkpoint=out/nsi_standin --workdir=out/nsi_standin_eval
The original's recipe on real CLEVRTex (images.h5 + {split}_labels.npy from
datasets/build_clevrtex_dataset.py; ViT-B/8 DINO weights, e.g. timm's
vit_base_patch8_224.dino model.safetensors, converted on load):
    python -m spelke_jax.main --config=configs/nsi_clevrtex.py:clevrtex \
        --config.dataset_path=datasets/clevrtex --config.vit_checkpoint=dino_vitb8.safetensors \
        --workdir=out/nsi_clevrtex
Evaluate the original's best_model.pt (converted on load) on the CLEVRTex test split:
    python -m spelke_jax.main --config=configs/nsi_clevrtex.py:clevrtex --config.mode=eval \
        --config.dataset_path=datasets/clevrtex --config.init_checkpoint=best_model.pt \
        --workdir=out/nsi_clevrtex_eval
A run restarted in the same workdir resumes from its last epoch checkpoint.
"""
import ml_collections


def _standin_model():
  return dict(
      vit=dict(img_size=64, patch_size=8, embed_dim=96, depth=1, num_heads=4, mlp_ratio=2.0,
               resize_size=64, crop_size=64),
      num_iterations=3, num_slots=6, num_slot_heads=1, slot_dim=64, mlp_hidden_size=64,
      embed_dim=32, dropout=0.1, decoder_hidden=128, decoder_layers=3,
      program_blocks=2, program_d_model=64, program_heads=4, program_dropout=0.1,
      num_sizes=3, num_shapes=4, num_materials=8, max_program_len=10, tau=0.1, beta=1.0)


def _clevrtex_model():
  # The notebook's trained model: 11 slots, 3 iterations; the rest train_nsi.py's defaults.
  return dict(
      vit=dict(img_size=224, patch_size=8, embed_dim=768, depth=12, num_heads=12,
               resize_size=224, crop_size=224),
      num_iterations=3, num_slots=11, num_slot_heads=1, slot_dim=192, mlp_hidden_size=192,
      embed_dim=64, dropout=0.1, decoder_hidden=1024, decoder_layers=3,
      program_blocks=8, program_d_model=192, program_heads=8, program_dropout=0.1,
      num_sizes=3, num_shapes=4, num_materials=60, max_program_len=10, tau=0.1, beta=1.0)


def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.mode = "train"
  c.family = "nsi"
  c.seed = 0
  c.dataset_path = ""                 # a CLEVRTex directory; empty = the stand-in
  c.standin = ml_collections.ConfigDict(dict(
      dir="", seed=0, resolution=64, num_train=1024, num_val=128, num_test=256,
      num_materials=8, min_objects=2, max_objects=5))
  c.vit_checkpoint = ""               # timm / DINO ViT state dict (.pt / .safetensors / .npz)
  c.init_checkpoint = ""              # an original best_model.pt to start from / evaluate
  c.checkpoint = ""                   # eval: a training workdir
  c.model = ml_collections.ConfigDict(_standin_model())
  c.batch_size = 32
  c.num_epochs = 30
  c.lr = 4e-4
  c.warmup_steps = 50
  c.patience = 4                      # epochs without a better val loss before halving the lr
  c.lr_decay = 0.5
  c.grad_clip = 1.0                   # image side only
  c.mesh = ml_collections.ConfigDict({"data": -1})
  c.sharding = "dp"
  c.log_every = 16
  c.keep_checkpoints = 2
  c.eval_split = "test"               # retrieval after training ('' to skip)
  c.eval_best = True                  # evaluate the best-val-loss weights (else the last)
  c.eval_batch_size = 64
  c.num_figures = 8                   # images in slot_masks.png
  if arg == "clevrtex":
    c.model = ml_collections.ConfigDict(_clevrtex_model())
    c.batch_size = 128
    c.num_epochs = 300
    c.warmup_steps = 10000
    c.log_every = 50
    c.eval_batch_size = 128
  elif arg not in (None, "", "standin"):
    raise ValueError(f"unknown argument {arg!r} (standin | clevrtex)")
  return c
