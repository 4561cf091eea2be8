"""The entry point and the tools run end to end, and the README's commands stay true."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args, cwd=ROOT):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=600)


def test_convert_mode_on_embedded_default(tmp_path):
  out = _run("-m", "spelke_jax.main", "--config=configs/convert.py", f"--workdir={tmp_path}")
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.loads((tmp_path / "convert_report.json").read_text())
  assert report["smoke_test"]["finite"] and report["smoke_test"]["logits_shape"] == [1, 16, 512]
  assert (tmp_path / "model" / "config.json").exists()
  assert "convert_config.json" in {p.name for p in tmp_path.iterdir()}
  # A second run refuses to overwrite silently, and leaves the first result intact.
  again = _run("-m", "spelke_jax.main", "--config=configs/convert.py", f"--workdir={tmp_path}")
  assert again.returncode != 0 and "exists" in again.stderr
  assert (tmp_path / "model" / "config.json").exists()


def test_convert_mode_bad_inputs(tmp_path):
  missing = _run("-m", "spelke_jax.main", "--config=configs/convert.py",
                 "--config.src=/nonexistent.pt", f"--workdir={tmp_path}")
  assert missing.returncode != 0 and "not found" in missing.stderr
  assert not (tmp_path / "model").exists()
  typo = _run("-m", "spelke_jax.main", "--config=configs/convert.py", "--config.overwrite=maybe",
              f"--workdir={tmp_path}")
  assert typo.returncode != 0
  wrong_system = _run("-m", "spelke_jax.main", "--config=configs/convert.py",
                      "--config.system=lpq", f"--workdir={tmp_path}")
  assert wrong_system.returncode != 0 and "checkpoint does not match" in wrong_system.stderr
  assert not (tmp_path / "model").exists()
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_check_parity_tool_rejects_unknown_system(tmp_path):
  pack = tmp_path / "pack"
  pack.mkdir()
  (pack / "manifest.json").write_text(json.dumps({"system": "no_such_system", "outputs": {}}))
  import numpy as np
  np.savez(pack / "golden.npz", x=np.zeros(1))
  out = _run("tools/check_parity.py", f"--fixture={pack}")
  assert out.returncode != 0 and "unknown fixture system" in out.stdout


def test_check_parity_tool_on_a_pack():
  from spelke_jax.parity.pack import default_fixtures_dir
  pack = default_fixtures_dir() / "lras_sequence"
  if not pack.exists():
    pytest.skip(f"{pack} absent")
  out = _run("tools/check_parity.py", f"--fixture={pack}")
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  assert "overall: 1/1 packs pass" in out.stdout


def test_readme_commands_match_ci():
  readme = (ROOT / "README.md").read_text()
  ci = (ROOT / ".ci" / "run").read_text()
  commands = re.findall(r"^python3\.11 -m venv .*$", readme, flags=re.M)
  assert len(commands) == 2, commands
  test_cmd = commands[1].split("&&")[-1].strip()
  assert test_cmd in ci, f"README test command {test_cmd!r} is not what .ci/run runs"
  main_cmd = commands[0].split("&&")[-1].strip()
  assert "spelke_jax.main" in main_cmd and "--config=configs/" in main_cmd
