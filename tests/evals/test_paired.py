"""Paired comparison of two evaluations (spelke_jax/evals/paired.py, tools/compare_evals.py)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spelke_jax.evals import paired

ROOT = Path(__file__).resolve().parents[2]


def _rows(values, id_field="key", field="mIoU"):
  return [{id_field: f"img{i}", field: v} for i, v in enumerate(values)]


def test_constant_shift_is_exact_and_rows_pair_by_id_not_order():
  a = np.random.default_rng(0).uniform(0, 0.8, 50)
  rows_a, rows_b = _rows(a), _rows(a + 0.1)[::-1]
  r = paired.paired_difference(rows_a, rows_b)
  assert r["n"] == 50 and r["diff"] == pytest.approx(0.1)
  assert r["ci_low"] == pytest.approx(0.1) and r["ci_high"] == pytest.approx(0.1)
  assert (r["wins"], r["ties"], r["losses"]) == (50, 0, 0)
  assert r["mean_b"] - r["mean_a"] == pytest.approx(0.1)


def test_interval_covers_the_mean_and_shrinks_with_more_images():
  rng = np.random.default_rng(1)
  widths = []
  for n in (20, 500):
    a = rng.uniform(0, 1, n)
    b = a + 0.02 + rng.normal(0, 0.1, n)
    r = paired.paired_difference(_rows(a, "name"), _rows(b, "name"), seed=3)
    assert r["ci_low"] < r["diff"] < r["ci_high"]
    widths.append(r["ci_high"] - r["ci_low"])
  assert widths[1] < widths[0] / 3


def test_missing_values_are_dropped_on_both_sides():
  rows_a = _rows([0.5, None, 0.2, float("nan")], field="dragged_IoU")
  rows_b = _rows([0.6, 0.9, None, 0.1], field="dragged_IoU")
  r = paired.paired_difference(rows_a, rows_b, "dragged_IoU")
  assert r["n"] == 1 and r["diff"] == pytest.approx(0.1)


def test_bad_inputs_name_the_problem():
  with pytest.raises(ValueError, match="different images: 1 only in A"):
    paired.paired_difference(_rows([0.1, 0.2]), _rows([0.1]))
  with pytest.raises(ValueError, match="no image has 'AR'"):
    paired.paired_difference(_rows([0.1]), _rows([0.2]), "AR")
  with pytest.raises(ValueError, match="without an id field"):
    paired.paired_difference([{"mIoU": 0.1}], [{"mIoU": 0.2}])


def test_tool_prints_and_writes_json(tmp_path):
  for name, vals in (("a", [0.2, 0.4, 0.6]), ("b", [0.3, 0.5, 0.6])):
    (tmp_path / f"{name}.json").write_text(json.dumps({"per_image": _rows(vals)}))
  out = tmp_path / "sub" / "cmp.json"
  run = lambda *args: subprocess.run(
      [sys.executable, "tools/compare_evals.py", *args], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  p = run(f"--a={tmp_path / 'a.json'}", f"--b={tmp_path / 'b.json'}", f"--out={out}")
  assert p.returncode == 0, p.stderr[-2000:]
  assert "mIoU over 3 images: A 0.4000, B 0.4667, B - A +0.0667" in p.stdout
  assert "B ahead on 2, even on 1, behind on 0" in p.stdout
  saved = json.loads(out.read_text())
  assert saved["results"][0]["diff"] == pytest.approx(0.2 / 3)
  assert [f.name for f in out.parent.iterdir()] == ["cmp.json"]   # no temporary left behind
  (tmp_path / "bad.json").write_text("{}")
  p = run(f"--a={tmp_path / 'bad.json'}", f"--b={tmp_path / 'b.json'}")
  assert p.returncode != 0 and "has no 'per_image' list" in p.stderr
  p = run(f"--a={tmp_path / 'none.json'}", f"--b={tmp_path / 'b.json'}")
  assert p.returncode != 0 and "metrics file not found" in p.stderr
