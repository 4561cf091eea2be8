"""SpelkeBench models: the interface, a registry selected by `config.model`, two baselines.

A model maps (image float32 [H,W,3] in [0,1], poke point (x, y) pixels, x = column) to a bool
mask [H,W] (the original's `SpelkeBenchModel.run_inference`). The runner passes a read-only
image (one array for all points of an image): copy it before changing it in place. Factories are registered by name:

    @register("my_model")
    def _make(config: ml_collections.ConfigDict) -> SpelkeBenchModel: ...

    model = build("my_model", config)          # or from_config(config): builds config.model

Models may define `on_device(device) -> model`: a copy whose computations run on that jax device
(the SpelkeBench runner builds one per local device). Without it the same object is used.
Modules in `_PLUGIN_MODULES` register further models (SpelkeNet) and are imported on first use.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
from scipy import ndimage

# Imported (if present) before a name is looked up; each registers its models when imported.
_PLUGIN_MODULES = ("spelke_jax.inference.spelkenet_model",)

_FACTORIES: dict[str, Callable[[Any], "SpelkeBenchModel"]] = {}
_plugins_loaded = False


@runtime_checkable
class SpelkeBenchModel(Protocol):
  """`run_inference(image float32 [H,W,3] in [0,1], poke_point (x, y)) -> bool [H,W]`.

  Optional: `on_device(device) -> SpelkeBenchModel`, a copy that computes on a jax device."""

  def run_inference(self, image: np.ndarray, poke_point: Sequence[float]) -> np.ndarray:
    ...


def on_device(model: SpelkeBenchModel, device: Any) -> SpelkeBenchModel:
  """`model.on_device(device)` if the model defines it, else `model` itself."""
  fn = getattr(model, "on_device", None)
  return model if fn is None else fn(device)


# ---- registry ------------------------------------------------------------------------------------

def register(name: str):
  """Decorator: registers `factory(config) -> SpelkeBenchModel` under `name`."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"model name must be a non-empty string, got {name!r}")

  def deco(factory):
    old = _FACTORIES.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (factory.__module__,
                                                                  factory.__qualname__):
      raise ValueError(f"model {name!r} is already registered by "
                       f"{old.__module__}.{old.__qualname__}")
    _FACTORIES[name] = factory
    return factory
  return deco


def _load_plugins() -> None:
  global _plugins_loaded
  if _plugins_loaded:
    return
  for module in _PLUGIN_MODULES:
    try:
      importlib.import_module(module)
    except ModuleNotFoundError as e:
      if e.name != module:  # the plugin exists but one of its own imports is missing
        raise
  _plugins_loaded = True


def names() -> list[str]:
  """Sorted names of the registered models (plugins included)."""
  _load_plugins()
  return sorted(_FACTORIES)


def check_name(name: str) -> None:
  """Raises ValueError naming the known models if `name` is not registered."""
  known = names()
  if name not in _FACTORIES:
    raise ValueError(f"unknown SpelkeBench model {name!r}; known models: {', '.join(known)}")


def build(name: str, config: Any = None) -> SpelkeBenchModel:
  """The model registered as `name`, built from `config` (a ConfigDict; None: defaults)."""
  check_name(name)
  if config is None:
    import ml_collections  # pylint: disable=g-import-not-at-top
    config = ml_collections.ConfigDict()
  model = _FACTORIES[name](config)
  if not callable(getattr(model, "run_inference", None)):
    raise TypeError(f"factory of model {name!r} returned {type(model).__name__}, which has no "
                    "run_inference(image, poke_point)")
  return model


def from_config(config: Any) -> SpelkeBenchModel:
  """build(config.model, config)."""
  if "model" not in config:
    raise KeyError("config has no field 'model' (the SpelkeBench model name)")
  return build(config.model, config)


# ---- input checks shared by the models -----------------------------------------------------------

def check_inputs(image: Any, poke_point: Sequence[float]) -> tuple[np.ndarray, tuple[int, int]]:
  """Validates the SpelkeBenchModel inputs -> (image float32 [H,W,3], (x, y) ints, rounded).

  Raises TypeError for a non-float image (a uint8 image must be divided by 255 first) and
  ValueError for a wrong shape, values outside [0, 1] or a point outside the image."""
  img = np.asarray(image)
  if not np.issubdtype(img.dtype, np.floating):
    raise TypeError(f"image must be float in [0, 1], got dtype {img.dtype} (divide uint8 "
                    "images by 255)")
  if img.ndim != 3 or img.shape[-1] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
    raise ValueError(f"image must be [H, W, 3], got shape {img.shape}")
  if img.size and (not np.all(np.isfinite(img)) or img.min() < 0 or img.max() > 1):
    raise ValueError(f"image values must lie in [0, 1], got range "
                     f"[{np.nanmin(img)}, {np.nanmax(img)}]")
  pt = np.asarray(poke_point, dtype=np.float64).reshape(-1)
  if pt.shape != (2,) or not np.all(np.isfinite(pt)):
    raise ValueError(f"poke_point must be (x, y), got {poke_point!r}")
  x, y = (int(v) for v in np.round(pt))
  h, w = img.shape[:2]
  if not (0 <= x < w and 0 <= y < h):
    raise ValueError(f"poke point (x, y) = ({x}, {y}) lies outside the {w}x{h} image")
  return img.astype(np.float32, copy=False), (x, y)


# ---- baselines -----------------------------------------------------------------------------------

class WholeImage:
  """Predicts the whole image for every poke (an AR / mIoU floor)."""

  def run_inference(self, image: np.ndarray, poke_point: Sequence[float]) -> np.ndarray:
    img, _ = check_inputs(image, poke_point)
    return np.ones(img.shape[:2], dtype=bool)


class FloodFill:
  """4-connected colour flood fill from the poke point: the pixels whose colour differs from the
  seed pixel's by at most `tolerance` in every channel ([0,1] units), connected to the seed."""

  def __init__(self, tolerance: float = 0.1):
    tolerance = float(tolerance)
    if not np.isfinite(tolerance) or tolerance < 0:
      raise ValueError(f"floodfill_tolerance must be >= 0, got {tolerance}")
    self.tolerance = tolerance

  def run_inference(self, image: np.ndarray, poke_point: Sequence[float]) -> np.ndarray:
    img, (x, y) = check_inputs(image, poke_point)
    close = np.max(np.abs(img - img[y, x]), axis=-1) <= np.float32(self.tolerance)
    labels, _ = ndimage.label(close)  # default structure in 2-D: 4-connectivity
    return labels == labels[y, x]


@register("whole_image")
def _whole_image(config: Any) -> WholeImage:
  del config
  return WholeImage()


@register("floodfill")
def _floodfill(config: Any) -> FloodFill:
  return FloodFill(config.get("floodfill_tolerance", 0.1))
