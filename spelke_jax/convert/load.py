"""Loads a converted checkpoint (see convert.py) back into an nnx model with one call.

    model = load_converted("out/spelkenet_1b")                        # single device
    model = load_converted("out/spelkenet_1b", mesh=mesh, rules="tp") # born sharded
    model = load_converted(path, param_dtype="bfloat16", dtype="bfloat16")  # dtype policy

Parameters are restored by Orbax directly into their target shardings, so a model larger than
one device's memory never materialises on one device. Checkpoints stored as int8 (int8.py) are
restored as int8 in those shardings and dequantized there, to the model's dtype.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from spelke_jax import sharding as sharding_lib
from spelke_jax.convert import int8
from spelke_jax.convert.convert import CONFIG_FILE, PARAMS_DIR
from spelke_jax.convert.mapping import unflatten
from spelke_jax.models import registry


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
  path = Path(path)
  cfg = path / CONFIG_FILE
  if not cfg.exists():
    raise FileNotFoundError(f"{path} is not a converted checkpoint: no {CONFIG_FILE}")
  return json.loads(cfg.read_text())


def load_config(path: str | os.PathLike, **overrides):
  meta = read_meta(path)
  return registry.spec(meta["system"]).get("config_from_dict")(meta["model_config"], **overrides)


def load_converted(path: str | os.PathLike, *, mesh: Mesh | None = None,
                   rules: str | Mapping[str, Any] = "dp", **config_overrides) -> nnx.Module:
  """The model stored at `path`, optionally placed on `mesh` by logical-axis `rules`
  (a name from sharding.RULES or a mapping). `config_overrides` change e.g. the dtype policy."""
  from orbax.checkpoint import v1 as ocp  # pylint: disable=g-import-not-at-top

  path = Path(path).absolute()
  meta = read_meta(path)
  spec = registry.spec(meta["system"])
  config = spec.get("config_from_dict")(meta["model_config"], **config_overrides)
  graphdef, state = nnx.split(spec.get("abstract")(config))
  flat = list(nnx.to_flat_state(state))
  if mesh is not None:
    rules = sharding_lib.RULES[rules] if isinstance(rules, str) else rules
    shardings = sharding_lib.param_shardings(state, mesh, rules)
  else:
    device = jax.devices()[0]
    shardings = {p: jax.sharding.SingleDeviceSharding(device) for p, _ in flat}
  names = {path_: "/".join(str(p) for p in path_) for path_, _ in flat}
  quantized = set()
  if meta.get("store_dtype") == int8.STORE_DTYPE:
    quantized = int8.check_variables(meta.get(int8.META_KEY), set(names.values()), str(path))
  leaves = []
  for path_, var in flat:
    name, where = names[path_], shardings[path_]
    if name in quantized:
      leaves.append((name, jax.ShapeDtypeStruct(var.shape, jnp.int8, sharding=where)))
      replicated = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh
                    is not None else where)
      leaves.append((f"{int8.SCALES_KEY}/{name}",
                     jax.ShapeDtypeStruct(var.shape[-1:], jnp.float32, sharding=replicated)))
    else:
      leaves.append((name, jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=where)))
  restored = ocp.load(path / PARAMS_DIR, unflatten(leaves))
  for path_, var in flat:
    value = _at(restored, names[path_])
    if names[path_] in quantized:
      value = _dequantize(value, _at(restored, f"{int8.SCALES_KEY}/{names[path_]}"), var.dtype,
                          shardings[path_])
    var.set_value(value)
  return nnx.merge(graphdef, state)


def _at(tree: dict, name: str):
  for p in name.split("/"):
    tree = tree[p]
  return tree


def _dequantize(q: jax.Array, scale: jax.Array, dtype, sharding) -> jax.Array:
  """An int8-stored variable back in `dtype`, placed like its model variable."""
  return jax.jit(int8.dequantize, static_argnums=2, out_shardings=sharding)(q, scale, dtype)


def load_torch(src: str | os.PathLike, system: str, *, config: Mapping[str, Any] | None = None,
               mesh: Mesh | None = None, rules: str | Mapping[str, Any] = "dp",
               **load_overrides) -> nnx.Module:
  """Converts a PyTorch checkpoint into a temporary Orbax checkpoint and loads it: one call
  from an original `.pt` to a model (the parity tools use it). `config` (original names)
  overrides the checkpoint's saved `cfg`; `load_overrides` change the loaded config (dtypes)."""
  import tempfile  # pylint: disable=g-import-not-at-top
  from spelke_jax.convert.convert import convert_checkpoint  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory(prefix="spelke_jax_convert_") as tmp:
    path = convert_checkpoint(src, Path(tmp) / "model", system, config_overrides=config,
                              progress=False)
    return load_converted(path, mesh=mesh, rules=rules, **load_overrides)
