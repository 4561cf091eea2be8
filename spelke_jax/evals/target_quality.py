"""EISEN's training targets scored against ground-truth ids (tools/eisen_target_quality.py).

Round-1 motion targets, explaining-away targets (several settings) and the frozen teacher's
confident segments are compared at the teacher's affinity map with the synthetic scenes'
instance ids (nearest-subsampled), as ordered pixel pairs merged across / split within objects
(evals/pair_errors.py), over the moving pixels of the motion segments, averaged over images,
separately for scenes with and without an agent.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import logging

from spelke_jax.data import pipeline
from spelke_jax.evals.pair_errors import pair_errors
from spelke_jax.models import eisen
from spelke_jax.train import eisen as trainer
from spelke_jax.train import eisen_targets


def agent_merges(target_ids, gt_ids, valid, agent_id: int) -> float:
  """The part of pair_errors' `merged` whose pairs include a pixel of the agent (ground-truth id
  `agent_id`; 0 = no agent -> 0.0), as a fraction of all ordered pairs of valid pixels."""
  valid = np.asarray(valid, bool)
  n = int(valid.sum())
  if agent_id == 0 or n == 0:
    return 0.0
  rest = valid & (np.asarray(gt_ids) != agent_id)
  merged_all = pair_errors(target_ids, gt_ids, valid)[0]
  merged_rest = pair_errors(target_ids, gt_ids, rest)[0] * (int(rest.sum()) / n) ** 2
  return merged_all - merged_rest


def _mean(rows, key):
  return float(np.mean([r[key] for r in rows])) if rows else float("nan")


def score_targets(rows: list[dict]) -> dict:
  """rows of {agent: bool, merge, split[, merge_with_agent]} -> their means for agent / other
  scenes (merge_with_agent: agent scenes only)."""
  out = {}
  for name, want in (("agent", True), ("other", False)):
    sel = [r for r in rows if r["agent"] == want]
    out[name] = {"images": len(sel), "merge": _mean(sel, "merge"), "split": _mean(sel, "split")}
  with_agent = [r for r in rows if r["agent"] and "merge_with_agent" in r]
  if with_agent:
    out["agent"]["merge_with_agent"] = _mean(with_agent, "merge_with_agent")
  return out


def target_quality(config, seed: int, num_batches: int, min_overlaps, unexplained_modes) -> dict:
  """Scores motion targets, the teacher's confident segments and explaining-away targets on
  `num_batches` synthetic batches of `seed`; returns {'targets': {name: scores}, 'teacher': ...}."""

  if not config.get("teacher"):
    raise ValueError("needs --config.teacher=<a round-1 EISEN run or export>")
  teacher = trainer.build_model(config)
  trainer.restore_weights(Path(config.teacher), teacher, config)
  teacher.eval()
  variants = {"motion segments (round 1)": None}
  for mo in min_overlaps:
    for un in unexplained_modes:
      variants[f"explain away, min_overlap={int(mo)}, unexplained={un}"] = (int(mo), un)
  rows = {name: [] for name in variants}
  conf_rows = []
  stream = pipeline.make_synthetic_stream(seed, int(config.data.resolution),
                                          int(config.batch_size), num_batches=num_batches)
  for bi, batch in enumerate(stream):
    motion, conf = eisen_targets.explain_away_inputs(teacher, batch, key=jax.random.key(bi),
                                                     config=config.targets)
    _, h, w = motion.shape
    gt = np.asarray(eisen.nearest_resize_labels(batch["instance_ids"], h, w))
    agent_ids = np.asarray(batch["agent_id"]).astype(np.int64)
    agent = agent_ids > 0
    for name, v in variants.items():
      if v is None:
        ids = np.asarray(eisen_targets.connectivity_ids(motion))
      else:
        ids = np.asarray(eisen_targets.explain_away(motion, conf, min_overlap=v[0],
                                                    unexplained=v[1]))
      for b in range(len(ids)):
        moving = motion[b] > 0
        if moving.any():
          m, s = pair_errors(ids[b], gt[b], moving)
          rows[name].append({"agent": bool(agent[b]), "merge": m, "split": s,
                             "merge_with_agent": agent_merges(ids[b], gt[b], moving,
                                                              int(agent_ids[b]))})
    for b in range(len(conf)):
      sure = conf[b] > 0
      m, s = pair_errors(conf[b], gt[b], sure)
      conf_rows.append({"agent": bool(agent[b]), "merge": m, "split": s,
                        "coverage": float(sure.mean()),
                        "segments": int(len(np.unique(conf[b][sure])))})
    logging.info("target quality: batch %d / %d", bi + 1, num_batches)
  teacher_scores = score_targets(conf_rows)
  teacher_scores["coverage"] = float(np.mean([r["coverage"] for r in conf_rows]))
  teacher_scores["segments_per_image"] = float(np.mean([r["segments"] for r in conf_rows]))
  return {"seed": seed, "num_images": len(conf_rows),
          "targets": {name: score_targets(r) for name, r in rows.items()},
          "teacher_confident_segments": teacher_scores}


def markdown(result: dict) -> str:
  """The result as a markdown table (merges that involve the agent in brackets) and a summary."""
  lines = ["| target | agent scenes merge (with the agent) / split | other scenes merge / split |",
           "|---|---|---|"]
  for name, s in list(result["targets"].items()) + [
      ("teacher's confident segments (over their pixels)", result["teacher_confident_segments"])]:
    a = s["agent"]
    with_agent = f" ({a['merge_with_agent']:.3f})" if "merge_with_agent" in a else ""
    lines.append(f"| {name} | {a['merge']:.3f}{with_agent} / {a['split']:.3f} | "
                 f"{s['other']['merge']:.3f} / {s['other']['split']:.3f} |")
  t = result["teacher_confident_segments"]
  lines.append("")
  lines.append(f"{result['num_images']} images of seed {result['seed']}; confident segments "
               f"cover {t['coverage']:.2f} of the map, {t['segments_per_image']:.1f} per image.")
  return "\n".join(lines) + "\n"
