"""Golden fixture packs made by the original PyTorch code (../shared/fixtures/<name>/).

A pack is `manifest.json` (system, config, tolerances), `golden.npz` (inputs and expected
outputs) and optional weight files. Everything is built from the manifest, never from the
shipped shapes.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def default_fixtures_dir() -> Path:
  """`$SPELKE_FIXTURES` or `../shared/fixtures` next to the checkout."""
  env = os.environ.get("SPELKE_FIXTURES")
  if env:
    return Path(env)
  return Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"


@dataclasses.dataclass(frozen=True)
class Tolerance:
  atol: float
  rtol: float
  max_mismatch_frac: float = 0.0


@dataclasses.dataclass
class FixturePack:
  """One pack: `arrays` holds every array of golden.npz (loaded without pickle)."""
  path: Path
  manifest: dict[str, Any]
  arrays: Mapping[str, np.ndarray]

  @property
  def system(self) -> str:
    return self.manifest["system"]

  @property
  def config(self) -> dict[str, Any]:
    return self.manifest.get("config", {})

  @property
  def tolerances(self) -> dict[str, Tolerance]:
    return {name: Tolerance(float(t.get("atol", 0.0)), float(t.get("rtol", 0.0)),
                            float(t.get("max_mismatch_frac", 0.0)))
            for name, t in self.manifest.get("outputs", {}).items()}

  def file(self, name: str) -> Path:
    """Path of a file shipped in the pack (e.g. 'model.pt'); clear error when missing."""
    p = self.path / name
    if not p.exists():
      raise FileNotFoundError(f"fixture pack {self.path} has no file {name!r}")
    return p

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self.arrays:
      raise KeyError(f"fixture pack {self.path} has no array {key!r}")
    return self.arrays[key]


def load_pack(path: str | os.PathLike) -> FixturePack:
  path = Path(path)
  manifest_path = path / "manifest.json"
  if not manifest_path.exists():
    raise FileNotFoundError(f"{path} is not a fixture pack: no manifest.json")
  manifest = json.loads(manifest_path.read_text())
  if "system" not in manifest:
    raise ValueError(f"{manifest_path} names no 'system'")
  arrays_name = manifest.get("arrays", "golden.npz")
  with np.load(path / arrays_name, allow_pickle=False) as z:
    arrays = {k: z[k] for k in z.files}
  return FixturePack(path=path, manifest=manifest, arrays=arrays)


@dataclasses.dataclass(frozen=True)
class Comparison:
  name: str
  ok: bool
  max_abs_err: float
  tolerance: Tolerance
  detail: str = ""

  def line(self) -> str:
    tol = f"atol={self.tolerance.atol:g} rtol={self.tolerance.rtol:g}"
    if self.tolerance.max_mismatch_frac:
      tol += f" max_mismatch_frac={self.tolerance.max_mismatch_frac:g}"
    status = "PASS" if self.ok else "FAIL"
    extra = f"  ({self.detail})" if self.detail else ""
    return f"{self.name:40s} max_abs_err={self.max_abs_err:.3e}  {tol:40s} {status}{extra}"


def compare(name: str, expected: np.ndarray, actual: Any, tol: Tolerance) -> Comparison:
  """Elementwise |a - e| <= atol + rtol*|e| (NaNs must match), allowing a mismatch fraction."""
  if actual is None:
    return Comparison(name, False, float("inf"), tol, "missing output")
  expected = np.asarray(expected)
  actual = np.asarray(actual)
  if expected.shape != actual.shape:
    return Comparison(name, False, float("inf"), tol,
                      f"shape {actual.shape} != expected {expected.shape}")
  if expected.dtype == bool or actual.dtype == bool:
    expected, actual = expected.astype(np.int64), actual.astype(np.int64)
  e = expected.astype(np.float64)
  a = actual.astype(np.float64)
  both_nan = np.isnan(e) & np.isnan(a)
  diff = np.where(both_nan, 0.0, np.abs(a - e))
  diff = np.where(np.isnan(diff), np.inf, diff)
  bad = diff > tol.atol + tol.rtol * np.abs(np.nan_to_num(e))
  max_err = float(diff.max()) if diff.size else 0.0
  frac = float(bad.mean()) if bad.size else 0.0
  ok = frac <= tol.max_mismatch_frac
  detail = f"{frac:.2%} out of tolerance" if bad.any() else ""
  return Comparison(name, ok, max_err, tol, detail)


def find_packs(systems: str | tuple[str, ...], root: str | os.PathLike | None = None) -> list[Path]:
  """Pack directories under `root` (default: the fixtures dir) whose system is in `systems`."""
  systems = (systems,) if isinstance(systems, str) else tuple(systems)
  root = Path(root) if root is not None else default_fixtures_dir()
  found = []
  for manifest in sorted(root.glob("*/manifest.json")):
    try:
      system = json.loads(manifest.read_text()).get("system")
    except json.JSONDecodeError:
      continue
    if system in systems:
      found.append(manifest.parent)
  return found
