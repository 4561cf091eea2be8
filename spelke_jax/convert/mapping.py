"""Explicit torch-name -> Flax-path mapping tables and their validation.

A system's table is a list of `Entry(torch_name, flax_path, transform)`, written out explicitly
per parameter (see lras_mapping.py, lpq_mapping.py). `plan()` checks a checkpoint against a
table and the model's abstract parameters before any tensor is read: every Flax leaf must be
filled exactly once, every torch key must be consumed or listed as ignored, and every shape
must match after the transform; otherwise one error lists all missing / unexpected names and
shape mismatches.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

# Prefixes added by torch.compile / DDP wrappers; the original loader strips them too.
STRIP_PREFIXES = ("_orig_mod.", "_orig_module.", "module.")


class MappingError(ValueError):
  """The checkpoint does not fit the model: names missing, unexpected, or with wrong shapes."""


@dataclasses.dataclass(frozen=True)
class Transform:
  """A layout change from a torch tensor to a Flax parameter.

  `fn` maps the torch array to the Flax array; `shape_fn` maps the torch shape to the Flax shape
  without touching data (so plans are checked before reading); `inverse` maps a Flax array back
  to the torch layout (for export)."""
  name: str
  fn: Callable[[np.ndarray], np.ndarray]
  shape_fn: Callable[[tuple[int, ...]], tuple[int, ...]]
  inverse: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda x: x, lambda s: tuple(s), lambda x: x)
# nn.Linear weight [out, in] -> kernel [in, out].
LINEAR = Transform("linear_t", lambda x: x.T, lambda s: (s[1], s[0]), lambda x: x.T)
# nn.Conv2d weight [O, I, kh, kw] -> kernel [kh, kw, I, O].
CONV_OIHW_TO_HWIO = Transform("conv_oihw_to_hwio", lambda x: x.transpose(2, 3, 1, 0),
                              lambda s: (s[2], s[3], s[1], s[0]),
                              lambda x: x.transpose(3, 2, 0, 1))


def fused_qkv(n_head: int) -> Transform:
  """c_attn weight [3d, d] (rows q|k|v, heads contiguous inside each) -> kernel [d, 3, H, hs]."""
  def shape_fn(s):
    if s[0] % (3 * n_head):
      raise MappingError(f"fused qkv weight {s} does not split into 3 x {n_head} heads")
    return (s[1], 3, n_head, s[0] // (3 * n_head))
  return Transform(f"fused_qkv_split(heads={n_head})",
                   lambda x: x.T.reshape(shape_fn(x.shape)), shape_fn,
                   lambda k: k.reshape(k.shape[0], -1).T)


def attn_out(n_head: int) -> Transform:
  """c_proj weight [d, d] (input columns head-major) -> kernel [H, hs, d]."""
  def shape_fn(s):
    return (n_head, s[1] // n_head, s[0])
  return Transform(f"attn_out_split(heads={n_head})",
                   lambda x: x.T.reshape(shape_fn(x.shape)), shape_fn,
                   lambda k: k.reshape(-1, k.shape[-1]).T)


@dataclasses.dataclass(frozen=True)
class Entry:
  torch_name: str
  flax_path: str
  transform: Transform = IDENTITY


@dataclasses.dataclass(frozen=True)
class Table:
  """The mapping of one system: entries plus torch names that are deliberately not loaded."""
  system: str
  entries: tuple[Entry, ...]
  ignored: tuple[str, ...] = ()  # regexes (full match) of torch keys to skip, e.g. buffers


def strip_prefix(name: str) -> str:
  changed = True
  while changed:
    changed = False
    for p in STRIP_PREFIXES:
      if name.startswith(p):
        name, changed = name[len(p):], True
  return name


@dataclasses.dataclass(frozen=True)
class Step:
  """One conversion step: read `source` (torch key as stored), transform, write `flax_path`."""
  source: str
  flax_path: str
  transform: Transform
  shape: tuple[int, ...]


def plan(table: Table, torch_shapes: Mapping[str, Sequence[int]],
         flax_shapes: Mapping[str, Sequence[int]]) -> list[Step]:
  """Validates `table` against the checkpoint and the model, returns the ordered steps.

  torch_shapes: stored torch key -> shape. flax_shapes: 'a/b/c' Flax path -> shape.
  """
  by_name: dict[str, str] = {}
  for stored in torch_shapes:
    clean = strip_prefix(stored)
    if clean in by_name:
      raise MappingError(f"{table.system}: keys {by_name[clean]!r} and {stored!r} collide "
                         "after stripping wrapper prefixes")
    by_name[clean] = stored
  ignored = [re.compile(p) for p in table.ignored]

  problems: list[str] = []
  filled: dict[str, str] = {}
  steps: list[Step] = []
  consumed: set[str] = set()
  for e in table.entries:
    if e.flax_path in filled:
      problems.append(f"flax leaf {e.flax_path} is filled twice ({filled[e.flax_path]}, {e.torch_name})")
      continue
    filled[e.flax_path] = e.torch_name
    if e.flax_path not in flax_shapes:
      problems.append(f"mapping targets {e.flax_path}, which the model does not have")
      continue
    stored = by_name.get(e.torch_name)
    if stored is None:
      problems.append(f"missing in checkpoint: {e.torch_name} (for {e.flax_path})")
      continue
    consumed.add(e.torch_name)
    try:
      got = tuple(e.transform.shape_fn(tuple(torch_shapes[stored])))
    except MappingError as err:
      problems.append(f"{e.torch_name}: {err}")
      continue
    want = tuple(flax_shapes[e.flax_path])
    if got != want:
      problems.append(f"shape mismatch: {e.torch_name} {tuple(torch_shapes[stored])} -> {got} "
                      f"via {e.transform.name}, but {e.flax_path} is {want}")
      continue
    steps.append(Step(stored, e.flax_path, e.transform, want))
  for path in flax_shapes:
    if path not in filled:
      problems.append(f"flax leaf {path} is not filled by the mapping")
  for clean, stored in by_name.items():
    if clean not in consumed and not any(p.fullmatch(clean) for p in ignored):
      problems.append(f"unexpected key in checkpoint: {stored}")
  if problems:
    raise MappingError(f"checkpoint does not match the {table.system} model "
                       f"({len(problems)} problems):\n  " + "\n  ".join(problems))
  return steps


def flat_shapes(tree: Mapping, prefix: str = "") -> dict[str, tuple[int, ...]]:
  """{'a/b/c': shape} for a nested dict whose leaves have `.shape`."""
  out = {}
  for k, v in tree.items():
    path = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(flat_shapes(v, path + "/"))
    else:
      out[path] = tuple(v.shape)
  return out


def unflatten(flat: Iterable[tuple[str, object]]) -> dict:
  out: dict = {}
  for path, v in flat:
    node = out
    parts = path.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = v
  return out
