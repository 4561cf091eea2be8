"""Ships trained synthetic-world models as the embedded defaults (assets/), with their metrics.

    python tools/ship_synth_models.py --spelkenet=out/lras_synth/export --eisen=out/eisen_synth \
        --out=assets

Writes (each to a temporary name, renamed when complete):
  synth_eval<R>.h5      the held-out sets (seed 7, 40 scenes; R = each model's resolution)
  synth_spelkenet/      lras/, rgb_quantizer/, flow_quantizer/ (converted Orbax directories;
                        stored as --store_dtype / --tokenizer_store_dtype),
                        flow_table.npz, reference_metrics.json
  synth_eisen/          converted Orbax directory (--store_dtype), reference_metrics.json
reference_metrics.json holds what the default commands print on the shipped set (computed here
from the shipped files, after the storage rounding) with per-image rows;
tests/evals/test_run_spelkebench.py and tests/train/test_shipped_eisen.py check that the shipped
files still reproduce them.
--spelkenet is a LRAS trainer's export/ (lras.pt, rgb_quantizer.pt, flow_quantizer.pt,
flow_table.npz) or an already shipped synth_spelkenet/; --eisen an EISEN training workdir or an
already shipped synth_eisen/ (to re-store shipped models, e.g. as int8:
`--spelkenet=assets/synth_spelkenet --eisen=assets/synth_eisen --store_dtype=int8
--tokenizer_store_dtype=int8`). Either may be left out.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from absl import app, flags, logging

_SPELKENET = flags.DEFINE_string("spelkenet", "", "LRAS trainer export/ directory.")
_EISEN = flags.DEFINE_string("eisen", "", "EISEN training workdir.")
_OUT = flags.DEFINE_string("out", "assets", "Output directory.")
_SEED = flags.DEFINE_integer("seed", 7, "Seed of the held-out set.")
_NUM = flags.DEFINE_integer("num", 40, "Scenes in the held-out set.")
_STORE_DTYPE = flags.DEFINE_string(
    "store_dtype", "bfloat16",
    "Storage of the transformer and EISEN: a float dtype, 'int8' (per-channel weight "
    "quantization, spelke_jax/convert/int8.py) or '' (as trained).")
_TOKENIZER_STORE_DTYPE = flags.DEFINE_string("tokenizer_store_dtype", "",
                                             "Storage of the two LPQ tokenizers (same choices).")
_NOTE = flags.DEFINE_string("note", "", "Provenance text stored with the metrics (commands, steps).")


def write_eval_set(out: Path, resolution: int) -> Path:
  from spelke_jax.data.synthetic import generate, write_synthetic_h5  # pylint: disable=g-import-not-at-top
  path = out / f"synth_eval{resolution}.h5"
  write_synthetic_h5(path, generate(_SEED.value, _NUM.value, resolution))
  return path


def reference(metrics: dict, command: str, row_keys: tuple[str, ...]) -> dict:
  """The headline numbers, the command that prints them and per-image rows (row_keys)."""
  rows = [{k: r.get(k) for k in row_keys} for r in metrics["per_image"]]
  head = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and k != "timing"}
  return {**head, "command": command, "note": _NOTE.value, "per_image": rows}


def write_json(path: Path, obj: dict) -> None:
  from spelke_jax.evals import viz  # pylint: disable=g-import-not-at-top
  viz.save_text(path, json.dumps(obj, indent=2))  # atomic; no temporary file left on failure


def ship_spelkenet(src: Path, out: Path) -> dict:
  import ml_collections  # pylint: disable=g-import-not-at-top
  from spelke_jax import config_files  # pylint: disable=g-import-not-at-top
  from spelke_jax.convert.load import load_converted, load_torch  # pylint: disable=g-import-not-at-top
  from spelke_jax.convert.save import save_converted  # pylint: disable=g-import-not-at-top
  from spelke_jax.evals import run_spelkebench  # pylint: disable=g-import-not-at-top
  from spelke_jax.inference import prompt, spelkenet_model  # pylint: disable=g-import-not-at-top

  dest = out / spelkenet_model.SHIPPED_DIR.name
  tmp = out / f".{dest.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  def load(name, system):  # a converted directory (shipped layout) or the trainer's .pt
    return load_converted(src / name) if (src / name).is_dir() else load_torch(
        src / f"{name}.pt", system)
  lras = load("lras", "lras")
  save_converted(lras, "lras", tmp / "lras", store_dtype=_STORE_DTYPE.value or None,
                 source="LRAS trained on the synthetic Spelke world (configs/train_lras_synth.py)")
  for name in ("rgb_quantizer", "flow_quantizer"):
    save_converted(load(name, "lpq"), "lpq", tmp / name,
                   store_dtype=_TOKENIZER_STORE_DTYPE.value or None,
                   source=f"LPQ trained on the synthetic Spelke world (configs/train_lpq_synth.py)")
  shutil.copy(src / "flow_table.npz", tmp / "flow_table.npz")
  if dest.exists():
    shutil.rmtree(dest)
  os.replace(tmp, dest)

  res = prompt.LPQ_STRIDE * lras.config.patch_size * lras.config.patch_grid
  data = write_eval_set(out, res)
  config = config_files.load("configs/spelkebench.py")
  config.dataset_path = str(data)
  # the files just written (what the default command loads when --out is assets/)
  config.update(lras_checkpoint=str(dest / "lras"), rgb_checkpoint=str(dest / "rgb_quantizer"),
                flow_checkpoint=str(dest / "flow_quantizer"),
                flow_table=str(dest / "flow_table.npz"))
  config = ml_collections.FrozenConfigDict(config)
  with tempfile.TemporaryDirectory() as wd:
    metrics = run_spelkebench.run(config, Path(wd))
  command = "python -m spelke_jax.main --config=configs/spelkebench.py --workdir=out/spelkebench_demo"
  ref = reference(metrics, command, ("name", "AR", "mIoU"))
  write_json(dest / "reference_metrics.json", ref)
  return ref


def ship_eisen(workdir: Path, out: Path) -> dict:
  import ml_collections  # pylint: disable=g-import-not-at-top
  from spelke_jax import config_files  # pylint: disable=g-import-not-at-top
  from spelke_jax.convert.save import save_converted  # pylint: disable=g-import-not-at-top
  from spelke_jax.train import eisen as trainer  # pylint: disable=g-import-not-at-top

  from spelke_jax.convert.convert import CONFIG_FILE  # pylint: disable=g-import-not-at-top
  if (workdir / CONFIG_FILE).exists():  # an already converted (shipped) EISEN
    config = config_files.load("configs/eisen_synth.py")
  else:
    config = ml_collections.ConfigDict(json.loads((workdir / "train_config.json").read_text()))
  model = trainer.build_model(config)
  trainer.restore_weights(workdir, model, config)
  dest = out / "synth_eisen"
  save_converted(model, "eisen", dest, store_dtype=_STORE_DTYPE.value or None, overwrite=True,
                 source="EISEN trained on the synthetic Spelke world (configs/eisen_synth.py)")
  data = write_eval_set(out, int(config.data.resolution))
  ev = config_files.load("configs/eisen_synth.py")
  ev.mode = "eval"
  ev.dataset_path = str(data)
  ev.checkpoint = str(dest)
  with tempfile.TemporaryDirectory() as wd:
    metrics = trainer.evaluate(ev, Path(wd))
  command = ("python -m spelke_jax.main --config=configs/eisen_synth.py --config.mode=eval "
             "--workdir=out/eisen_synth_eval")
  ref = reference(metrics, command, ("key", "mIoU", "has_agent", "dragged_IoU"))
  write_json(dest / "reference_metrics.json", ref)
  return ref


def main(argv):
  del argv
  from spelke_jax import logs  # pylint: disable=g-import-not-at-top
  logs.quiet_libraries()
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  if _SPELKENET.value:
    ref = ship_spelkenet(Path(_SPELKENET.value), out)
    logging.info("shipped SpelkeNet: AR %.4f, mIoU %.4f", ref["AR"], ref["mIoU"])
  if _EISEN.value:
    ref = ship_eisen(Path(_EISEN.value), out)
    logging.info("shipped EISEN: matched mIoU %.4f (agent scenes %.4f)", ref["mIoU"],
                 ref["mIoU_agent_scenes"])


if __name__ == "__main__":
  app.run(main)
