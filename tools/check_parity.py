"""Checks a golden fixture pack against spelke_jax.

    python tools/check_parity.py --fixture=../shared/fixtures/lras
    python tools/check_parity.py --fixture=../shared/fixtures     # every pack in the folder

Prints one line per output (name, max abs error, tolerance, PASS/FAIL) and a summary line per
pack; exits non-zero on any failure, on a missing output, or on a system it does not know.
"""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

from absl import app, flags

_FIXTURE = flags.DEFINE_string("fixture", None, "A pack directory, or a folder of packs.",
                               required=True)
_SYSTEMS = flags.DEFINE_list("systems", None, "Only packs of these systems (when --fixture is a "
                             "folder of packs).")


def _packs(root: Path) -> list[Path]:
  if (root / "manifest.json").exists():
    return [root]
  packs = sorted(p.parent for p in root.glob("*/manifest.json"))
  if not packs:
    raise FileNotFoundError(f"{root} is neither a fixture pack nor a folder of packs")
  return packs


def check(path: Path, systems: list[str] | None) -> bool | None:
  from spelke_jax import parity  # pylint: disable=g-import-not-at-top
  pack = parity.load_pack(path)
  if systems and pack.system not in systems:
    return None
  print(f"== {path} (system {pack.system})")
  try:
    results = parity.run_pack(pack)
  except KeyError as e:
    print(f"FAIL: {e}")
    return False
  except Exception:  # report and keep going with the other packs
    traceback.print_exc()
    print(f"FAIL: {pack.system} raised")
    return False
  for r in results:
    print(r.line())
  failed = [r.name for r in results if not r.ok]
  summary = "PASS" if not failed else f"FAIL ({len(failed)}: {', '.join(failed)})"
  print(f"summary {path.name} [{pack.system}]: {len(results) - len(failed)}/{len(results)} "
        f"outputs within tolerance: {summary}")
  return not failed


def main(argv):
  del argv
  from spelke_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  outcomes = [check(p, _SYSTEMS.value) for p in _packs(Path(_FIXTURE.value))]
  ran = [o for o in outcomes if o is not None]
  if not ran:
    print("no pack matched")
    sys.exit(1)
  print(f"overall: {sum(ran)}/{len(ran)} packs pass")
  sys.exit(0 if all(ran) else 1)


if __name__ == "__main__":
  app.run(main)
