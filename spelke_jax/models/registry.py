"""Model families by system name: how to build a config from a dict and an abstract model.

The converter writes the system name next to the weights; the loader looks it up here.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  config_from_dict: str  # "module:callable" (dict, **overrides) -> config
  abstract: str          # "module:callable" config -> abstract nnx module (eval_shape)
  create: str            # "module:callable" (config, seed) -> initialised module
  table: str             # "module:callable" config -> convert.mapping.Table
  # "module:callable" Checkpoint -> {torch name: tensor}, for checkpoints that are not one
  # state dict (e.g. NSI's {'slot_encoder': ..., 'program_encoder': ...}); None: the default.
  state_dict_fn: str | None = None

  def get(self, field: str) -> Callable[..., Any]:
    value = getattr(self, field)
    if value is None:
      raise KeyError(f"model spec has no {field!r}")
    return resolve(value)


MODELS: dict[str, ModelSpec] = {
    "lras": ModelSpec("spelke_jax.models.lras_config:LRASConfig.from_dict",
                      "spelke_jax.models.lras:abstract", "spelke_jax.models.lras:create",
                      "spelke_jax.convert.lras_mapping:table"),
    "lpq": ModelSpec("spelke_jax.models.lpq_config:LPQConfig.from_dict",
                     "spelke_jax.models.lpq:abstract", "spelke_jax.models.lpq:create",
                     "spelke_jax.convert.lpq_mapping:table"),
    "eisen": ModelSpec("spelke_jax.models.eisen_config:EisenConfig.from_dict",
                       "spelke_jax.models.eisen:abstract", "spelke_jax.models.eisen:create",
                       "spelke_jax.convert.eisen_mapping:table"),
    "eisen_head": ModelSpec("spelke_jax.models.eisen_config:EisenConfig.from_dict",
                            "spelke_jax.models.eisen:abstract_head",
                            "spelke_jax.models.eisen:create_head",
                            "spelke_jax.convert.eisen_mapping:head_table"),
    "nsi": ModelSpec("spelke_jax.models.nsi:NSIConfig.from_dict",
                     "spelke_jax.models.nsi:abstract", "spelke_jax.models.nsi:create",
                     "spelke_jax.convert.nsi_mapping:table",
                     state_dict_fn="spelke_jax.convert.nsi_mapping:nsi_state_dict"),
    "vit": ModelSpec("spelke_jax.models.vit:ViTConfig.from_dict",
                     "spelke_jax.models.vit:abstract", "spelke_jax.models.vit:create",
                     "spelke_jax.convert.nsi_mapping:vit_table"),
}


def spec(system: str) -> ModelSpec:
  if system not in MODELS:
    raise KeyError(f"unknown model system {system!r}; known: {sorted(MODELS)}")
  return MODELS[system]


def resolve(path: str) -> Callable[..., Any]:
  """'pkg.module:Attr.attr' -> the object."""
  module, attr = path.split(":")
  obj: Any = importlib.import_module(module)
  for part in attr.split("."):
    obj = getattr(obj, part)
  return obj
