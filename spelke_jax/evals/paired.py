"""Paired comparison of two evaluations of the same images (metrics.json per-image rows).

Two models scored on the same scenes differ by much less than the spread between scenes, so a
difference of means says little on its own; the per-image differences, with a bootstrap
confidence interval over images, say whether one model is ahead.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

ID_FIELDS = ("key", "name")    # EISEN eval rows / SpelkeBench rows


def _row_id(row: Mapping[str, Any]) -> str:
  for f in ID_FIELDS:
    if f in row:
      return str(row[f])
  raise ValueError(f"per-image row without an id field ({' or '.join(ID_FIELDS)}): "
                   f"{sorted(row)}")


def _value(row: Mapping[str, Any], field: str) -> float:
  v = row.get(field)
  return float("nan") if v is None else float(v)


def paired_difference(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]],
                      field: str = "mIoU", *, num_bootstrap: int = 10000, seed: int = 0,
                      level: float = 0.95) -> dict[str, Any]:
  """B - A over the images both score (None / NaN values dropped), matched by key or name.

  Returns n, mean_a, mean_b, diff (mean of B - A), ci_low / ci_high (percentile bootstrap over
  images at `level`), wins / ties / losses of B (|diff| <= 1e-6 is a tie). Raises ValueError if
  the two hold different images or none is scored by both.
  """
  a = {_row_id(r): r for r in rows_a}
  b = {_row_id(r): r for r in rows_b}
  if set(a) != set(b):
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    raise ValueError(f"the evaluations hold different images: {len(only_a)} only in A "
                     f"(e.g. {only_a[:3]}), {len(only_b)} only in B (e.g. {only_b[:3]})")
  keys = sorted(a)
  x = np.array([_value(a[k], field) for k in keys], np.float64)
  y = np.array([_value(b[k], field) for k in keys], np.float64)
  ok = ~(np.isnan(x) | np.isnan(y))
  if not ok.any():
    raise ValueError(f"no image has {field!r} in both evaluations")
  x, y = x[ok], y[ok]
  d = y - x
  rng = np.random.default_rng(seed)
  boot = np.concatenate([d[rng.integers(0, len(d), (min(1000, num_bootstrap - i), len(d)))].mean(1)
                         for i in range(0, num_bootstrap, 1000)])   # 1000 resamples at a time
  lo, hi = np.percentile(boot, [50 * (1 - level), 100 - 50 * (1 - level)])
  return {"field": field, "n": int(len(d)), "mean_a": float(x.mean()), "mean_b": float(y.mean()),
          "diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "level": level,
          "wins": int((d > 1e-6).sum()), "ties": int((np.abs(d) <= 1e-6).sum()),
          "losses": int((d < -1e-6).sum())}


def describe(r: Mapping[str, Any]) -> str:
  """One line: 'mIoU over 200 images: A 0.5205, B 0.5498, B - A +0.0293 [95% CI +0.0184,
  +0.0402]; B ahead on 129, even on 4, behind on 67'."""
  pct = int(round(100 * r["level"]))
  return (f"{r['field']} over {r['n']} images: A {r['mean_a']:.4f}, B {r['mean_b']:.4f}, "
          f"B - A {r['diff']:+.4f} [{pct}% CI {r['ci_low']:+.4f}, {r['ci_high']:+.4f}]; "
          f"B ahead on {r['wins']}, even on {r['ties']}, behind on {r['losses']}")
