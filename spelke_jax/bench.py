"""The `bench` mode: times LRAS workloads after compilation and relates them to the matmul peak.

    python -m spelke_jax.main --config=configs/bench.py:forward --workdir=out/bench

Each workload is compiled once (compile seconds reported apart), then run `config.repeats` times
with `jax.block_until_ready`; the best time counts. The machine's matmul peak is measured in the
same process (a jitted square matmul in the workload dtype, best of `matmul_repeats` calls,
sampled before the first workload and after each one; the best sample counts), and every
workload reports `ratio_to_matmul_peak` = model FLOP/s / peak FLOP/s. Results are printed as a
table and written atomically to `workdir/bench_<workload>.json`.

FLOP counts (stated in each JSON as `flop_formula`) are model FLOPs of the LRAS transformer:
  2 * params_nonembedding * tokens                 (blocks + ln_f; every weight is one multiply-add)
  + 4 * n_layer * n_embd * attention_pairs         (QK^T and AV; pairs = query x key products the
                                                    XLA path computes: T^2 for a causal pass, S per
                                                    cached query; causal masking is not subtracted)
  + 2 * n_embd * vocab_size * logit_tokens         (lm_head, only where logits are computed)
The probe workload counts LRAS FLOPs only (LPQ encoders and the host-side maps are timed, not
counted).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from spelke_jax.models import lras
from spelke_jax.models.lras_config import NO_MOTION_FLOW_CODES, LRASConfig

WORKLOADS = ("forward", "decode", "probe", "kprop")
FLOP_FORMULA = ("2*params_nonembedding*tokens + 4*n_layer*n_embd*attention_pairs "
                "+ 2*n_embd*vocab_size*logit_tokens; attention_pairs = query x key products "
                "computed (T^2 per causal pass, cache size S per cached query, causal mask not "
                "subtracted)")


def run(config, workdir) -> dict[str, dict[str, Any]]:
  """Runs `config.workload` (one name or 'all'); returns {workload: result} and writes JSON."""
  names = _workload_names(config.workload)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  dtype = jnp.dtype(config.dtype)
  logging.info("bench: measuring the %s matmul peak on %s", dtype.name, jax.devices()[0])
  peak = MatmulPeak(dtype, size=config.matmul_size, repeats=config.matmul_repeats)
  logging.info("bench: matmul peak %.3g FLOP/s (%dx%d)", peak.measure(), peak.size, peak.size)
  results = {}
  for name in names:
    logging.info("bench: workload %s", name)
    t0 = time.perf_counter()
    res = _RUNNERS[name](config)
    total = time.perf_counter() - t0
    peak.measure()  # again right after the workload; the best sample counts
    res = {"workload": name, **res, "total_seconds": total, "matmul_peak": peak.summary(),
           **environment()}
    res["ratio_to_matmul_peak"] = float(res["flops_per_s"] / peak.flops_per_s)
    _write_json(workdir / f"bench_{name}.json", res)
    results[name] = res
  print(format_table(results, peak.summary()))
  return results


def _workload_names(workload: str) -> tuple[str, ...]:
  if workload == "all":
    return WORKLOADS
  if workload not in WORKLOADS:
    raise ValueError(f"unknown bench workload {workload!r}; known: {', '.join(WORKLOADS)}, all")
  return (workload,)


# ---- Timing helpers ---------------------------------------------------------------------------

def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float]]:
  """Runs fn() `repeats` times (>= 1), blocking on its output; (best seconds, all seconds)."""
  times = []
  for _ in range(max(1, int(repeats))):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return min(times), times


def compile_and_time(fn, args: tuple, repeats: int) -> dict[str, Any]:
  """AOT-compiles jitted `fn` for `args`, runs once (warm-up), then times `repeats` runs."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  first_s = time.perf_counter() - t0
  best, times = best_of(lambda: compiled(*args), repeats)
  return {"compile_seconds": compile_s, "first_run_seconds": first_s, "best_seconds": best,
          "times_seconds": times, "compiled": compiled}


