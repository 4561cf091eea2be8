"""spelke_jax entry point: one absl app that dispatches on `config.mode`.

    python -m spelke_jax.main --config=configs/convert.py --workdir=out/demo
    python -m spelke_jax.main --config=configs/convert.py --config.system=lras \
        --config.src=SpelkeNet1B.pt --workdir=out/spelkenet_1b

Each config file's docstring shows the command that runs it. `--config.a.b=v` overrides are
type-checked against the config's existing fields. The config is written to the workdir.
Set SPELKE_JAX_DISTRIBUTED=1 on every host of a multi-host job (jax.distributed.initialize()).
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from spelke_jax import logs

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the run writes its outputs.")
flags.mark_flags_as_required(["config", "workdir"])

# config.mode -> "module:function(config, workdir)"; later issues add train, eval, poke, bench.
MODES = {
    "convert": "spelke_jax.convert.run:run",
    "poke": "spelke_jax.inference.poke_mode:run",
    "train": "spelke_jax.train.run:run",
    "eval": "spelke_jax.train.run:run",
    "spelkebench": "spelke_jax.evals.run_spelkebench:run",
    "bench": "spelke_jax.bench:run",
}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if os.environ.get("SPELKE_JAX_DISTRIBUTED"):
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  logs.quiet_libraries()
  config = _CONFIG.value
  if config.mode not in MODES:
    raise app.UsageError(f"unknown config.mode {config.mode!r}; known: {sorted(MODES)}")
  workdir = Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / f"{config.mode}_config.json").write_text(config.to_json_best_effort(indent=2))
  module, fn = MODES[config.mode].split(":")
  logging.info("mode %s, workdir %s", config.mode, workdir)
  getattr(importlib.import_module(module), fn)(config, workdir)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
