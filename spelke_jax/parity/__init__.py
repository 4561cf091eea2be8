"""Parity with golden fixture packs of the original PyTorch code.

Each system maps to a function `run(pack) -> {output name: array}` that rebuilds the component
from the pack's manifest, converts its weights with our converter and feeds the recorded inputs.
`tools/check_parity.py` and the tests both go through `run_pack`.
"""
from __future__ import annotations

import importlib
from typing import Callable

from spelke_jax.parity.pack import Comparison, FixturePack, compare, load_pack  # noqa: F401

# system name -> "module:function"; later issues add their systems here.
SYSTEMS: dict[str, str] = {
    "lras": "spelke_jax.parity.lras:run",
    "lpq_rgb": "spelke_jax.parity.lpq:run",
    "lpq_flow": "spelke_jax.parity.lpq:run",
    "lras_sequence": "spelke_jax.parity.lras_sequence:run",
    "spelkenet_probe": "spelke_jax.parity.spelkenet_probe:run",
    "otsu": "spelke_jax.parity.otsu_metrics:run_otsu",
    "spelkebench_metrics": "spelke_jax.parity.otsu_metrics:run_metrics",
    "eisen_grouping": "spelke_jax.parity.eisen_grouping:run",
    "eisen_metrics": "spelke_jax.parity.eisen_metrics:run",
    "nsi": "spelke_jax.parity.nsi:run",
}


def runner(system: str) -> Callable[[FixturePack], dict]:
  if system not in SYSTEMS:
    raise KeyError(f"unknown fixture system {system!r}; known: {sorted(SYSTEMS)}")
  module, fn = SYSTEMS[system].split(":")
  return getattr(importlib.import_module(module), fn)


def run_pack(pack: FixturePack) -> list[Comparison]:
  """Runs the system of `pack` and compares every output the manifest names."""
  outputs = runner(pack.system)(pack)
  return [compare(name, pack[name], outputs.get(name), tol)
          for name, tol in pack.tolerances.items()]
