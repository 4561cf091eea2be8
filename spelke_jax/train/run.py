"""The `train` and `eval` modes: dispatch on config.family to that family's trainer module."""
from __future__ import annotations

from pathlib import Path

import ml_collections

from spelke_jax.models.registry import resolve

# family -> "module:run(config, workdir)"; run() handles both config.mode == 'train' and 'eval'.
FAMILIES = {
    "eisen": "spelke_jax.train.eisen:run",
    "lras": "spelke_jax.train.lras:run",
    "lpq": "spelke_jax.train.lpq:run",
    "nsi": "spelke_jax.train.nsi:run",
}


def run(config: ml_collections.ConfigDict, workdir: Path):
  family = config.get("family", None)
  if family not in FAMILIES:
    raise ValueError(f"unknown config.family {family!r}; known: {sorted(FAMILIES)}")
  return resolve(FAMILIES[family])(config, workdir)
