"""Paired comparison of two evaluations of the same images (EISEN eval or SpelkeBench
metrics.json): per-image differences B - A with a bootstrap confidence interval.

    python tools/compare_evals.py --a=out/eisen_round1_eval/metrics.json \
        --b=out/eisen_round2_eval/metrics.json --fields=mIoU,dragged_IoU --out=out/round2_vs_round1.json

Prints one line per field; --out also writes them as JSON (written to a temporary name, then
renamed).
"""
from __future__ import annotations

import json
from pathlib import Path

from absl import app, flags

from spelke_jax.evals import paired
from spelke_jax.evals.viz import save_text

_A = flags.DEFINE_string("a", None, "metrics.json of evaluation A (the baseline).", required=True)
_B = flags.DEFINE_string("b", None, "metrics.json of evaluation B.", required=True)
_FIELDS = flags.DEFINE_list("fields", ["mIoU"], "Per-image fields to compare.")
_BOOT = flags.DEFINE_integer("num_bootstrap", 10000, "Bootstrap resamples of the images.")
_OUT = flags.DEFINE_string("out", "", "Optional JSON output path.")


def read_rows(path: str) -> list[dict]:
  p = Path(path)
  if not p.is_file():
    raise FileNotFoundError(f"metrics file not found: {p}")
  try:
    m = json.loads(p.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{p} is not valid JSON: {e}") from e
  if not isinstance(m, dict) or not isinstance(m.get("per_image"), list):
    raise ValueError(f"{p} has no 'per_image' list (not an eval metrics.json)")
  return m["per_image"]


def main(argv):
  del argv
  rows_a, rows_b = read_rows(_A.value), read_rows(_B.value)
  results = [paired.paired_difference(rows_a, rows_b, f, num_bootstrap=_BOOT.value)
             for f in _FIELDS.value]
  for r in results:
    print(paired.describe(r))
  if _OUT.value:
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_text(out, json.dumps({"a": _A.value, "b": _B.value, "results": results}, indent=2))


if __name__ == "__main__":
  app.run(main)
