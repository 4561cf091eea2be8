"""The KProp-iterations ablation of a trained EISEN (the paper's Table 3): matched mIoU for
several numbers of KProp iterations, as a table (JSON + markdown) and a plot (PNG).

    python tools/eisen_ablation.py --config=configs/eisen_synth.py \
        --config.checkpoint=out/eisen_synth --config.dataset_path=out/synth_eval.h5 \
        --iters=1,10,20,40 --out=out/eisen_ablation

Every other setting (model, resolution, sampling) comes from the config, as in the eval mode.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from spelke_jax.evals.viz import save_text

_CONFIG = config_flags.DEFINE_config_file("config", None, "EISEN config file, e.g. configs/eisen_synth.py.")
_ITERS = flags.DEFINE_list("iters", ["1", "10", "20", "40"], "KProp iterations to evaluate.")
_OUT = flags.DEFINE_string("out", None, "Output directory.", required=True)


def plot_png(path: Path, xs, ys, title: str) -> None:
  """A small line plot (numpy + Pillow): mIoU against KProp iterations."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  w, h, m = 480, 320, 50
  img = Image.new("RGB", (w, h), "white")
  d = ImageDraw.Draw(img)
  d.text((m, 10), title, fill="black")
  d.line([(m, h - m), (w - 20, h - m)], fill="black")
  d.line([(m, h - m), (m, 30)], fill="black")
  x0, x1 = min(xs), max(xs)
  px = lambda x: m + (x - x0) / max(x1 - x0, 1) * (w - 20 - m - 10)
  py = lambda y: h - m - y * (h - m - 30)
  for t in np.linspace(0, 1, 6):
    d.text((5, py(t) - 6), f"{t:.1f}", fill="black")
    d.line([(m - 3, py(t)), (m, py(t))], fill="black")
  pts = [(px(x), py(y)) for x, y in zip(xs, ys)]
  d.line(pts, fill=(40, 90, 200), width=2)
  for (x, y), (vx, vy) in zip(pts, zip(xs, ys)):
    d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(40, 90, 200))
    d.text((x - 8, h - m + 5), str(vx), fill="black")
    d.text((x - 12, y - 16), f"{vy:.3f}", fill="black")
  d.text((w // 2 - 40, h - 20), "KProp iterations", fill="black")
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
  img.save(tmp)
  os.replace(tmp, path)


def ablation(config, iters, out: Path) -> list[dict]:
  """Evaluates config.checkpoint at each KProp iteration count; writes ablation.{json,md,png}
  and one eval folder per count under `out`; returns the rows."""
  from spelke_jax.train import eisen as trainer  # pylint: disable=g-import-not-at-top
  out.mkdir(parents=True, exist_ok=True)
  model = trainer.build_model(config)
  trainer.restore_weights(Path(config.checkpoint), model, config)
  rows = []
  for it in iters:
    with config.unlocked():
      config.model.propagation_iters = int(it)
    m = trainer.evaluate_model(model, config, out / f"iters_{it}", max_images=config.eval_images)
    rows.append({"kprop_iters": int(it), "mIoU": m["mIoU"], "num_images": m["num_images"],
                 "mIoU_agent_scenes": m["mIoU_agent_scenes"]})
  table = ["| KProp iterations | matched mIoU | agent scenes |", "|---|---|---|"] + [
      f"| {r['kprop_iters']} | {r['mIoU']:.4f} | {r['mIoU_agent_scenes']:.4f} |" for r in rows]
  save_text(out / "ablation.json", json.dumps(rows, indent=2))
  save_text(out / "ablation.md", "\n".join(table) + "\n")
  plot_png(out / "ablation.png", [r["kprop_iters"] for r in rows], [r["mIoU"] for r in rows],
           "EISEN: matched mIoU vs KProp iterations")
  print("\n".join(table))
  return rows


def main(argv):
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("--config=<EISEN config file> is required (e.g. configs/eisen_synth.py)")
  if not _CONFIG.value.checkpoint:
    raise app.UsageError("--config.checkpoint=<EISEN training workdir> is required")
  ablation(_CONFIG.value, [int(v) for v in _ITERS.value], Path(_OUT.value))


if __name__ == "__main__":
  app.run(main)
