"""The bench mode runs end to end on shrunk shapes and writes complete JSON (no speed asserts)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from spelke_jax import bench

ROOT = Path(__file__).resolve().parents[1]


def _config_module():
  spec = importlib.util.spec_from_file_location("bench_config", ROOT / "configs" / "bench.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config(workload: str, **overrides):
  c = _config_module().get_config(workload)
  # Shrunk shapes: a tiny model for forward/decode; the probe keeps the real vocabulary (its
  # prompts need the real layout) with a 16-wide LRAS, tiny tokenizers and one direction.
  small = dict(repeats=1, matmul_size=256, matmul_repeats=2, vocab_size=512, block_size=256,
               n_layer=2, n_head=2, n_embd=32, forward_tokens=64, decode_batch=2,
               decode_prompt_tokens=16, decode_new_tokens=8, probe_n_layer=1, probe_n_head=2,
               probe_n_embd=16, probe_lpq_width=8, probe_num_dirs=1, probe_table_size=16,
               kprop_height=16, kprop_width=24, kprop_samples=64, kprop_window=5, kprop_q=8,
               kprop_iters=5, kprop_masks=4, kprop_rounds=2)
  c.update({**small, **overrides})
  return c


def _check_common(res: dict, name: str):
  assert res["workload"] == name
  for key in ("best_seconds", "compile_seconds", "first_run_seconds", "flop_per_call",
              "flops_per_s", "total_seconds"):
    assert isinstance(res[key], float) and res[key] >= 0, (key, res[key])
  assert res["best_seconds"] > 0 and res["flops_per_s"] > 0
  ratio = res["ratio_to_matmul_peak"]
  assert isinstance(ratio, float) and 0 < ratio < 10, ratio
  assert res["matmul_peak"]["flops_per_s"] > 0
  for key in ("backend", "device_kind", "jax_version", "flop_formula"):
    assert isinstance(res[key], str) and res[key]
  assert res["device_count"] >= 1


def test_bench_all_workloads_write_json(tmp_path, capsys):
  results = bench.run(_config("all"), tmp_path)
  assert set(results) == {"forward", "decode", "probe", "kprop"}
  for name, res in results.items():
    on_disk = json.loads((tmp_path / f"bench_{name}.json").read_text())
    assert on_disk["best_seconds"] == pytest.approx(res["best_seconds"])
    _check_common(on_disk, name)
  assert not list(tmp_path.glob("*.tmp"))
  fwd, dec, prb = (json.loads((tmp_path / f"bench_{n}.json").read_text())
                   for n in ("forward", "decode", "probe"))
  assert fwd["tokens_per_s"] > 0 and fwd["shapes"] == {"batch": 1, "tokens": 64}
  assert fwd["model"]["params_nonembedding"] == 2 * (12 * 32 * 32 + 2 * 32) + 32
  for key in ("generated_tokens_per_s", "decode_tokens_per_s", "ms_per_token",
              "prefill_best_seconds", "decode_seconds"):
    assert dec[key] > 0, key
  assert dec["shapes"]["cache_size"] == 24
  for key in ("seconds_per_stage", "pokes_per_s", "forward_tokens", "forward_tokens_per_s"):
    assert prb[key] > 0, key
  assert prb["model"]["vocab_size"] == 111616 and prb["shapes"]["image_size"] == 256
  # prefix (1024 patches x 5 + 8 camera) once, plus 4 blocks of the unrevealed patches.
  assert prb["forward_tokens"] > 5128 + 4 * 1000
  kp = json.loads((tmp_path / "bench_kprop.json").read_text())
  assert kp["maps_per_s"] > 0 and kp["best_seconds"] > 0
  table = capsys.readouterr().out
  assert "matmul peak" in table and all(n in table for n in ("forward", "decode", "probe",
                                                             "kprop"))


def test_unknown_workload_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="unknown bench workload 'backward'"):
    _config_module().get_config("backward")
  c = _config("forward")
  c.workload = "backward"
  with pytest.raises(ValueError, match="known: forward, decode, probe, kprop, all"):
    bench.run(c, tmp_path)


def test_config_defaults_are_the_spec_shapes():
  d = _config_module().get_config()
  assert (d.mode, d.workload, d.repeats, d.dtype, d.attention_impl) == (
      "bench", "forward", 3, "float32", "xla")
  assert (d.vocab_size, d.block_size, d.n_layer, d.n_head, d.n_embd) == (111616, 22536, 4, 4, 256)
  assert (d.forward_batch, d.forward_tokens) == (1, 2048)
  assert (d.decode_batch, d.decode_prompt_tokens, d.decode_new_tokens) == (8, 1024, 256)
  assert (d.decode_temperature, d.decode_top_k, d.decode_top_p) == (1.0, 0, 0.0)
  assert (d.probe_n_layer, d.probe_n_head, d.probe_n_embd, d.probe_lpq_width) == (2, 4, 128, 0)
  assert (d.probe_num_dirs, d.probe_num_seeds, d.probe_num_seq_patches) == (8, 1, 0)
