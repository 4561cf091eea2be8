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
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from spelke_jax.evals.target_quality import markdown, target_quality
from spelke_jax.evals.viz import save_text

_CONFIG = config_flags.DEFINE_config_file("config", None,
                                          "EISEN config with --config.teacher (a round-1 run).")
_SEED = flags.DEFINE_integer("seed", 8, "Scene seed (a tuning seed, never the held-out one).")
_NUM_BATCHES = flags.DEFINE_integer("num_batches", 4, "Batches of config.batch_size scenes.")
_MIN_OVERLAP = flags.DEFINE_list("min_overlap", ["8", "20", "40"],
                                 "Explaining-away min_overlap values to score.")
_UNEXPLAINED = flags.DEFINE_list("unexplained", ["nearest"],
                                 "Explaining-away `unexplained` modes to score.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config is required (e.g. configs/eisen_synth.py:round2)")
  result = target_quality(_CONFIG.value, _SEED.value, _NUM_BATCHES.value, _MIN_OVERLAP.value,
                          _UNEXPLAINED.value)
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  save_text(out / "target_quality.json", json.dumps(result, indent=2))
  text = markdown(result)
  save_text(out / "target_quality.md", text)
  print(text)


if __name__ == "__main__":
  app.run(main)
