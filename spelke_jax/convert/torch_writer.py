"""Torch-free writer of PyTorch-format checkpoints (the inverse of torch_reader).

Used to export spelke_jax weights in the original layout (export.py) and by the tests.

`write_torch_checkpoint` produces the zip layout of `torch.save` (PyTorch >= 1.6, the
`_use_new_zipfile_serialization` format that `torch.load(weights_only=True)` reads):

    <root>/data.pkl             pickle protocol 2 of the saved object
    <root>/byteorder            b"little"
    <root>/data/<key>           raw little-endian bytes of one storage, data aligned to 64 bytes
    <root>/version              b"3\\n"
    <root>/.format_version      b"1"
    <root>/.storage_alignment   b"64"

In `data.pkl` every tensor is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
False, OrderedDict())` with the storage as a persistent id `('storage', torch.FloatStorage,
'<key>', 'cpu', numel)`, as torch writes it. The pickle is produced by the pure-Python pickler
with a dispatch entry for `GlobalRef`, so `GLOBAL 'torch._utils _rebuild_tensor_v2'` is written
without importing torch.

Tensors may be given as numpy arrays (any strides: a non-contiguous view is stored as its base
storage with its own offset and strides), as `StridedTensor` (explicit storage, offset, size,
stride; also malformed ones for tests), or as `LazyTensor` (shape and dtype up front, data made
only when its storage is written), so a file much larger than memory can be written.

"""
from __future__ import annotations

import collections
import dataclasses
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

_ALIGN = 64

# numpy dtype -> torch storage class name (as torch.save writes the legacy storage type).
STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
    np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}


# ---- Values the pickler knows how to write ----------------------------------------------------

class GlobalRef:
  """Stands for the global `module.name`; pickled as `GLOBAL 'module name'` (memoized)."""
  _cache: dict[tuple[str, str], "GlobalRef"] = {}

  def __new__(cls, module: str, name: str):
    key = (module, name)
    if key not in cls._cache:
      obj = super().__new__(cls)
      obj.module, obj.name = module, name
      cls._cache[key] = obj
    return cls._cache[key]

  def __call__(self, *args, **kwargs):  # pickle's save_reduce requires a callable
    raise TypeError(f"{self.module}.{self.name} is a pickling stand-in, not callable")

  def __repr__(self):
    return f"GlobalRef({self.module}.{self.name})"


@dataclasses.dataclass(frozen=True, eq=False)
class Call:
  """Pickled as `func(*args)` (GLOBAL + args tuple + REDUCE), then BUILD with `state` if given
  (e.g. `Call(GlobalRef('argparse', 'Namespace'), (), {'lr': 3e-4})`)."""
  func: GlobalRef
  args: tuple = ()
  state: Any = None


@dataclasses.dataclass(frozen=True, eq=False)
class PersistentId:
  """Pickled as a persistent id (BINPERSID) of the tuple `pid` (for malformed-file tests)."""
  pid: tuple


REBUILD_TENSOR = GlobalRef("torch._utils", "_rebuild_tensor_v2")


@dataclasses.dataclass(frozen=True, eq=False)
class StridedTensor:
  """A tensor over an explicit 1-D `storage`: elements at offset + sum(i_k * stride_k).

  `numel` overrides the element count written in the persistent id (to fake a storage that is
  too small); `storage_dtype` overrides the storage class. Tensors with the same `storage`
  object share one storage record, as in torch."""
  storage: np.ndarray
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]
  numel: int | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class LazyTensor:
  """A C-contiguous tensor whose data `make()` returns only when its storage is written."""
  shape: tuple[int, ...]
  dtype: Any
  make: Callable[[], np.ndarray]


@dataclasses.dataclass(eq=False)
class _Storage:
  key: str
  dtype: np.dtype
  numel: int
  data: np.ndarray | Callable[[], np.ndarray]


def _contiguous_strides(shape) -> tuple[int, ...]:
  strides, acc = [], 1
  for s in reversed(shape):
    strides.append(acc)
    acc *= max(int(s), 1)
  return tuple(reversed(strides))


