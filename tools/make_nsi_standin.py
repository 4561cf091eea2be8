"""Writes the CLEVR-like NSI stand-in set (spelke_jax/data/nsi_standin.py) in the CLEVRTex layout.

    python tools/make_nsi_standin.py --out=out/nsi_standin --seed=0 --resolution=64
    python -m spelke_jax.main --config=configs/nsi_clevrtex.py \
        --config.dataset_path=out/nsi_standin --workdir=out/nsi
"""
from absl import app, flags

from spelke_jax.data import nsi_standin

_OUT = flags.DEFINE_string("out", None, "Output directory (replaced).", required=True)
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed.")
_RES = flags.DEFINE_integer("resolution", 64, "Image side, px.")
_TRAIN = flags.DEFINE_integer("num_train", 1024, "Training scenes.")
_VAL = flags.DEFINE_integer("num_val", 128, "Validation scenes.")
_TEST = flags.DEFINE_integer("num_test", 256, "Test scenes.")
_MATS = flags.DEFINE_integer("num_materials", 8, "Material (texture) vocabulary size.")


def main(argv):
  del argv
  root = nsi_standin.write_standin(_OUT.value, seed=_SEED.value, resolution=_RES.value,
                                   num_train=_TRAIN.value, num_val=_VAL.value,
                                   num_test=_TEST.value, num_materials=_MATS.value)
  print(f"wrote {root}")


if __name__ == "__main__":
  app.run(main)
