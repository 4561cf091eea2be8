"""Reads PyTorch checkpoints without torch and without executing pickled code.

`torch.save` writes a zip archive: `<root>/data.pkl` (a pickle of the saved object in which every
tensor is a call to `torch._utils._rebuild_tensor_v2` on a persistent storage id) and one raw
file per storage under `<root>/data/<key>`. We unpickle `data.pkl` with a restricted unpickler:
only the handful of globals a state dict needs are resolved, each to a function of ours; any
other global is refused with an error that names it. Tensors come back as `TensorRef`s that
read their own bytes on demand, straight into the result, so a file larger than RAM can be
converted one tensor at a time.

Also reads `.safetensors` (parsed here: an 8-byte header length, a JSON header, raw bytes) and
`.npz` (numpy, `allow_pickle=False`).
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import mmap
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import ml_dtypes
import numpy as np


class CheckpointError(ValueError):
  """A checkpoint that cannot be read safely: corrupted, truncated, unknown or malicious."""


# ---- Tensors ---------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _FileSpan:
  """`nbytes` raw bytes at `offset` in `path` (an uncompressed zip member or a raw blob)."""
  path: Path
  offset: int
  nbytes: int


@dataclasses.dataclass(frozen=True)
class TensorRef:
  """A tensor not yet read: `shape`, `dtype`, and where its elements live.

  `read()` reads just the bytes it needs into a fresh, C-contiguous, 64-byte aligned array
  (see `empty_aligned`), so memory stays near one tensor at a time.
  """
  name: str
  shape: tuple[int, ...]
  dtype: np.dtype
  span: _FileSpan | None = None
  offset_elems: int = 0
  strides_elems: tuple[int, ...] | None = None  # None: C-contiguous
  loader: Callable[[], np.ndarray] | None = None  # for members that cannot be mapped

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

  def read(self) -> np.ndarray:
    if self.span is not None:
      # Also before a loader (a compressed torch member): as_strided does no bounds checks.
      self._check_extent()
    if self.loader is not None:
      arr = self.loader()
      if arr.shape != self.shape:
        raise CheckpointError(f"tensor {self.name!r}: stored shape {arr.shape} != {self.shape}")
      # np.array, not np.ascontiguousarray: the latter turns a 0-d array into shape (1,).
      return np.array(arr, order="C", copy=True)
    numel = int(np.prod(self.shape, dtype=np.int64))
    if numel == 0:
      return np.zeros(self.shape, self.dtype)
    itemsize = np.dtype(self.dtype).itemsize
    strides = self.strides_elems or _contiguous_strides(self.shape)
    file_size = self.span.path.stat().st_size
    if self.span.offset + self.span.nbytes > file_size:
      raise CheckpointError(
          f"tensor {self.name!r}: its bytes end at {self.span.offset + self.span.nbytes} but "
          f"{self.span.path} has {file_size} bytes: the checkpoint is truncated")
    start = self.span.offset + self.offset_elems * itemsize
    if strides == _contiguous_strides(self.shape):
      # Read straight into the result: one copy of the tensor in memory, none in the page
      # tables (a memory map would add the mapped file pages to this process's RSS).
      out = empty_aligned(self.shape, self.dtype)
      _read_into(self.span.path, start, out, self.name)
      return out
    extent = self._check_extent()
    flat = empty_aligned((extent,), self.dtype)
    _read_into(self.span.path, start, flat, self.name)
    view = np.lib.stride_tricks.as_strided(
        flat, shape=self.shape, strides=tuple(st * itemsize for st in strides), writeable=False)
    out = empty_aligned(self.shape, self.dtype)
    np.copyto(out, view)
    return out

  def _check_extent(self) -> int:
    """The elements addressed by shape/offset/strides must lie inside the storage; returns how
    many elements from the offset on they span."""
    if int(np.prod(self.shape, dtype=np.int64)) == 0:
      return 0
    itemsize = np.dtype(self.dtype).itemsize
    strides = self.strides_elems or _contiguous_strides(self.shape)
    extent = 1 + sum((s - 1) * st for s, st in zip(self.shape, strides) if s > 0)
    if self.offset_elems < 0 or (self.offset_elems + extent) * itemsize > self.span.nbytes:
      raise CheckpointError(
          f"tensor {self.name!r} (shape {self.shape}, offset {self.offset_elems}) reaches past the "
          f"end of its storage ({self.span.nbytes} bytes): the checkpoint is corrupted")
    return extent


_MMAP_MIN_BYTES = 1 << 20


def empty_aligned(shape: tuple[int, ...], dtype) -> np.ndarray:
  """An uninitialised C-contiguous array whose data is 64-byte aligned.

  Large ones get their own anonymous memory map, so freeing them returns the memory to the OS
  at once (no heap fragmentation across many tensors of different sizes)."""
  dtype = np.dtype(dtype)
  shape = tuple(int(s) for s in shape)
  count = int(np.prod(shape, dtype=np.int64))
  nbytes = count * dtype.itemsize
  if nbytes >= _MMAP_MIN_BYTES:
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=count).reshape(shape)
  buf = np.empty(nbytes + 64, np.uint8)
  start = (-buf.ctypes.data) % 64
  return buf[start:start + nbytes].view(dtype).reshape(shape)


def _read_into(path: Path, offset: int, out: np.ndarray, name: str) -> None:
  """Fills the C-contiguous `out` with the bytes of `path` from `offset` on."""
  view = memoryview(out.reshape(-1).view(np.uint8))
  with open(path, "rb", buffering=0) as f:
    f.seek(offset)
    done = 0
    while done < len(view):
      n = f.readinto(view[done:])
      if not n:
        raise CheckpointError(f"tensor {name!r}: {path} ended after {offset + done} bytes: the "
                              "checkpoint is truncated")
      done += n


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
  strides, acc = [], 1
  for s in reversed(shape):
    strides.append(acc)
    acc *= max(int(s), 1)
  return tuple(reversed(strides))


# ---- The restricted unpickler ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _StorageRef:
  dtype: np.dtype
  span: _FileSpan | None
  key: str
  loader: Callable[[], bytes] | None = None


class ConfigObject(dict):
  """A known config object from the pickle (e.g. an LRAS dataclass or argparse.Namespace),
  kept as a plain dict of its fields; `class_name` records what it was."""

  def __init__(self, class_name: str):
    super().__init__()
    self.class_name = class_name

  def __setstate__(self, state):
    if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
      state = {**(state[0] or {}), **(state[1] or {})}
    if not isinstance(state, dict):
      raise CheckpointError(f"config object {self.class_name} has a non-dict state")
    self.update(state)


def _is_known_config_class(module: str, name: str) -> bool:
  """Config dataclasses of the original code (also under its old name `ccwm`)."""
  root = module.split(".")[0]
  return root in ("spelke_net", "ccwm") and name.endswith("Config")


def _rebuild_tensor(storage: _StorageRef, storage_offset, size, stride, *unused) -> TensorRef:
  if not isinstance(storage, _StorageRef):
    raise CheckpointError("tensor rebuilt from something that is not a storage")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
    raise CheckpointError(f"tensor with malformed size {size} / stride {stride}")
  loader = None
  if storage.loader is not None:
    raw_loader = storage.loader

    def loader(dtype=storage.dtype, off=int(storage_offset),
               count=storage.span.nbytes // np.dtype(storage.dtype).itemsize):
      flat = np.frombuffer(raw_loader(), dtype=dtype, count=count)
      return np.lib.stride_tricks.as_strided(
          flat[off:], shape=size, strides=tuple(s * flat.itemsize for s in stride))
  return TensorRef(name=f"storage {storage.key}", shape=size, dtype=np.dtype(storage.dtype),
                   span=storage.span, offset_elems=int(storage_offset), strides_elems=stride,
                   loader=loader)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
  return data


def _ordered_dict(*args):
  return collections.OrderedDict(*args)


def _codecs_encode(obj, encoding="latin1"):
  """Protocol-2 pickles spell bytes as `_codecs.encode(str, 'latin1')`."""
  if not isinstance(obj, str):
    raise CheckpointError("_codecs.encode called on a non-string")
  return obj.encode(encoding)


# numpy arrays pickled inside a checkpoint (e.g. the flow-token table): rebuilt by these stand-ins
# from their raw bytes; object and structured dtypes are refused (they would hold more pickles).
_NUMPY_KINDS = "biufc?"


class _NumpyDtype:
  """Stand-in for numpy.dtype(name, align, copy) followed by BUILD(state)."""

  def __init__(self, name, align=False, copy=False):
    del align, copy
    try:
      dt = np.dtype(str(name))
    except TypeError as e:
      raise CheckpointError(f"unsupported numpy dtype {name!r} in checkpoint") from e
    if dt.kind not in _NUMPY_KINDS or dt.fields is not None or dt.subdtype is not None:
      raise CheckpointError(f"refusing numpy dtype {name!r}: only plain numeric arrays are loaded")
    self.dtype = dt

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) < 2:
      raise CheckpointError("malformed numpy dtype state in checkpoint")
    if any(x is not None for x in state[2:5]):
      raise CheckpointError("refusing a structured numpy dtype in checkpoint")
    if state[1] in ("<", ">", "|", "="):
      self.dtype = self.dtype.newbyteorder(state[1]) if state[1] != "|" else self.dtype


class _NdarrayMarker:
  """Stands for the class numpy.ndarray (only ever passed to _reconstruct)."""


class _NumpyArray:
  """Stand-in for numpy.core.multiarray._reconstruct(ndarray, ...) followed by BUILD(state)."""

  def __init__(self, cls, *unused):
    if cls is not _NdarrayMarker:
      raise CheckpointError("numpy _reconstruct of a class other than ndarray")
    self.array = None

  def __setstate__(self, state):
    if not isinstance(state, tuple) or len(state) != 5:
      raise CheckpointError("malformed numpy array state in checkpoint")
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, _NumpyDtype) or not isinstance(raw, (bytes, bytearray)):
      raise CheckpointError("refusing a numpy array that is not plain numeric bytes")
    shape = tuple(int(v) for v in shape)
    need = int(np.prod(shape, dtype=np.int64)) * dtype.dtype.itemsize
    if len(raw) != need:
      raise CheckpointError(f"numpy array of shape {shape} holds {len(raw)} bytes, needs {need}")
    arr = np.frombuffer(bytes(raw), dtype=dtype.dtype).reshape(shape, order="F" if fortran else "C")
    self.array = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("=")))


def _numpy_scalar(dtype, raw=None):
  if not isinstance(dtype, _NumpyDtype) or not isinstance(raw, (bytes, bytearray)):
    raise CheckpointError("malformed numpy scalar in checkpoint")
  if len(raw) != dtype.dtype.itemsize:
    raise CheckpointError("numpy scalar with the wrong number of bytes")
  return np.frombuffer(bytes(raw), dtype=dtype.dtype)[0]


def _numpy_globals() -> dict[tuple[str, str], Any]:
  out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): _NdarrayMarker,
                                     ("numpy", "dtype"): _NumpyDtype}
  for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    out[(mod, "_reconstruct")] = _NumpyArray
    out[(mod, "scalar")] = _numpy_scalar
  return out


def _resolve_numpy(obj, path: str = ""):
  """Replaces _NumpyArray stand-ins by TensorRefs over their arrays (recursively)."""
  if isinstance(obj, _NumpyArray):
    if obj.array is None:
      raise CheckpointError(f"numpy array at {path or 'top level'} has no data")
    arr = obj.array
    return TensorRef(name=path, shape=arr.shape, dtype=arr.dtype, loader=lambda a=arr: a)
  if isinstance(obj, (_NumpyDtype, _NdarrayMarker)):
    raise CheckpointError(f"stray numpy object at {path or 'top level'} in checkpoint")
  if isinstance(obj, dict):
    for k in list(obj):
      obj[k] = _resolve_numpy(obj[k], f"{path}/{k}")
    return obj
  if isinstance(obj, list):
    return [_resolve_numpy(v, f"{path}/{i}") for i, v in enumerate(obj)]
  if isinstance(obj, tuple):
    return tuple(_resolve_numpy(v, f"{path}/{i}") for i, v in enumerate(obj))
  return obj


_NUMPY = _numpy_globals()


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only allow-listed globals, each to our own function; refuses everything else."""

  _ALLOWED: dict[tuple[str, str], Any] = {
      ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
      ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
      ("collections", "OrderedDict"): _ordered_dict,
      ("_codecs", "encode"): _codecs_encode,
  }

  def __init__(self, file, storage_resolver: Callable[[str, np.dtype, int], _StorageRef]):
    super().__init__(file)
    self._storage_resolver = storage_resolver

  def find_class(self, module: str, name: str):
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    if (module, name) in _NUMPY:
      return _NUMPY[(module, name)]
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    if module == "argparse" and name == "Namespace":
      return lambda *a, **k: ConfigObject("argparse.Namespace")
    if _is_known_config_class(module, name):
      cls_name = f"{module}.{name}"

      class _Config(ConfigObject):
        def __new__(cls, *a, **k):
          return ConfigObject.__new__(cls)

        def __init__(self, *a, **k):
          ConfigObject.__init__(self, cls_name)
      return _Config
    raise CheckpointError(
        f"refusing to load global {module}.{name}: the checkpoint asks to run code that a "
        "weights file never needs (only tensors, dicts and known config objects are allowed)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
      raise CheckpointError(f"unknown persistent id in checkpoint: {pid!r:.100}")
    _, storage_type, key, _location, numel = pid[:5]
    if isinstance(storage_type, type) and issubclass(storage_type, np.generic):
      dtype = np.dtype(storage_type)
    elif isinstance(storage_type, np.dtype):
      dtype = storage_type
    else:
      raise CheckpointError(f"unknown storage type {storage_type!r} for storage {key}")
    return self._storage_resolver(str(key), dtype, int(numel))


# ---- Containers ------------------------------------------------------------------------------

@dataclasses.dataclass
class Checkpoint:
  """What a checkpoint file holds: `root` is the unpickled object (dicts, lists, numbers,
  strings, `ConfigObject`s) with every tensor replaced by a `TensorRef`."""
  path: Path
  root: Any
  format: str

  def state_dict(self) -> dict[str, TensorRef]:
    """The weights: `root['model']` or `root['weights']` when present, else `root` itself
    (flat name -> TensorRef). Non-tensor entries raise."""
    root = self.root
    if isinstance(root, dict):
      for k in ("model", "weights", "state_dict"):
        if k in root and isinstance(root[k], dict):
          root = root[k]
          break
    if not isinstance(root, dict):
      raise CheckpointError(f"{self.path}: found no state dict (top level is {type(root).__name__})")
    bad = [k for k, v in root.items() if not isinstance(v, TensorRef)]
    if bad:
      raise CheckpointError(f"{self.path}: state dict entries that are not tensors: {bad[:5]}")
    return {str(k): dataclasses.replace(v, name=str(k)) for k, v in root.items()}

  def config(self) -> dict[str, Any] | None:
    """The saved model config (`root['cfg']`) as a plain dict, if any."""
    if isinstance(self.root, dict) and isinstance(self.root.get("cfg"), dict):
      return _plain(self.root["cfg"])
    return None


def _plain(obj):
  if isinstance(obj, dict):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  return obj


def _zip_member_span(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> _FileSpan | None:
  """Byte span of an uncompressed member's data, or None when it is compressed."""
  if info.compress_type != zipfile.ZIP_STORED:
    return None
  with open(path, "rb") as f:
    f.seek(info.header_offset)
    header = f.read(30)
  if len(header) < 30 or header[:4] != b"PK\x03\x04":
    raise CheckpointError(f"{path}: zip member {info.filename} has a corrupted local header")
  name_len, extra_len = struct.unpack("<HH", header[26:30])
  return _FileSpan(path, info.header_offset + 30 + name_len + extra_len, info.file_size)


# What zipfile raises on corrupted archives (bad central directory, bad local header, CRC).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError,
               struct.error, NotImplementedError, KeyError)


def _read_torch_zip(path: Path) -> Checkpoint:
  try:
    zf = zipfile.ZipFile(path)
  except _ZIP_ERRORS as e:
    raise CheckpointError(
        f"{path} is not a readable torch zip archive ({e}); it may be truncated, or saved in the "
        "legacy pre-1.6 format (re-save it with torch.save from torch>=1.6)") from e
  with zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
    if len(pkl) != 1:
      raise CheckpointError(f"{path}: expected one data.pkl in the archive, found {len(pkl)}")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = prefix + "byteorder"
    try:
      order = zf.read(byteorder).strip() if byteorder in names else b"little"
    except _ZIP_ERRORS as e:
      raise CheckpointError(f"{path}: cannot read {byteorder} ({e}): the file is corrupted") from e
    if order not in (b"little", b""):
      raise CheckpointError(f"{path}: big-endian checkpoints are not supported")
    infos = {i.filename: i for i in zf.infolist()}

    def resolve(key: str, dtype: np.dtype, numel: int) -> _StorageRef:
      member = f"{prefix}data/{key}"
      info = infos.get(member)
      if info is None:
        raise CheckpointError(f"{path}: storage {key} referenced by the pickle is missing")
      need = numel * np.dtype(dtype).itemsize
      if info.file_size < need:
        raise CheckpointError(f"{path}: storage {key} holds {info.file_size} bytes, needs {need}")
      span = _zip_member_span(path, zf, info)
      if span is None:
        return _StorageRef(dtype, _FileSpan(path, 0, need), key,
                           loader=lambda m=member: _read_member(path, m))
      return _StorageRef(dtype, dataclasses.replace(span, nbytes=need), key)

    try:
      data = zf.read(pkl[0])
    except _ZIP_ERRORS as e:
      raise CheckpointError(f"{path}: cannot read data.pkl ({e}): the file is corrupted") from e
    try:
      root = _resolve_numpy(_RestrictedUnpickler(io.BytesIO(data), resolve).load())
    except CheckpointError:
      raise
    except Exception as e:  # malformed pickle streams raise many kinds of errors
      raise CheckpointError(f"{path}: malformed pickle in data.pkl ({type(e).__name__}: {e})") from e
  return Checkpoint(path=path, root=root, format="torch")


def _read_member(path: Path, member: str) -> bytes:
  try:
    with zipfile.ZipFile(path) as zf:
      return zf.read(member)
  except _ZIP_ERRORS as e:
    raise CheckpointError(f"{path}: cannot read {member} ({e}): the file is corrupted") from e


def _read_safetensors(path: Path) -> Checkpoint:
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise CheckpointError(f"{path}: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n > min(size - 8, 100 << 20):
      raise CheckpointError(f"{path}: safetensors header length {n} is corrupt or truncated")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:  # JSONDecodeError, and UnicodeDecodeError for non-UTF-8 bytes
      raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from e
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: safetensors header is a {type(header).__name__}, not a dict")
  base = 8 + n
  meta = header.pop("__metadata__", None) or {}
  tensors = {}
  for name, spec in header.items():
    try:
      dtype = _SAFETENSORS_DTYPES.get(spec.get("dtype"))
      if dtype is None:
        raise CheckpointError(f"unsupported dtype {spec.get('dtype')!r}")
      start, end = (int(x) for x in spec["data_offsets"])
      shape = tuple(int(s) for s in spec["shape"])
    except CheckpointError as e:
      raise CheckpointError(f"{path}: tensor {name!r}: {e}") from e
    except (AttributeError, KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"{path}: malformed safetensors entry for {name!r}: {spec!r:.200} "
                            f"({type(e).__name__}: {e})") from e
    if any(s < 0 for s in shape):
      raise CheckpointError(f"{path}: tensor {name!r} has a negative dimension {shape}")
    expect = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if end - start != expect or start < 0:
      raise CheckpointError(f"{path}: tensor {name!r} spans {end - start} bytes, expected {expect}")
    if base + end > size:
      raise CheckpointError(f"{path}: tensor {name!r} ends at byte {base + end} but the file has "
                            f"{size}: the file is truncated")
    tensors[name] = TensorRef(name=name, shape=shape, dtype=np.dtype(dtype),
                              span=_FileSpan(path, base + start, end - start))
  root = {"model": tensors}
  if isinstance(meta, dict) and isinstance(meta.get("cfg"), str):
    try:
      root["cfg"] = json.loads(meta["cfg"])
    except json.JSONDecodeError:
      pass
  return Checkpoint(path=path, root=root, format="safetensors")


def _read_npz(path: Path) -> Checkpoint:
  try:
    with np.load(path, allow_pickle=False) as z:
      names = list(z.files)
      shapes = {}
      for k in names:
        shapes[k] = _npz_member_header(path, k)
  except _ZIP_ERRORS as e:  # incl. KeyError: a member that is not a .npy
    raise CheckpointError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e
  for k, (_, dtype) in shapes.items():
    if dtype.hasobject:
      raise CheckpointError(f"{path}: member {k!r} is an object array (pickled data); refusing it")
  tensors = {}
  for k in names:
    shape, dtype = shapes[k]

    def loader(k=k):
      try:
        with np.load(path, allow_pickle=False) as z:
          return z[k]
      except _ZIP_ERRORS as e:
        raise CheckpointError(f"{path}: cannot read {k!r} ({type(e).__name__}: {e})") from e
    tensors[k] = TensorRef(name=k, shape=shape, dtype=dtype, loader=loader)
  return Checkpoint(path=path, root={"model": tensors}, format="npz")


def _npz_member_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
  with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    shape, _, dtype = read_header(f)
  return tuple(shape), np.dtype(dtype)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
  """Opens a .pt/.pth (torch zip), .safetensors or .npz checkpoint lazily (no tensor is read)."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if path.is_dir():
    raise CheckpointError(f"{path} is a directory, not a checkpoint file")
  suffix = path.suffix.lower()
  if suffix == ".safetensors":
    return _read_safetensors(path)
  if suffix == ".npz":
    return _read_npz(path)
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic[:2] == b"PK":
    return _read_torch_zip(path)
  if magic[:1] == b"\x80":
    raise CheckpointError(
        f"{path} is a bare pickle (legacy torch.save format); refusing to unpickle it. Re-save it "
        "with torch>=1.6 (zip format) or export the state dict to .safetensors")
  raise CheckpointError(f"{path}: unrecognised checkpoint format (magic {magic!r})")