def _storage_view(arr: np.ndarray) -> tuple[np.ndarray, int, tuple[int, ...]]:
  """(1-D storage, element offset, element strides) describing `arr` as torch would store it.

  A C-contiguous array is its own storage. A strided view (e.g. `x.T`, `x[:, 1::2]`) is stored
  over the C-contiguous array it views, with its offset and strides in elements."""
  if arr.flags.c_contiguous:
    return arr.reshape(-1), 0, _contiguous_strides(arr.shape)
  base = arr
  while base.base is not None and isinstance(base.base, np.ndarray):
    base = base.base
  item = arr.dtype.itemsize
  ok = (base.flags.c_contiguous and base.dtype.itemsize == item
        and all(s >= 0 and s % item == 0 for s in arr.strides))
  if ok:
    start = arr.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    flat = base.reshape(-1).view(arr.dtype)
    if start >= 0 and start % item == 0:
      return flat, start // item, tuple(s // item for s in arr.strides)
  arr = np.ascontiguousarray(arr)  # negative strides etc.: store a copy
  return arr.reshape(-1), 0, _contiguous_strides(arr.shape)


def _memory_key(flat: np.ndarray) -> tuple:
  return ("array", flat.__array_interface__["data"][0], flat.size, flat.dtype.str)


class _TorchPickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pure-Python pickler (protocol 2) that writes torch's tensor and storage records."""

  def __init__(self, file, storages: dict[int, _Storage]):
    super().__init__(file, protocol=2)
    self._storages = storages
    self.dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access
    self.dispatch[GlobalRef] = _TorchPickler._save_global_ref

  def _save_global_ref(self, obj: GlobalRef):
    self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
    self.memoize(obj)

  def _storage(self, key, data, dtype: np.dtype, numel: int) -> _Storage:
    """The storage record for `key` (made once: tensors over the same memory share it). Each
    record holds its data, so the memory behind a key stays alive and is not reused."""
    st = self._storages.get(key)
    if st is None:
      st = _Storage(str(len(self._storages)), np.dtype(dtype), int(numel), data)
      self._storages[key] = st
    return st

  def persistent_id(self, obj):
    if isinstance(obj, _Storage):
      return ("storage", GlobalRef("torch", STORAGE_NAMES[obj.dtype]), obj.key, "cpu", obj.numel)
    if isinstance(obj, PersistentId):
      return obj.pid
    return None

  def reducer_override(self, obj):
    if isinstance(obj, np.ndarray):
      if obj.dtype not in STORAGE_NAMES:
        raise TypeError(f"no torch storage type for dtype {obj.dtype}")
      flat, offset, stride = _storage_view(obj)
      st = self._storage(_memory_key(flat), flat, flat.dtype, flat.size)
      return self._tensor(st, offset, obj.shape, stride)
    if isinstance(obj, StridedTensor):
      flat = np.ascontiguousarray(obj.storage).reshape(-1)
      numel = flat.size if obj.numel is None else obj.numel
      st = self._storage(_memory_key(flat) + (numel,), flat, flat.dtype, numel)
      return self._tensor(st, obj.offset, obj.size, obj.stride)
    if isinstance(obj, LazyTensor):
      numel = int(np.prod(obj.shape, dtype=np.int64))
      st = self._storage(("lazy", id(obj)), obj, np.dtype(obj.dtype), numel)
      return self._tensor(st, 0, obj.shape, _contiguous_strides(obj.shape))
    if isinstance(obj, Call):
      return (obj.func, tuple(obj.args), obj.state)
    return NotImplemented

  @staticmethod
  def _tensor(st: _Storage, offset, size, stride):
    return (REBUILD_TENSOR, (st, int(offset), tuple(int(s) for s in size),
                             tuple(int(s) for s in stride), False, collections.OrderedDict()))


def torch_pickle(obj: Any) -> tuple[bytes, list[_Storage]]:
  """`obj` pickled as torch.save does (protocol 2) and the storages it references, in order."""
  storages: dict[int, _Storage] = {}
  buf = io.BytesIO()
  _TorchPickler(buf, storages).dump(obj)
  return buf.getvalue(), sorted(storages.values(), key=lambda s: int(s.key))


