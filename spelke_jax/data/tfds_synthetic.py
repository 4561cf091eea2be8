"""TFDS builder `spelke_synthetic`: the synthetic Spelke world (spelke_jax.data.synthetic) as
array_record splits, generated on the fly (no download, no TensorFlow needed).

    python -m spelke_jax.data.tfds_synthetic --config=r128 --data_dir=~/tensorflow_datasets
or in Python:
    import spelke_jax.data.tfds_synthetic   # registers the builder
    src = tfds.data_source("spelke_synthetic/r128", split="train", data_dir=data_dir)
    ex = src[0]   # see FEATURES below; then spelke_jax.data.pipeline.make_dataset(...)

Configs `r64`, `r128`, `r256`: resolution R and split sizes (train / validation). Example i of a
split is `make_scene(scene_seed(config.seed, i, split))`: train and validation draw from their own
seed streams (2 and 3), disjoint from each other and from tools/make_synthetic.py's (stream 1),
so held-out .h5 sets never repeat a training scene. Shuffling is disabled (index i = scene i; the
pipeline shuffles). A custom size: `SpelkeSynthetic(config=SyntheticConfig(name=..., ...))`.

Features (K+1 <= max_ids ids per scene, padded):
  frame0, frame1  uint8 [R,R,3]       flow  float32 [R,R,2] (dx, dy) px, forward flow of frame 0
  instance_ids    int32 [R,R] frame 0 (0 background, agent included); instance_ids1: frame 1
  moved           bool [max_ids]      ids that moved on their own (camera excluded)
  points          int32 [max_ids,2]   (x, y) probe point of id k in row k; -1 for id 0 / padding
  num_ids, agent_id, dragged_id, index   int32 scalars (0 = no agent; index = scene number)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from spelke_jax.data import synthetic


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
  """resolution R px; num_train / num_validation scenes; seed of both streams; max_ids: padded
  id axis (>= max objects + 2); scene_kwargs: extra `make_scene` arguments."""
  resolution: int = 128
  num_train: int = 20_000
  num_validation: int = 500
  seed: int = 0
  max_ids: int = synthetic.MAX_IDS
  scene_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


class SpelkeSynthetic(tfds.core.GeneratorBasedBuilder):
  """Procedural two-frame scenes with exact flow, instance ids, moved ids and probe points."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version (spelke_jax.data.synthetic)."}
  BUILDER_CONFIGS = [
      SyntheticConfig(name="r64", resolution=64, num_train=20_000, num_validation=500,
                      description="64x64 scenes."),
      SyntheticConfig(name="r128", resolution=128, num_train=20_000, num_validation=500,
                      description="128x128 scenes."),
      SyntheticConfig(name="r256", resolution=256, num_train=10_000, num_validation=500,
                      description="256x256 scenes."),
  ]
  DEFAULT_CONFIG_NAME = "r128"

  # Nothing is downloaded; also keeps TFDS off `code_path` (see tfds_spelkebench: tfds 4.9.10
  # imports the `importlib_resources` backport there for builders defined in a package).
  @tfds.core.utils.classproperty
  @classmethod
  def url_infos(cls):
    return None

  def __init__(self, **kwargs):
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    r, m = cfg.resolution, cfg.max_ids
    zlib = tfds.features.Encoding.ZLIB
    t = tfds.features.Tensor
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Synthetic Spelke world: two frames, exact forward flow, instance ids, "
                     "moved ids, agent, probe points (spelke_jax.data.synthetic)."),
        features=tfds.features.FeaturesDict({
            "frame0": t(shape=(r, r, 3), dtype=np.uint8, encoding=zlib),
            "frame1": t(shape=(r, r, 3), dtype=np.uint8, encoding=zlib),
            "flow": t(shape=(r, r, 2), dtype=np.float32, encoding=zlib),
            "instance_ids": t(shape=(r, r), dtype=np.int32, encoding=zlib),
            "instance_ids1": t(shape=(r, r), dtype=np.int32, encoding=zlib),
            "moved": t(shape=(m,), dtype=np.bool_),
            "points": t(shape=(m, 2), dtype=np.int32),
            "num_ids": t(shape=(), dtype=np.int32),
            "agent_id": t(shape=(), dtype=np.int32),
            "dragged_id": t(shape=(), dtype=np.int32),
            "index": t(shape=(), dtype=np.int32),
        }),
        homepage="https://github.com/neuroailab/SpelkeNet",
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    return {"train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation)}

  def _generate_examples(self, split: str, num: int):
    cfg = self.builder_config
    for i in range(num):
      sc = synthetic.make_scene(synthetic.scene_seed(cfg.seed, i, split), cfg.resolution,
                                **cfg.scene_kwargs)
      feats = sc.features(cfg.max_ids)
      feats["index"] = np.int32(i)
      yield i, feats


def prepare(config: str | SyntheticConfig = "r128",
            data_dir: str | os.PathLike | None = None) -> SpelkeSynthetic:
  """Generates the splits of `config` (a name or a SyntheticConfig) into `data_dir`; returns the
  builder (`builder.as_data_source(split)`, or pass it to pipeline.make_dataset)."""
  b = SpelkeSynthetic(config=config, data_dir=None if data_dir is None else os.fspath(data_dir))
  b.download_and_prepare()
  return b


def _main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  cfg = next(c for c in SpelkeSynthetic.BUILDER_CONFIGS if c.name == f.config)
  if f.num_train is not None or f.num_validation is not None:
    n_tr, n_va = f.num_train or cfg.num_train, f.num_validation or cfg.num_validation
    cfg = dataclasses.replace(cfg, name=f"{cfg.name}_{n_tr}_{n_va}", num_train=n_tr,
                              num_validation=n_va)
  b = prepare(cfg, os.path.expanduser(f.data_dir))
  print(f"prepared {b.info.full_name} in {b.data_dir}: " +
        ", ".join(f"{k} {v.num_examples}" for k, v in b.info.splits.items()))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("config", "r128", ["r64", "r128", "r256"], "Builder config.")
  flags.DEFINE_integer("num_train", None, "Override the train size (config renamed).")
  flags.DEFINE_integer("num_validation", None, "Override the validation size (config renamed).")
  flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "TFDS data directory.")
  app.run(_main)