class MatmulPeak:
  """The machine's matmul peak: a jitted [n, n] @ [n, n] chain (default precision) in `dtype`.

  size 0 picks 2048 on CPU (1 matmul per call) and 8192 on accelerators (8 chained matmuls per
  call, so launch overhead does not count). `measure()` can be called again (e.g. after each
  workload); `summary()` reports the best sample, so a slow moment of a shared machine does not
  lower the peak.
  """

  def __init__(self, dtype=jnp.float32, *, size: int = 0, repeats: int = 10):
    cpu = jax.default_backend() == "cpu"
    self.size = n = int(size) or (2048 if cpu else 8192)
    self.iters = iters = 1 if cpu else 8
    self.dtype = jnp.dtype(dtype)
    self.repeats = int(repeats)
    ka, kb = jax.random.split(jax.random.key(0))
    self.args = ((jax.random.normal(ka, (n, n), jnp.float32) / math.sqrt(n)).astype(dtype),
                 jax.random.normal(kb, (n, n), jnp.float32).astype(dtype))

    def chain(a, b):
      return jax.lax.fori_loop(0, iters, lambda _, x: x @ a, b)

    t0 = time.perf_counter()
    self.compiled = jax.jit(chain).lower(*self.args).compile()
    self.compile_seconds = time.perf_counter() - t0
    jax.block_until_ready(self.compiled(*self.args))
    self.flop_per_call = 2.0 * n**3 * iters
    self.samples: list[float] = []  # best FLOP/s of each measure()

  def measure(self) -> float:
    """Best FLOP/s of `repeats` calls (also kept in `samples`)."""
    best, _ = best_of(lambda: self.compiled(*self.args), self.repeats)
    self.samples.append(self.flop_per_call / best)
    return self.samples[-1]

  @property
  def flops_per_s(self) -> float:
    return max(self.samples) if self.samples else self.measure()

  def summary(self) -> dict[str, Any]:
    peak = self.flops_per_s
    return {"size": self.size, "matmuls_per_call": self.iters, "dtype": self.dtype.name,
            "flop_per_call": self.flop_per_call, "best_seconds": self.flop_per_call / peak,
            "flops_per_s": peak, "samples_flops_per_s": list(self.samples),
            "repeats_per_sample": self.repeats, "compile_seconds": self.compile_seconds,
            "precision": str(jax.config.jax_default_matmul_precision or "default")}


def matmul_peak(dtype=jnp.float32, *, size: int = 0, repeats: int = 10) -> dict[str, Any]:
  """One measurement of the matmul peak (see MatmulPeak)."""
  peak = MatmulPeak(dtype, size=size, repeats=repeats)
  peak.measure()
  return peak.summary()


def environment() -> dict[str, Any]:
  """Backend, device and library versions of this process."""
  import flax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": dev.device_kind,
          "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
          "jax_version": jax.__version__, "flax_version": flax.__version__,
          "cpu_count": os.cpu_count(), "python": platform.python_version(),
          "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ---- FLOP counting ----------------------------------------------------------------------------

def nonembedding_params(model: lras.LRAS) -> int:
  """Parameters of the blocks and ln_f (no token/position embeddings, no lm_head)."""
  leaves = jax.tree.leaves(nnx.state(model.blocks, nnx.Param))
  leaves += jax.tree.leaves(nnx.state(model.ln_f, nnx.Param))
  return int(sum(x.size for x in leaves))


def lras_flops(cfg: LRASConfig, n_params: int, *, tokens: float, attention_pairs: float,
               logit_tokens: float) -> float:
  """Model FLOPs (see FLOP_FORMULA)."""
  return (2.0 * n_params * tokens + 4.0 * cfg.n_layer * cfg.n_embd * attention_pairs
          + 2.0 * cfg.n_embd * cfg.vocab_size * logit_tokens)


def _model_config(config) -> LRASConfig:
  return LRASConfig(vocab_size=config.vocab_size, block_size=config.block_size,
                    n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd,
                    param_dtype=config.dtype, dtype=config.dtype,
                    attention_impl=config.attention_impl)


def _random_tokens(key, shape, vocab) -> jax.Array:
  return jax.random.randint(key, shape, 0, vocab, jnp.int32)


def _model_summary(cfg: LRASConfig, n_params: int) -> dict[str, Any]:
  return {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
          "vocab_size": cfg.vocab_size, "block_size": cfg.block_size, "dtype": cfg.dtype,
          "attention_impl": cfg.attention_impl, "params_nonembedding": n_params}


def _timing_fields(t: dict[str, Any]) -> dict[str, Any]:
  return {k: t[k] for k in ("compile_seconds", "first_run_seconds", "best_seconds",
                            "times_seconds")}


# ---- Workloads --------------------------------------------------------------------------------

