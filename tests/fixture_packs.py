"""Pytest helpers for golden fixture packs (../shared/fixtures)."""
from __future__ import annotations

import pytest

from spelke_jax import parity
from spelke_jax.parity.pack import default_fixtures_dir, find_packs


def pack_params(*systems: str):
  """pytest params: one per pack of `systems`; a single skipped param when none are present."""
  root = default_fixtures_dir()
  if not root.exists():
    return [pytest.param(None, marks=pytest.mark.skip(
        reason=f"fixtures folder {root} is absent (CI has ../shared beside the checkout)"))]
  packs = find_packs(systems, root)
  if not packs:
    return [pytest.param(None, marks=pytest.mark.skip(reason=f"no {systems} pack in {root}"))]
  return [pytest.param(p, id=p.name) for p in packs]


def assert_pack_passes(path) -> None:
  results = parity.run_pack(parity.load_pack(path))
  failed = [r.line() for r in results if not r.ok]
  assert not failed, "outputs out of tolerance:\n" + "\n".join(failed)