# ---- The zip container ----------------------------------------------------------------------

def _aligned_info(zf: zipfile.ZipFile, name: str, size: int, compress: bool) -> zipfile.ZipInfo:
  """A ZipInfo whose data starts on a 64-byte boundary (padding in the local extra field, as
  torch's writer does)."""
  info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
  info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
  info.file_size = size
  header_end = zf.fp.tell() + 30 + len(name.encode("utf-8"))
  pad = (-(header_end + 4)) % _ALIGN
  info.extra = b"FB" + pad.to_bytes(2, "little") + b"Z" * pad
  return info


def _write_member(zf: zipfile.ZipFile, name: str, chunks: Iterable[bytes | memoryview], size: int,
                  compress: bool):
  with zf.open(_aligned_info(zf, name, size, compress), "w") as f:
    for c in chunks:
      f.write(c)


def _storage_bytes(st: _Storage, chunk_bytes: int = 16 << 20):
  """The storage's raw little-endian bytes in chunks (calling a lazy maker once)."""
  if isinstance(st.data, LazyTensor):
    data = np.asarray(st.data.make())
    if data.shape != tuple(st.data.shape):
      raise ValueError(f"storage {st.key}: LazyTensor made shape {data.shape}, "
                       f"declared {tuple(st.data.shape)}")
  else:
    data = st.data
  data = np.ascontiguousarray(data).reshape(-1)
  if data.dtype != st.dtype:
    raise TypeError(f"storage {st.key}: data dtype {data.dtype} != {st.dtype}")
  if data.dtype.byteorder == ">":
    raise TypeError("big-endian arrays are not supported")
  raw = memoryview(data.view(np.uint8))
  for i in range(0, len(raw), chunk_bytes):
    yield raw[i:i + chunk_bytes]


def write_zip_checkpoint(path: str | Path, data_pkl: bytes, storages: Iterable[_Storage] = (), *,
                         root_name: str = "archive", compress: bool = False,
                         byteorder: bytes | None = b"little") -> Path:
  """Writes the torch zip container around an already pickled `data.pkl`."""
  path = Path(path)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
    _write_member(zf, f"{root_name}/data.pkl", [data_pkl], len(data_pkl), compress)
    _write_member(zf, f"{root_name}/.format_version", [b"1"], 1, False)
    _write_member(zf, f"{root_name}/.storage_alignment", [b"64"], 2, False)
    if byteorder is not None:
      _write_member(zf, f"{root_name}/byteorder", [byteorder], len(byteorder), False)
    for st in storages:
      nbytes = st.dtype.itemsize * (
          st.data.reshape(-1).size if isinstance(st.data, np.ndarray) else st.numel)
      _write_member(zf, f"{root_name}/data/{st.key}", _storage_bytes(st), nbytes, compress)
    _write_member(zf, f"{root_name}/version", [b"3\n"], 2, False)
  return path


def write_torch_checkpoint(path: str | Path, state_dict: Mapping[str, Any],
                           extra: Mapping[str, Any] | None = None, *,
                           cfg: Mapping[str, Any] | None = None, root_name: str = "archive",
                           compress: bool = False) -> Path:
  """Writes `{'model': OrderedDict(state_dict), **extra, 'cfg': cfg}` as `torch.save` would.

  Values of `state_dict` (and tensors anywhere inside `extra`, `cfg`) are numpy arrays
  (float32/float64/float16/bfloat16/int*/uint8/bool, any strides), `StridedTensor`s or
  `LazyTensor`s. Storages are written one at a time, lazily made ones only when written, so
  memory stays near one tensor. With `cfg=None` and no `extra`, the top level is just the
  OrderedDict state dict (as `torch.save(model.state_dict())`)."""
  model = collections.OrderedDict((str(k), v) for k, v in state_dict.items())
  if cfg is None and not extra:
    root: Any = model
  else:
    root = {"model": model}
    root.update(extra or {})
    if cfg is not None:
      root["cfg"] = dict(cfg)
  data_pkl, storages = torch_pickle(root)
  return write_zip_checkpoint(path, data_pkl, storages, root_name=root_name, compress=compress)