def bench_forward(config) -> dict[str, Any]:
  """Full causal forward of `forward_batch` x `forward_tokens` tokens at positions 0..T-1."""
  cfg = _model_config(config)
  b, t = int(config.forward_batch), int(config.forward_tokens)
  if t > cfg.block_size:
    raise ValueError(f"forward_tokens {t} > block_size {cfg.block_size}")
  model = lras.create(cfg, config.seed)
  graphdef, state = nnx.split(model)
  n_params = nonembedding_params(model)
  tokens = _random_tokens(jax.random.key(config.seed + 1), (b, t), cfg.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

  @jax.jit
  def forward(state, tokens, positions):
    return nnx.merge(graphdef, state)(tokens, positions)

  logging.info("bench forward: compiling [%d, %d] tokens", b, t)
  timing = compile_and_time(forward, (state, tokens, positions), config.repeats)
  flops = lras_flops(cfg, n_params, tokens=b * t, attention_pairs=b * t * t, logit_tokens=b * t)
  best = timing["best_seconds"]
  return {"model": _model_summary(cfg, n_params), "shapes": {"batch": b, "tokens": t},
          **_timing_fields(timing), "tokens_per_s": b * t / best, "flop_per_call": flops,
          "flops_per_s": flops / best, "flop_formula": FLOP_FORMULA}


def bench_decode(config) -> dict[str, Any]:
  """Prefill `decode_prompt_tokens`, then sample `decode_new_tokens` one at a time (KV cache)."""
  from spelke_jax.inference import sampling  # pylint: disable=g-import-not-at-top
  cfg = _model_config(config)
  b, p = int(config.decode_batch), int(config.decode_prompt_tokens)
  n = int(config.decode_new_tokens)
  if p + n > cfg.block_size:
    raise ValueError(f"decode_prompt_tokens + decode_new_tokens = {p + n} > block_size "
                     f"{cfg.block_size}")
  samp = sampling.SamplingConfig(temperature=float(config.decode_temperature),
                                 top_k=int(config.decode_top_k) or None,
                                 top_p=float(config.decode_top_p) or None)
  model = lras.create(cfg, config.seed)
  graphdef, state = nnx.split(model)
  n_params = nonembedding_params(model)
  tokens = _random_tokens(jax.random.key(config.seed + 1), (b, p), cfg.vocab_size)
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  new_positions = jnp.broadcast_to(jnp.arange(p, p + n, dtype=jnp.int32), (b, n))
  keys = sampling.row_keys(config.seed, b)

  @jax.jit
  def generate(state, tokens, positions, new_positions, keys):
    return sampling.generate(nnx.merge(graphdef, state), tokens, positions, new_positions, keys,
                             sampling=samp).tokens

  @jax.jit
  def prefill(state, tokens, positions):
    m = nnx.merge(graphdef, state)
    return m.prefill(tokens, positions, lras.init_cache(cfg, b, p + n))

  logging.info("bench decode: compiling prefill %d + %d steps, batch %d", p, n, b)
  timing = compile_and_time(generate, (state, tokens, positions, new_positions, keys),
                            config.repeats)
  pre = compile_and_time(prefill, (state, tokens, positions), config.repeats)
  best, pre_best = timing["best_seconds"], pre["best_seconds"]
  decode_s = best - pre_best if best > pre_best else best  # noise guard: never <= 0
  s = p + n  # cache size: every cached query attends over all S slots (masked)
  flops = (lras_flops(cfg, n_params, tokens=b * p, attention_pairs=b * p * p, logit_tokens=b)
           + lras_flops(cfg, n_params, tokens=b * n, attention_pairs=b * n * s,
                        logit_tokens=b * n))
  return {"model": _model_summary(cfg, n_params),
          "shapes": {"batch": b, "prompt_tokens": p, "new_tokens": n, "cache_size": s},
          "sampling": dataclasses.asdict(samp), **_timing_fields(timing),
          "prefill_best_seconds": pre_best, "prefill_compile_seconds": pre["compile_seconds"],
          "decode_seconds": decode_s,
          "generated_tokens_per_s": b * n / best,
          "decode_tokens_per_s": b * n / decode_s,
          "ms_per_token": 1e3 * decode_s / n,
          "flop_per_call": flops, "flops_per_s": flops / best, "flop_formula": FLOP_FORMULA,
          "notes": ("best_seconds: prefill + decode in one jitted generate; decode_seconds = "
                    "best_seconds - prefill_best_seconds; ms_per_token is per decode step of the "
                    "whole batch; generated_tokens_per_s counts prefill time too")}


def _probe_lpq_configs(width: int):
  """The released tokenizers (width 0) or tiny ones of `width` for tests: one 1x1 ResBlock each
  side (the stage only encodes; the tiny decoder does not upsample)."""
  from spelke_jax.models.lpq_config import lpq_flow, lpq_rgb  # pylint: disable=g-import-not-at-top
  if not width:
    return lpq_rgb(), lpq_flow()
  block = ("ResBlock", int(width), int(width), 2 * int(width), 1, 1, 0)
  return (lpq_rgb(encoder_blocks=(block,), decoder_blocks=(block,)),
          lpq_flow(encoder_blocks=(block,), decoder_blocks=(block,)))


def stand_in_flow_table(size: int, seed: int, flow_codes: int):
  """A random FlowTable of `size` codes holding both no-motion codes (first)."""
  from spelke_jax.inference import maps  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  others = np.setdiff1d(np.arange(flow_codes), np.asarray(NO_MOTION_FLOW_CODES))
  extra = rng.choice(others, size=max(0, int(size) - len(NO_MOTION_FLOW_CODES)), replace=False)
  ids = np.concatenate([np.asarray(NO_MOTION_FLOW_CODES), extra]).astype(np.int64)
  vectors = (5.0 * rng.standard_normal((ids.size, 4, 4, 2))).astype(np.float32)
  vectors[:len(NO_MOTION_FLOW_CODES)] = 0.0
  return maps.FlowTable.from_arrays(ids, vectors)


def probe_work(prompts: list, cfg: LRASConfig, n_params: int, *,
               per_run_frame0_order: bool = False) -> dict[str, float]:
  """LRAS tokens / attention pairs / logit tokens of one stage (as decode.run computes them).

  Runs are grouped by prompt shape like SpelkeNet._decode_groups; each group prefills its shared
  frame-0 prefix once (or every prompt when per_run_frame0_order), extends the rest of the
  prompts (1 logit), rolls out num_seq patches token by token, and appends T-1 blocks of N.
  """
  groups: dict[tuple, list] = {}
  for q in prompts:
    groups.setdefault((q.cond_len, q.num_seq_patches, q.num_par_targets), []).append(q)
  tokens = pairs = logits = 0.0
  for qs in groups.values():
    q0, r = qs[0], len(qs)
    t = q0.tokens_per_patch
    lp = q0.cond_len if per_run_frame0_order else q0.flow_start
    rp = r if per_run_frame0_order else 1
    lr, ls, n = q0.cond_len - lp, q0.num_new_tokens, q0.num_par_targets
    s = lp + lr + ls + (t - 1) * n
    tokens += rp * lp + r * (lr + ls + (t - 1) * n)
    pairs += rp * lp * lp + r * (lr + ls + (t - 1) * n) * s
    logits += rp + r * ((1 if lr else 0) + ls + (t - 1) * n)
  flops = lras_flops(cfg, n_params, tokens=tokens, attention_pairs=pairs, logit_tokens=logits)
  return {"forward_tokens": tokens, "attention_pairs": pairs, "logit_tokens": logits,
          "flop_per_call": flops, "groups": len(groups)}


def bench_probe(config) -> dict[str, Any]:
  """One counterfactual-probing stage (SpelkeNet.get_segment), host and device, real vocabulary."""
  from spelke_jax.inference import probe  # pylint: disable=g-import-not-at-top
  from spelke_jax.models import lpq  # pylint: disable=g-import-not-at-top
  cfg = LRASConfig(n_layer=config.probe_n_layer, n_head=config.probe_n_head,
                   n_embd=config.probe_n_embd, param_dtype=config.dtype, dtype=config.dtype,
                   attention_impl=config.attention_impl)
  model = lras.create(cfg, config.seed)
  n_params = nonembedding_params(model)
  rgb_cfg, flow_cfg = _probe_lpq_configs(config.probe_lpq_width)
  rgb, flow = lpq.create(rgb_cfg, config.seed + 1), lpq.create(flow_cfg, config.seed + 2)
  n_flow = cfg.flow_range[1] - cfg.flow_range[0]
  table = stand_in_flow_table(config.probe_table_size, config.seed, n_flow)
  num_seeds, num_dirs = int(config.probe_num_seeds), int(config.probe_num_dirs)
  num_seq = int(config.probe_num_seq_patches)
  probe_cfg = probe.ProbeConfig(num_seeds=num_seeds, num_dirs=num_dirs, num_seq_patches=num_seq)
  net = probe.SpelkeNet(model, rgb, flow, table, probe_cfg)
  size = net.image_size
  rng = np.random.default_rng(config.seed)
  image01 = net.check_image(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
  point = net.check_point((config.probe_x, config.probe_y))
  key = jax.random.key(config.seed)

  def stage():
    return net.get_segment(image01, point, num_seeds=num_seeds, num_dirs=num_dirs,
                           num_seq=num_seq, use_flow_pred=False, key=key)

  logging.info("bench probe: first stage (compiles), %d seeds x %d dirs on %dx%d",
               num_seeds, num_dirs, size, size)
  t0 = time.perf_counter()
  res = stage()
  first_s = time.perf_counter() - t0
  best, times = best_of(lambda: stage().segment, config.repeats)
  work = probe_work(res.prompts, cfg, n_params)
  pokes = num_seeds * num_dirs
  return {"model": _model_summary(cfg, n_params),
          "lpq_widths": {"rgb": rgb_cfg.embed_width, "flow": flow_cfg.embed_width},
          "shapes": {"image_size": size, "num_seeds": num_seeds, "num_dirs": num_dirs,
                     "num_seq_patches": num_seq, "flow_table_size": int(table.token_ids.size),
                     "point": list(point)},
          "compile_seconds": max(first_s - best, 0.0), "first_run_seconds": first_s,
          "best_seconds": best, "times_seconds": times, "seconds_per_stage": best,
          "pokes_per_s": pokes / best, "forward_tokens": work["forward_tokens"],
          "forward_tokens_per_s": work["forward_tokens"] / best,
          "attention_pairs": work["attention_pairs"], "logit_tokens": work["logit_tokens"],
          "decode_groups": work["groups"], "flop_per_call": work["flop_per_call"],
          "flops_per_s": work["flop_per_call"] / best, "flop_formula": FLOP_FORMULA,
          "notes": ("whole stage timed (host prompt building, LPQ encoders, batched decode, maps, "
                    "Otsu); FLOPs count the LRAS transformer only; compile_seconds = first "
                    "stage - best stage")}


def bench_kprop(config) -> dict[str, Any]:
  """EISEN grouping: KProp (25 iterations) + Competition (32 pointers, 3 rounds) on one 128x128
  map, S=1024, Q=32 (spelke_jax/grouping/bench.py)."""
  from spelke_jax.grouping import bench as grouping_bench  # pylint: disable=g-import-not-at-top
  return grouping_bench.bench_kprop(config)


_RUNNERS = {"forward": bench_forward, "decode": bench_decode, "probe": bench_probe,
            "kprop": bench_kprop}


# ---- Output -----------------------------------------------------------------------------------

def _throughput(name: str, r: dict[str, Any]) -> str:
  if name == "forward":
    return f"{r['tokens_per_s']:.4g} tok/s"
  if name == "decode":
    return f"{r['generated_tokens_per_s']:.4g} tok/s, {r['ms_per_token']:.3g} ms/step"
  if name == "kprop":
    return f"{r['maps_per_s']:.3g} maps/s"
  return f"{r['pokes_per_s']:.3g} pokes/s, {r['forward_tokens_per_s']:.4g} fwd tok/s"


def format_table(results: dict[str, dict[str, Any]], peak: dict[str, Any]) -> str:
  """A short text table of the results."""
  lines = [f"matmul peak ({peak['dtype']}, {peak['size']}^2): {peak['flops_per_s']:.4g} FLOP/s",
           f"{'workload':<9} {'best s':>9} {'compile s':>9} {'FLOP/s':>10} {'ratio':>7}  "
           "throughput"]
  for name, r in results.items():
    lines.append(f"{name:<9} {r['best_seconds']:>9.4f} {r['compile_seconds']:>9.2f} "
                 f"{r['flops_per_s']:>10.4g} {r['ratio_to_matmul_peak']:>7.3f}  "
                 f"{_throughput(name, r)}")
  return "\n".join(lines)


def _write_json(path: Path, data: dict[str, Any]) -> None:
  """Writes `data` to `path` atomically (tmp file, then os.replace)."""
  tmp = path.with_name(path.name + ".tmp")
  try:
    tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=True))
    os.replace(tmp, path)
  finally:
    tmp.unlink(missing_ok=True)
  logging.info("bench: wrote %s", path)


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items() if k != "compiled"}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  return x
