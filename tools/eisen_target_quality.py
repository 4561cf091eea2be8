"""How good are EISEN's training targets? Compares round-1 motion targets, the round-1 teacher's
confident segments and explaining-away targets with the synthetic world's instance ids, before a
bootstrapping round spends compute on them.

    python tools/eisen_target_quality.py --config=configs/eisen_synth.py:round2 \
        --config.teacher=out/eisen_synth --seed=8 --num_batches=4 --min_overlap=8,20,40 \
        --out=out/eisen_target_quality

Scenes come from `--seed` (use a tuning seed, not the held-out one), rendered at the config's
resolution, batches of config.batch_size. Every target is compared at the teacher's affinity map
(the ids nearest-subsampled to it) over the moving pixels of the motion segments, as ordered pixel
pairs (spelke_jax/evals/pair_errors.py): `merge` = pairs the target connects across two objects,
`split` = pairs of one object it leaves unconnected, averaged over images, separately for scenes
with and without an agent. The teacher's confident segments are scored over their own pixels,
with their coverage and count. Target randomness: key(batch index), as the trainer's first steps.
Writes target_quality.{json,md} under --out.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "EISEN config with --config.teacher (a round-1 run).")
_SEED = flags.DEFINE_integer("seed", 8, "Scene seed (a tuning seed, never the held-out one).")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Batches of config.batch_size scenes.")
_MIN_OVERLAP = flags.DEFINE_list("min_overlap", ["8", "20", "40"],
                                 "Explaining-away min_overlap values to score.")
_UNEXPLAINED = flags.DEFINE_list("unexplained", ["nearest"],
                                 "Explaining-away `unexplained` modes to score.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)


def _write_text(path: Path, text: str) -> None:
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  tmp.write_text(text)
  os.replace(tmp, path)


def score_targets(rows: list[dict]) -> dict:
  """rows of {agent: bool, merge, split} -> mean merge / split for agent / other scenes."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for name, want in (("agent", True), ("other", False)):
    sel = [r for r in rows if r["agent"] == want]
    out[name] = {"images": len(sel),
                 "merge": float(np.mean([r["merge"] for r in sel])) if sel else float("nan"),
                 "split": float(np.mean([r["split"] for r in sel])) if sel else float("nan")}
  return out


def target_quality(config, seed: int, num_batches: int, min_overlaps, unexplained_modes) -> dict:
  """Scores motion targets, the teacher's confident segments and explaining-away targets on
  `num_batches` synthetic batches of `seed`; returns {'targets': {name: scores}, 'teacher': ...}."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from spelke_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from spelke_jax.evals.pair_errors import pair_errors  # pylint: disable=g-import-not-at-top
  from spelke_jax.models import eisen  # pylint: disable=g-import-not-at-top
  from spelke_jax.train import eisen as trainer  # pylint: disable=g-import-not-at-top
  from spelke_jax.train import eisen_targets  # pylint: disable=g-import-not-at-top

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
    agent = np.asarray(batch["agent_id"]) > 0
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
          rows[name].append({"agent": bool(agent[b]), "merge": m, "split": s})
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
  lines = ["| target | agent scenes merge / split | other scenes merge / split |",
           "|---|---|---|"]
  for name, s in list(result["targets"].items()) + [
      ("teacher's confident segments (over their pixels)", result["teacher_confident_segments"])]:
    lines.append(f"| {name} | {s['agent']['merge']:.3f} / {s['agent']['split']:.3f} | "
                 f"{s['other']['merge']:.3f} / {s['other']['split']:.3f} |")
  t = result["teacher_confident_segments"]
  lines.append("")
  lines.append(f"{result['num_images']} images of seed {result['seed']}; confident segments "
               f"cover {t['coverage']:.2f} of the map, {t['segments_per_image']:.1f} per image.")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required (e.g. configs/eisen_synth.py:round2)")
  result = target_quality(_CONFIG.value, _SEED.value, _NUM_BATCHES.value, _MIN_OVERLAP.value,
                          _UNEXPLAINED.value)
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  _write_text(out / "target_quality.json", json.dumps(result, indent=2))
  text = markdown(result)
  _write_text(out / "target_quality.md", text)
  print(text)


if __name__ == "__main__":
  app.run(main)
