"""Input pipelines for training (EISEN, LRAS): grain over a prepared TFDS dataset, or scenes
generated on the fly.

    from spelke_jax.data import pipeline, tfds_synthetic
    b = tfds_synthetic.prepare("r64", data_dir)          # once
    it = pipeline.make_dataset(b, "train", batch_size=32, seed=0)
    batch = next(it)   # dict of numpy arrays with a leading [batch_size] axis

Sharding: every process reads a disjoint shard of the record indices (grain.ShardByJaxProcess,
i.e. jax.process_index() / jax.process_count(), unless process_index / process_count are given),
drops the remainder so all hosts see the same number of records, shuffles its shard per epoch
with `seed` (deterministic: same seed and shard, same order) and batches with drop_remainder.
The returned grain iterator has get_state() / set_state() for checkpointing.

`make_synthetic_stream` needs no TFDS: it renders scenes (spelke_jax.data.synthetic) as it goes,
in the layout of the `spelke_synthetic` features.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Sequence

import grain.python as grain
import numpy as np

from spelke_jax.data import synthetic


def _source(builder_or_dir: Any, split: str):
  """A random-access source: a TFDS builder's split, a prepared dataset directory
  (`.../spelke_synthetic/r64/1.0.0`), or any object with __len__ and __getitem__."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if isinstance(builder_or_dir, tfds.core.DatasetBuilder):
    return builder_or_dir.as_data_source(split=split)
  if isinstance(builder_or_dir, (str, os.PathLike)):
    path = os.path.expanduser(os.fspath(builder_or_dir))
    if not os.path.isdir(path):
      raise FileNotFoundError(f"{path}: not a prepared TFDS dataset directory")
    return tfds.builder_from_directory(path).as_data_source(split=split)
  if hasattr(builder_or_dir, "__len__") and hasattr(builder_or_dir, "__getitem__"):
    return builder_or_dir
  raise TypeError(f"expected a TFDS builder, a dataset directory or a random-access source, got "
                  f"{type(builder_or_dir).__name__}")


def _to_numpy(ex: dict) -> dict:
  """Python scalars (TFDS returns ints for scalar features) -> int32 / float32 numpy scalars."""
  out = {}
  for k, v in ex.items():
    if isinstance(v, (bool, np.bool_)):
      out[k] = np.bool_(v)
    elif isinstance(v, int):
      out[k] = np.int32(v)
    elif isinstance(v, float):
      out[k] = np.float32(v)
    else:
      out[k] = v
  return out


def make_dataset(builder_or_dir: Any, split: str, *, batch_size: int, seed: int,
                 shuffle: bool = True, num_epochs: int | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 map_fn: Callable[[dict], dict] | None = None, worker_count: int = 0,
                 drop_remainder: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Per-host batches of `split`: dicts of numpy arrays [batch_size, ...] (features as stored,
  Python scalars as int32 / float32).

  builder_or_dir: a TFDS builder, its prepared directory, or a random-access source.
  batch_size: per host. seed: the shuffle seed (0 <= seed < 2**32). num_epochs: None = forever.
  process_index / process_count: this host's shard; None = from JAX (grain.ShardByJaxProcess).
  map_fn: applied to every example before batching (augmentation, feature selection).
  worker_count: grain worker processes (0 = in this process; > 0 needs parsed absl flags, i.e.
  a program run under absl.app, and changes the batch order: grain interleaves the workers).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  src = _source(builder_or_dir, split)
  if (process_index is None) != (process_count is None):
    raise ValueError("give both process_index and process_count, or neither")
  if process_index is None:
    shard = grain.ShardByJaxProcess(drop_remainder=True)
  else:
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
    shard = grain.ShardOptions(shard_index=process_index, shard_count=process_count,
                               drop_remainder=True)
  if len(src) < shard.shard_count:
    raise ValueError(f"split {split!r} has {len(src)} records, fewer than the "
                     f"{shard.shard_count} shards")
  sampler = grain.IndexSampler(num_records=len(src), shard_options=shard, shuffle=shuffle,
                               num_epochs=num_epochs, seed=int(seed))
  ops: list[Any] = [_MapFn(_to_numpy)]
  if map_fn is not None:
    ops.append(_MapFn(map_fn))
  ops.append(grain.Batch(batch_size=batch_size, drop_remainder=drop_remainder))
  loader = grain.DataLoader(data_source=src, sampler=sampler, operations=ops,
                            worker_count=worker_count)
  return iter(loader)


class _MapFn(grain.MapTransform):
  """A grain map of a plain function (module-level so that it pickles for worker processes)."""

  def __init__(self, fn: Callable[[dict], dict]):
    self.fn = fn

  def map(self, element):
    return self.fn(element)


def make_synthetic_stream(seed: int, resolution: int, batch_size: int, *, start: int = 0,
                          num_batches: int | None = None, process_index: int = 0,
                          process_count: int = 1, max_ids: int = synthetic.MAX_IDS,
                          stream: str = "file", **scene_kwargs) -> Iterator[dict[str, np.ndarray]]:
  """Batches rendered on the fly (no TFDS), with the `spelke_synthetic` features plus `index`.

  This host renders scenes i = start + process_index + process_count * t, t = 0, 1, ... (disjoint
  across hosts), scene i being `make_scene(scene_seed(seed, i, stream), resolution,
  **scene_kwargs)`: with the default stream "file" the same scenes as
  `tools/make_synthetic.py --seed=seed`. num_batches: None = forever.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  t = 0
  b = 0
  while num_batches is None or b < num_batches:
    exs = []
    for _ in range(batch_size):
      i = start + process_index + process_count * t
      t += 1
      sc = synthetic.make_scene(synthetic.scene_seed(seed, i, stream), resolution,
                                **scene_kwargs)
      f = sc.features(max_ids)
      f["index"] = np.int32(i)
      exs.append(f)
    yield stack(exs)
    b += 1


def stack(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stacks per-example feature dicts into a batch dict (leading axis)."""
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}
