"""Where a trained EISEN loses mIoU: the affinity stride, the grouping or the affinities.

    python tools/eisen_grouping_diagnostic.py --config=configs/eisen_synth.py \
        [--config.checkpoint=RUN] [--config.dataset_path=SET.h5] --out=out/eisen_grouping_diag

On the eval set of the config (the shipped model and held-out set by default) it reports matched
mIoU of
  - stride ceiling: the ground truth sampled at the affinity cells (torch 'nearest', as the
    targets are), upsampled as the config's eval does (`segment_upsample`) and scored against the
    full-resolution ground truth: the best any grouping at this stride can do;
  - at cell level (against that sampled ground truth, so the stride costs nothing):
    KProp + Competition (the eval mode's grouping) and connected components of the model's full
    affinity matrix (`evals/affinity_components.py`) at each --thresholds, over all pairs and
    8-neighbours only.
If the plain components do no better than KProp + Competition, the affinities are what limits the
model. Writes diagnostic.json and diagnostic.md under --out.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from spelke_jax.evals.viz import save_text



def define_flags():
  """The command line's flags, defined only when run as a script (so that tests can import
  `diagnose` beside other tools that define --config)."""
  return (config_flags.DEFINE_config_file("config", None,
                                          "EISEN config file, e.g. configs/eisen_synth.py."),
          flags.DEFINE_list("thresholds", ["0.2", "0.35", "0.5", "0.65", "0.8"],
                            "Affinity thresholds of the connected-components grouping."),
          flags.DEFINE_string("out", None, "Output directory.", required=True))


def diagnose(config, thresholds, out: Path) -> dict:
  """Mean matched mIoU per grouping (see the module docstring); writes diagnostic.{json,md}."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from spelke_jax.data import video_folders  # pylint: disable=g-import-not-at-top
  from spelke_jax.evals import affinity_components, matched_miou  # pylint: disable=g-import-not-at-top
  from spelke_jax.models import eisen  # pylint: disable=g-import-not-at-top
  from spelke_jax.train import eisen as trainer  # pylint: disable=g-import-not-at-top
  model = trainer.build_model(config)
  trainer.restore_weights(Path(config.checkpoint), model, config)
  mcfg = trainer.model_config(config)
  upsample = trainer.segment_upsampler(config.get("segment_upsample", "nearest"))
  src = video_folders.SyntheticH5Source(config.dataset_path)
  n = len(src) if not config.eval_images else min(config.eval_images, len(src))
  scores: dict[str, list[float]] = {"stride ceiling": [], "KProp + Competition": []}
  for t in thresholds:
    scores[f"components > {t}, all pairs"] = []
    scores[f"components > {t}, 8-neighbours"] = []
  bs, t0 = config.eval_batch_size, time.time()
  for start in range(0, n, bs):
    exs = [src[i] for i in range(start, min(start + bs, n))]
    res = [video_folders.resize_example(e["image"], e["flow"], e["ids"], config.data.resolution)
           for e in exs]
    images = np.stack([r[0] for r in res])
    model.eval()
    key, query = model(jnp.asarray(images))        # one forward for both groupings
    segs, _ = trainer.group_affinities(key, query, jax.random.key(config.seed + start), mcfg)
    _, h, w, _ = key.shape
    affinity = np.asarray(eisen.softmax_max_norm(eisen.full_affinity_logits(key, query)))
    for j, r in enumerate(res):
      cells = np.asarray(eisen.nearest_resize_labels(r[2][None], h, w))[0]
      scores["stride ceiling"].append(matched_miou.image_miou(r[2], upsample(cells, r[2].shape))[0])
      scores["KProp + Competition"].append(matched_miou.image_miou(cells, segs[j])[0])
      for t in thresholds:
        for local, name in ((False, "all pairs"), (True, "8-neighbours")):
          labels = affinity_components.threshold_components(affinity[j], h, w, t,
                                                            neighbours_only=local)
          scores[f"components > {t}, {name}"].append(matched_miou.image_miou(cells, labels)[0])
    logging.info("grouping diagnostic %d/%d images (%.1f s)", min(start + bs, n), n,
                 time.time() - t0)
  means = {k: float(np.nanmean(v)) for k, v in scores.items()}
  table = ["| grouping | matched mIoU |", "|---|---|"] + [
      f"| {k}{' (full resolution)' if k == 'stride ceiling' else ' (cell level)'} | {v:.4f} |"
      for k, v in means.items()]
  result = {"num_images": n, "affinity_map": [h, w], "mIoU": means,
            "checkpoint": str(config.checkpoint), "dataset_path": str(config.dataset_path)}
  out.mkdir(parents=True, exist_ok=True)
  save_text(out / "diagnostic.json", json.dumps(result, indent=2))
  save_text(out / "diagnostic.md", "\n".join(table) + "\n")
  print("\n".join(table))
  return result


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config=<EISEN config file> is required (e.g. configs/eisen_synth.py)")
  c = _CONFIG.value
  if not c.checkpoint or not c.dataset_path:
    raise app.UsageError("the config needs a checkpoint and a dataset_path (configs/eisen_synth.py "
                         "has the shipped ones; override with --config.checkpoint / "
                         "--config.dataset_path)")
  thresholds = [float(v) for v in _THRESHOLDS.value]
  bad = [t for t in thresholds if not 0.0 <= t <= 1.0]
  if bad:
    raise app.UsageError(f"--thresholds must lie in [0, 1] (affinities are softmax / row max), "
                         f"got {bad}")
  diagnose(c, thresholds, Path(_OUT.value))


if __name__ == "__main__":
  _CONFIG, _THRESHOLDS, _OUT = define_flags()
  app.run(main)
