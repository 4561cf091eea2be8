"""Benchmarks: time a workload after compilation and compare it with the matmul peak.

The workloads (shapes fixed so runs compare with the original on the same machine):
    python -m spelke_jax.main --config=configs/bench.py:forward --workdir=out/bench
    python -m spelke_jax.main --config=configs/bench.py:decode --workdir=out/bench
    python -m spelke_jax.main --config=configs/bench.py:probe --workdir=out/bench
    python -m spelke_jax.main --config=configs/bench.py:kprop --workdir=out/bench
All of them in one process: `configs/bench.py:all`.

forward: 4 layers, 4 heads, width 256, the real vocabulary / block size, 1 x 2048 tokens at
  positions 0..2047, float32.
decode: the same model; prefill 1024 tokens, then sample 256 tokens one at a time with the KV
  cache, batch 8, temperature 1.0, no top-k / top-p.
probe: one counterfactual-probing stage on a 256x256 image, 8 directions x 1 seed,
  num_seq_patches=0, a 2-layer, 4-head, 128-wide LRAS on the real vocabulary and the released
  LPQ tokenizer widths (random weights).
kprop: EISEN's KProp (25 iterations) + Competition (32 pointers, 3 rounds) on one 128x128 map with
  S=1024 samples per node and Q=32.

Each run prints a table and writes `bench_<workload>.json` (best seconds, compile seconds,
throughput, FLOP/s, ratio_to_matmul_peak, device, versions). Change a shape with e.g.
`--config.decode_batch=16`.
"""
from __future__ import annotations

import ml_collections

WORKLOADS = ("forward", "decode", "probe", "kprop", "all")


def get_config(arg=None):
  workload = arg or "forward"
  if workload not in WORKLOADS:
    raise ValueError(f"unknown bench workload {workload!r}; known: {', '.join(WORKLOADS)}")
  c = ml_collections.ConfigDict()
  c.mode = "bench"
  c.workload = workload                 # forward | decode | probe | kprop | all
  c.repeats = 3                         # timed runs after compilation; the best counts
  c.seed = 0
  c.dtype = "float32"                   # param and compute dtype (and the matmul peak's)
  c.attention_impl = "xla"              # xla | cudnn (full causal passes)
  c.matmul_size = 0                     # 0: 2048 on CPU, 8192 on accelerators
  c.matmul_repeats = 10                 # calls per peak sample (before and after each workload)

  # forward / decode model
  c.vocab_size = 111616
  c.block_size = 22536
  c.n_layer = 4
  c.n_head = 4
  c.n_embd = 256

  # forward
  c.forward_batch = 1
  c.forward_tokens = 2048

  # decode
  c.decode_batch = 8
  c.decode_prompt_tokens = 1024
  c.decode_new_tokens = 256
  c.decode_temperature = 1.0
  c.decode_top_k = 0                    # 0: off
  c.decode_top_p = 0.0                  # 0: off

  # probe (always the real vocabulary and position layout: the prompts need it)
  c.probe_n_layer = 2
  c.probe_n_head = 4
  c.probe_n_embd = 128
  c.probe_lpq_width = 0                 # 0: the released tokenizers (512 wide); else tiny ones
  c.probe_num_seeds = 1
  c.probe_num_dirs = 8
  c.probe_num_seq_patches = 0
  c.probe_table_size = 256              # stand-in flow table (holds both no-motion codes)
  c.probe_x = 128.0                     # probe point in pixels
  c.probe_y = 128.0

  # kprop (EISEN grouping)
  c.kprop_batch = 1
  c.kprop_height = 128
  c.kprop_width = 128
  c.kprop_samples = 1024
  c.kprop_window = 25
  c.kprop_q = 32
  c.kprop_iters = 25
  c.kprop_thresh = 0.7
  c.kprop_masks = 32
  c.kprop_rounds = 3
  c.kprop_method = "auto"               # auto | segment | dense
  return c
