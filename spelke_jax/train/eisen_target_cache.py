"""Precomputed training targets for EISEN bootstrapping rounds (a frozen teacher, a fixed pool).

Explaining-away targets need five KProp + Competition runs of the frozen teacher and one more on
its meta-affinities per batch: seconds per image on CPU, far more than the train step. The teacher
is frozen, so a round's targets are a function of the scene (and the target randomness) only;
with `config.targets.cache_batches = K > 0` the trainer computes the targets of the first K
training batches once and then cycles over them (batch `step % K`):

    <workdir>/target_cache/00000.npz ... {image uint8 [B,H,W,3], target int32 [B,h,w]}

Each batch is written under a temporary name and renamed, so a killed run resumes the cache
where it stopped and never reads a half-written file. The cache is tied to the run: remove the
folder when the teacher, the data or the target settings change (its manifest.json is checked
against them and a mismatch is an error).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging


def _manifest(config) -> dict[str, Any]:
  return {"teacher": str(config.teacher), "batch_size": int(config.batch_size),
          "data": config.data.to_dict(), "targets": config.targets.to_dict(),
          "seed": int(config.seed)}


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
  path = folder / "manifest.json"
  want = json.loads(json.dumps(manifest))
  if path.exists():
    have = json.loads(path.read_text())
    if have != want:
      raise ValueError(f"{folder} holds targets for other settings ({path}); remove the folder "
                       "to rebuild it")
    return
  folder.mkdir(parents=True, exist_ok=True)
  tmp = folder / f".manifest.json.tmp-{os.getpid()}"
  tmp.write_text(json.dumps(want, indent=2))
  os.replace(tmp, path)


def build(config, workdir: Path, batches: Iterator[dict], targets_fn: Callable,
          rng: jax.Array) -> Path:  # pylint: disable=too-many-locals
  """Fills <workdir>/target_cache with `config.targets.cache_batches` batches (skipping those
  already there). batches: host batches {'image', 'flow'}; targets_fn(batch, key) -> [B,h,w]."""
  folder = workdir / "target_cache"
  if jax.process_count() > 1:  # each host caches its own share of the batch
    folder = folder / f"process_{jax.process_index()}"
  _check_manifest(folder, _manifest(config))
  total = int(config.targets.cache_batches)
  t0, done = time.time(), 0
  for i in range(total):
    batch = next(batches)
    path = folder / f"{i:05d}.npz"
    if path.exists():
      continue
    target = np.asarray(targets_fn(batch, jax.random.fold_in(rng, i)), np.int32)
    tmp = folder / f".{i:05d}.tmp-{os.getpid()}.npz"
    np.savez(tmp, image=np.asarray(batch["image"], np.uint8), target=target)
    os.replace(tmp, path)
    done += 1
    rate = (time.time() - t0) / done
    logging.info("target cache %d/%d batches (%.1f s/batch, ETA %.0f s)", i + 1, total, rate,
                 rate * (total - i - 1))
  return folder


def cycle(folder: Path, num_batches: int, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(image uint8 [B,H,W,3], target int32 [B,h,w]) of batch step % num_batches, from start_step."""
  step = start_step
  while True:
    i = step % num_batches
    path = folder / f"{i:05d}.npz"
    if not path.exists():
      raise FileNotFoundError(f"target cache batch {path} is missing; rebuild the cache")
    with np.load(path) as z:
      yield z["image"], z["target"]
    step += 1
