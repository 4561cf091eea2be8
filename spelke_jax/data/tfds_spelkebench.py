"""TFDS builder `spelkebench` over the SpelkeBench .h5 (no TensorFlow needed: array_record).

Prepare once (the h5 path comes from `h5_path=`, else the SPELKEBENCH_H5 environment variable):
    python -m spelke_jax.data.tfds_spelkebench --h5=datasets/spelke_bench.h5 \
        --data_dir=~/tensorflow_datasets
or in Python: `prepare("datasets/spelke_bench.h5", data_dir)`. Then read it (random access, grain):
    import spelke_jax.data.tfds_spelkebench  # registers the builder
    src = tfds.data_source("spelkebench", split="test", data_dir=data_dir)
    ex = src[0]   # {"key": bytes, "image": uint8 [256,256,3], "segments": uint8 [N,256,256],
                  #  "points": int32 [N,2] (x, y)}
One split, `test`, in sorted key order (shuffling disabled: index i = i-th sorted key).
The default file format is array_record (tfrecord would need TensorFlow to write).
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from spelke_jax.data.spelkebench import SpelkeBenchReader

ENV_VAR = "SPELKEBENCH_H5"
SIZE = 256


class Spelkebench(tfds.core.GeneratorBasedBuilder):
  """SpelkeBench (SpelkeNet, arXiv 2507.16038): images, GT Spelke segments, one probe point each."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From the SpelkeBench .h5 (rgb / segment / centroid per group)."}

  # Nothing is downloaded. Also keeps TFDS off `code_path`, which (tfds 4.9.10) imports the
  # `importlib_resources` backport for builders defined in a package, a package that tfds only
  # requires on Python < 3.9.
  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    return None

  def __init__(self, *, h5_path: str | os.PathLike | None = None, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    self._h5_path = None if h5_path is None else os.fspath(h5_path)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    zlib = tfds.features.Encoding.ZLIB
    return tfds.core.DatasetInfo(
        builder=self,
        description=("SpelkeBench: 256x256 images with ground-truth Spelke segments and one "
                     "safe probe point (x, y) per segment."),
        features=tfds.features.FeaturesDict({
            "key": tfds.features.Text(),
            "image": tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8, encoding=zlib),
            "segments": tfds.features.Tensor(shape=(None, SIZE, SIZE), dtype=np.uint8,
                                             encoding=zlib),
            "points": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
        }),
        homepage="https://github.com/neuroailab/SpelkeNet",
        disable_shuffling=True,   # keep the generation order (sorted keys), not TFDS's hash order
    )

  def h5_path(self) -> str:
    path = self._h5_path or os.environ.get(ENV_VAR)
    if not path:
      raise ValueError(f"spelkebench: no .h5 given; pass h5_path= to the builder (or "
                       f"builder_kwargs={{'h5_path': ...}}) or set ${ENV_VAR}")
    return path

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"test": self._generate_examples(self.h5_path())}

  def _generate_examples(self, path):
    with SpelkeBenchReader(path) as reader:
      for key in reader.keys():
        ex = reader[key]
        if ex.image.shape != (SIZE, SIZE, 3):
          raise ValueError(f"{path}: group {key!r}: image is {ex.image.shape}, the spelkebench "
                           f"builder expects ({SIZE}, {SIZE}, 3)")
        yield key, {"key": key, "image": ex.image, "segments": ex.segments.astype(np.uint8),
                    "points": ex.points.astype(np.int32)}


def prepare(h5_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Spelkebench:
  """Builds the array_record dataset from `h5_path` into `data_dir`; returns the builder."""
  builder = Spelkebench(h5_path=h5_path, data_dir=None if data_dir is None else os.fspath(data_dir))
  builder.download_and_prepare()
  return builder


def _main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  b = prepare(flags.FLAGS.h5, os.path.expanduser(flags.FLAGS.data_dir))
  print(f"prepared {b.info.full_name} in {b.data_dir}: {b.info.splits['test'].num_examples} "
        "examples")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string("h5", os.environ.get(ENV_VAR), "SpelkeBench .h5 file.")
  flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")
  app.run(_main)
