"""Loads a config file of configs/ by path, as `--config=configs/X.py[:arg]` does.

    config = load("configs/eisen_synth.py:round2")
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import ml_collections

ROOT = Path(__file__).resolve().parents[1]


def load(spec: str | os.PathLike) -> ml_collections.ConfigDict:
  """`path[:arg]` (relative paths resolve against the repository root) -> get_config(arg)."""
  path, _, arg = str(spec).partition(":")
  file = Path(path) if Path(path).is_absolute() else ROOT / path
  if not file.is_file():
    raise FileNotFoundError(f"no config file {file}")
  module_spec = importlib.util.spec_from_file_location(f"_config_{file.stem}", file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)
