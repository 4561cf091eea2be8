"""Parity runner for `spelkenet_probe` packs: one zoom-stage get_segment (num_seq=0, parallel
argmax decoding, expected displacement from logits) plus the motion-affordance map, for a
float32 and a bf16 transformer. Every parity switch is set to the original's behaviour, and the
recorded pokes (flow_cond, direction, seed per run) replace the original's torch RNG.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from spelke_jax.convert.convert import convert_checkpoint
from spelke_jax.convert.load import load_converted, load_torch
from spelke_jax.inference import maps, probe, prompt


def _chain_outputs(prefix: str, aff: probe.StageResult, pokes: probe.StageResult,
                   diagnostics: bool) -> dict[str, np.ndarray]:
  out = {
      "aff_logits_table": aff.table_logits[0], "aff_lse_flow": aff.lse_flow[0],
      "aff_prob_no_motion": aff.prob_no_motion[0],
      "affordance_map": np.asarray(maps.motion_affordance(aff.prob_no_motion[0])),
      "aff_avg_flow": aff.displacement[0],
      "poke_logits_table": pokes.table_logits, "poke_lse_flow": pokes.lse_flow,
      "poke_lse_all": pokes.diagnostics["lse_all"], "poke_prob_no_motion": pokes.prob_no_motion,
      "poke_avg_flow": pokes.displacement, "poke_dot_map": pokes.dot_maps,
      "mean_dot_map": pokes.mean_dot, "otsu_u8": pokes.otsu_u8,
      "otsu_threshold": np.float64(pokes.threshold), "segment": pokes.segment.astype(np.uint8),
      "segment_256": pokes.segment_256.astype(np.uint8),
  }
  if diagnostics:
    out["poke_argmax"] = pokes.diagnostics["argmax_all"]
    out["poke_top2_gap"] = pokes.diagnostics["top2_gap"]
  return {f"{prefix}_{k}": v for k, v in out.items()}


def run(pack) -> dict[str, np.ndarray]:
  cfg = pack.config
  seg = cfg.get("get_segment", {})
  probe_cfg = probe.ProbeConfig(
      num_seeds=int(seg.get("num_seeds", 1)), num_dirs=int(seg.get("num_dirs", 4)),
      min_mag=float(seg.get("min_mag", 10.0)), max_mag=float(seg.get("max_mag", 25.0)),
      top_k=seg.get("topk"), top_p=seg.get("topp")).original()
  table = maps.FlowTable.from_arrays(pack["flow_table_token_ids"], pack["flow_table_vectors"])
  rgb = load_torch(pack.file("rgb_quantizer.pt"), "lpq", config=cfg.get("rgb_quantizer"))
  flow = load_torch(pack.file("flow_quantizer.pt"), "lpq", config=cfg.get("flow_quantizer"))

  image = pack["image"]
  aff_run = probe.Run(np.asarray(pack["aff_flow_cond"], np.float64), np.zeros(2, np.float32),
                      int(pack["aff_seed"]))
  poke_runs = [probe.Run(np.asarray(fc, np.float64), np.asarray(d, np.float32), int(s))
               for fc, d, s in zip(pack["poke_flow_cond"], pack["poke_direction"],
                                   pack["poke_seed"])]
  out: dict[str, np.ndarray] = {}
  with tempfile.TemporaryDirectory(prefix="spelkenet_probe_") as tmp:
    path = convert_checkpoint(pack.file("model.pt"), Path(tmp) / "lras", "lras",
                              config_overrides=cfg.get("lras"), progress=False)
    for prefix, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
      model = load_converted(path, param_dtype=dtype, dtype=dtype)
      net = probe.SpelkeNet(model, rgb, flow, table, probe_cfg)
      image01 = net.check_image(image)
      rgb_codes = net.encode_image(image01)
      aff = net.stage(image01, [aff_run], rgb_codes=rgb_codes)
      pokes = net.stage(image01, poke_runs, rgb_codes=rgb_codes, diagnostics=True)
      out.update(_chain_outputs(prefix, aff, pokes, diagnostics=prefix == "fp32"))

  out["rgb_codes"] = rgb_codes.astype(np.int64)
  out["aff_flow_codes"] = aff.flow_codes[0].astype(np.int64)
  out["poke_flow_codes"] = pokes.flow_codes.astype(np.int64)
  out["poke_flow_cond"] = np.stack([r.flow_cond for r in poke_runs])
  out["poke_direction"] = np.stack([r.direction for r in poke_runs])
  aff_seq, aff_pos = prompt.parallel_step0(aff.prompts[0])
  out["aff_step0_seq"], out["aff_step0_pos"] = aff_seq, aff_pos
  steps = [prompt.parallel_step0(q) for q in pokes.prompts]
  out["poke_step0_seq"] = np.stack([s for s, _ in steps])
  out["poke_step0_pos"] = np.stack([p for _, p in steps])
  return out
