"""The torch-free checkpoint reader: torch zip (restricted unpickler), safetensors, npz.

Torch-format files are made by tests/torch_files.py (no torch needed); malicious pickles are
first shown to be live (they run their payload under a plain `pickle.loads` in a subprocess),
then shown to be refused by `load_checkpoint` without any side effect.
"""
from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest


from spelke_jax.convert import lras_mapping
from spelke_jax.convert.torch_reader import (
    CheckpointError, TensorRef, load_checkpoint)
from spelke_jax.models.lras_config import LRASConfig
from spelke_jax.parity.pack import default_fixtures_dir
from tests import torch_files as tf


def _rng(seed=0):
  return np.random.default_rng(seed)


def _read_all(path) -> dict[str, np.ndarray]:
  ckpt = load_checkpoint(path)
  return {k: v.read() for k, v in ckpt.state_dict().items()}


def _assert_bitwise_equal(got: np.ndarray, want: np.ndarray):
  assert got.dtype == want.dtype, (got.dtype, want.dtype)
  assert got.shape == want.shape, (got.shape, want.shape)
  assert got.flags.c_contiguous
  assert got.tobytes() == np.ascontiguousarray(want).tobytes()


# ---- torch zip: round trips ------------------------------------------------------------------

def _mixed_state_dict():
  r = _rng(1)
  a = r.standard_normal((5, 7)).astype(np.float32)
  base = r.standard_normal((4, 6, 3)).astype(np.float32)
  bf = r.standard_normal((6, 4)).astype(ml_dtypes.bfloat16)
  return collections.OrderedDict([
      ("f32", a),
      ("f32_transposed", a.T),                   # shares a's storage, strides (1, 7)
      ("f32_sliced", base[1:, ::2, 1]),           # offset 1*18+1, strides (18, 6)
      ("f32_permuted", base.transpose(2, 0, 1)),  # 3-d non-contiguous
      ("f16", r.standard_normal((3, 8)).astype(np.float16)),
      ("bf16", bf),
      ("bf16_transposed", bf.T),
      ("i64", np.arange(-3, 9, dtype=np.int64).reshape(3, 4)),
      ("i64_big", np.array([2**62, -(2**40), 7], dtype=np.int64)),
      ("scalar", np.array(2.5, np.float32)),
      ("empty", np.zeros((0, 3), np.float32)),
      ("flipped", a[::-1]),                       # negative strides: written as a copy
  ])


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_torch_zip_round_trip(tmp_path, compress):
  sd = _mixed_state_dict()
  cfg = {"n_layer": 2, "n_embd": 64, "flow_range": (3, 9), "campose_range": None,
         "config_class": "spelke_net.spelke_net.config.LRAS1B"}
  path = tf.write_torch_checkpoint(tmp_path / "m.pt", sd, cfg=cfg, root_name="model",
                                   compress=compress)
  ckpt = load_checkpoint(path)
  assert ckpt.format == "torch"
  refs = ckpt.state_dict()
  assert list(refs) == list(sd)  # order kept
  for name, want in sd.items():
    ref = refs[name]
    assert isinstance(ref, TensorRef)
    assert ref.name == name
    assert ref.shape == want.shape and ref.dtype == want.dtype
    assert ref.nbytes == want.nbytes
    _assert_bitwise_equal(ref.read(), want)
  # Tuples come back as lists (the config is plain data), None stays None.
  assert ckpt.config() == {"n_layer": 2, "n_embd": 64, "flow_range": [3, 9],
                           "campose_range": None,
                           "config_class": "spelke_net.spelke_net.config.LRAS1B"}


def test_strides_are_read_from_the_file(tmp_path):
  """Tensors over one explicit storage with offsets and strides (incl. 0: broadcast)."""
  storage = np.arange(40, dtype=np.float32) * 1.5
  specs = {
      "window": (3, (2, 2), (1, 5)),
      "rows": (10, (3, 4), (8, 2)),
      "broadcast": (7, (3, 2), (0, 1)),
      "last": (39, (1,), (1,)),
  }
  sd = {k: tf.StridedTensor(storage, off, size, stride) for k, (off, size, stride) in specs.items()}
  path = tf.write_torch_checkpoint(tmp_path / "s.pt", sd)
  ckpt = load_checkpoint(path)
  assert isinstance(ckpt.root, collections.OrderedDict)  # a bare state dict at the top level
  refs = ckpt.state_dict()
  with zipfile.ZipFile(path) as zf:
    storages = [n for n in zf.namelist() if "/data/" in n]
  assert len(storages) == 1  # all four share one storage record
  for k, (off, size, stride) in specs.items():
    want = np.lib.stride_tricks.as_strided(storage[off:], size, tuple(s * 4 for s in stride))
    assert refs[k].strides_elems == stride and refs[k].offset_elems == off
    _assert_bitwise_equal(refs[k].read(), want)


def test_extra_entries_and_config_objects(tmp_path):
  """Optimizer state (tensors nested in dicts/lists), an argparse.Namespace and a config
  dataclass of the original code are read as plain data; the state dict is root['model']."""
  w = np.arange(6, dtype=np.float32).reshape(2, 3)
  extra = {
      "optimizer": {"state": {0: {"exp_avg": w * 2, "step": np.array(3.0, np.float32)}},
                    "param_groups": [{"lr": 1e-3, "params": [0]}]},
      "args": tf.Call(tf.GlobalRef("argparse", "Namespace"), (), {"lr": 3e-4, "batch": 8}),
      "model_cfg": tf.Call(tf.GlobalRef("spelke_net.spelke_net.config", "LRAS1BConfig"), (),
                           {"n_layer": 36, "n_embd": 1280}),
      "step": 1234,
  }
  path = tf.write_torch_checkpoint(tmp_path / "e.pt", {"w": w}, extra, cfg={"n_layer": 1})
  ckpt = load_checkpoint(path)
  assert list(ckpt.state_dict()) == ["w"]
  _assert_bitwise_equal(ckpt.state_dict()["w"].read(), w)
  opt = ckpt.root["optimizer"]
  _assert_bitwise_equal(opt["state"][0]["exp_avg"].read(), w * 2)
  assert opt["param_groups"] == [{"lr": 1e-3, "params": [0]}]
  assert dict(ckpt.root["args"]) == {"lr": 3e-4, "batch": 8}
  assert ckpt.root["args"].class_name == "argparse.Namespace"
  assert dict(ckpt.root["model_cfg"]) == {"n_layer": 36, "n_embd": 1280}
  assert ckpt.root["model_cfg"].class_name == "spelke_net.spelke_net.config.LRAS1BConfig"
  assert ckpt.root["step"] == 1234
  assert ckpt.config() == {"n_layer": 1}


def test_weights_key_and_non_tensor_entries(tmp_path):
  data, storages = tf.torch_pickle({"weights": {"w": np.ones(3, np.float32)}})
  path = tf.write_zip_checkpoint(tmp_path / "w.pt", data, storages)
  assert list(load_checkpoint(path).state_dict()) == ["w"]
  assert load_checkpoint(path).config() is None

  bad = tf.write_torch_checkpoint(tmp_path / "b.pt", {"w": np.ones(3, np.float32), "n": 3},
                                  cfg={})
  with pytest.raises(CheckpointError, match="not tensors: \\['n'\\]"):
    load_checkpoint(bad).state_dict()

  data, storages = tf.torch_pickle([np.ones(3, np.float32)])
  path = tf.write_zip_checkpoint(tmp_path / "l.pt", data, storages)
  with pytest.raises(CheckpointError, match="no state dict"):
    load_checkpoint(path).state_dict()


def test_lazy_tensors_are_made_once_when_written(tmp_path):
  calls = []

  def make(i):
    def f():
      calls.append(i)
      return np.full((2, 3), i, np.float32)
    return f
  sd = {f"t{i}": tf.LazyTensor((2, 3), np.float32, make(i)) for i in range(3)}
  path = tf.write_torch_checkpoint(tmp_path / "z.pt", sd)
  assert calls == [0, 1, 2]
  got = _read_all(path)
  for i in range(3):
    _assert_bitwise_equal(got[f"t{i}"], np.full((2, 3), i, np.float32))


def test_storages_are_aligned_and_read_in_place(tmp_path):
  """Uncompressed storages are read straight from their span of the file (no zip decoding);
  their data starts on 64-byte boundaries, as torch writes them."""
  sd = {f"t{i}": np.full((i + 1, 3), i, np.float32) for i in range(5)}
  sd["big"] = np.arange(3 << 18, dtype=np.float32).reshape(-1, 1024)  # 3 MiB
  path = tf.write_torch_checkpoint(tmp_path / "a.pt", sd)
  for name, ref in load_checkpoint(path).state_dict().items():
    assert ref.loader is None
    assert ref.span.offset % 64 == 0
    assert ref.span.path == path
    arr = ref.read()
    assert arr.flags.writeable and arr.ctypes.data % 64 == 0
    _assert_bitwise_equal(arr, sd[name])


# ---- torch zip: the real fixture ---------------------------------------------------------------

def _fixture(name: str) -> Path:
  path = default_fixtures_dir() / "lras" / name
  if not path.exists():
    pytest.skip(f"fixture {path} not present")
  return path


def test_real_torch_fixture():
  """`model.pt` was written by torch.save: its keys are exactly the LRAS table's, its config
  is the manifest's, values equal the raw storage bytes and are bf16-representable (as the
  manifest says)."""
  path = _fixture("model.pt")
  manifest = json.loads((path.parent / "manifest.json").read_text())
  ckpt = load_checkpoint(path)
  assert ckpt.config() == manifest["config"]
  config = LRASConfig.from_dict(ckpt.config())
  refs = ckpt.state_dict()
  table = lras_mapping.table(config)
  assert sorted(refs) == sorted(e.torch_name for e in table.entries)
  d, v = config.n_embd, config.vocab_size
  assert refs["lm_head.weight"].shape == (v, d)
  assert refs["transformer.h.0.attn.c_attn.weight"].shape == (3 * d, d)
  assert refs["transformer.h.1.mlp.c_fc.weight"].shape == (4 * d, d)
  members = _member_data_offsets(path)
  with zipfile.ZipFile(path) as zf:
    for name, ref in refs.items():
      assert ref.dtype == np.float32
      arr = ref.read()
      # Independently: the zip member whose data starts where the reader maps, read by zipfile.
      member = members[ref.span.offset]
      assert member.startswith("model/data/")
      raw = np.frombuffer(zf.read(member), "<f4")
      assert raw.size == arr.size
      _assert_bitwise_equal(arr, raw.reshape(ref.shape))
      assert np.array_equal(arr.astype(ml_dtypes.bfloat16).astype(np.float32), arr), name
      assert np.isfinite(arr).all() and arr.std() > 0


def _member_data_offsets(path: Path) -> dict[int, str]:
  """{offset of a member's data in the file: member name}, from the local headers."""
  out = {}
  with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
    for info in zf.infolist():
      f.seek(info.header_offset)
      head = f.read(30)
      assert head[:4] == b"PK\x03\x04"
      n, e = struct.unpack("<HH", head[26:30])
      out[info.header_offset + 30 + n + e] = info.filename
  return out


# ---- torch zip: malicious pickles ------------------------------------------------------------

_LIVENESS = textwrap.dedent("""
    import pickle, sys, zipfile
    data = zipfile.ZipFile(sys.argv[1]).read('archive/data.pkl')
    try:
      pickle.loads(data)  # runs the payload, then fails on the first tensor's persistent id
    except Exception as e:
      print('pickle.loads stopped with', type(e).__name__)
""")


def _wait_for(path: Path, seconds: float = 15.0) -> bool:
  deadline = time.time() + seconds
  while time.time() < deadline:
    if path.exists():
      return True
    time.sleep(0.05)
  return path.exists()


_EXPECTED_GLOBAL = {"os.system": "os.system", "posix.system": "posix.system",
                    "builtins.eval": "builtins.eval", "builtins.exec": "builtins.exec",
                    "subprocess.Popen": "subprocess.Popen", "cfg.os.system": "os.system"}


@pytest.mark.parametrize("kind", tf.PAYLOADS)
def test_malicious_pickle_is_live_and_refused(tmp_path, kind):
  marker = tmp_path / "pwned"
  path = tf.write_malicious_checkpoint(tmp_path / "evil.pt", marker, kind)
  # 1. The payload is live: a naive load in a fresh interpreter creates the marker.
  proc = subprocess.run([sys.executable, "-c", _LIVENESS, str(path)], cwd=tmp_path,
                        capture_output=True, text=True, timeout=60, check=False)
  assert _wait_for(marker), f"payload {kind} did not run: {proc.stdout}{proc.stderr}"
  marker.unlink()
  # 2. The reader refuses it, naming the global, and nothing runs.
  with pytest.raises(CheckpointError) as err:
    load_checkpoint(path)
  assert f"refusing to load global {_EXPECTED_GLOBAL[kind]}" in str(err.value)
  time.sleep(0.2)
  assert not marker.exists()


def _stack_global_payload(marker: Path) -> bytes:
  """A protocol-4 pickle using STACK_GLOBAL (not GLOBAL) for os.system."""
  def s(x: str) -> bytes:
    b = x.encode()
    return b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE
  cmd = f"touch '{marker}'"
  cmd_b = cmd.encode()
  return (b"\x80\x04" + s("os") + s("system") + b"\x93"  # STACK_GLOBAL
          + b"X" + struct.pack("<I", len(cmd_b)) + cmd_b + b"\x85R.")


def test_stack_global_payload_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  data = _stack_global_payload(marker)
  subprocess.run([sys.executable, "-c", "import pickle, sys; pickle.loads(open(sys.argv[1], "
                  "'rb').read())", str(_write_bytes(tmp_path / "raw.pkl", data))],
                 check=True, timeout=60)
  assert _wait_for(marker)
  marker.unlink()
  path = tf.write_zip_checkpoint(tmp_path / "evil.pt", data)
  with pytest.raises(CheckpointError, match="refusing to load global os.system"):
    load_checkpoint(path)
  assert not marker.exists()


def _write_bytes(path: Path, data: bytes) -> Path:
  path.write_bytes(data)
  return path


@pytest.mark.parametrize("pid, match", [
    (("module", "evil.py"), "unknown persistent id"),
    (("storage", tf.GlobalRef("torch", "EvilStorage"), "0", "cpu", 1),
     "refusing to load global torch.EvilStorage"),
    (("storage", tf.GlobalRef("collections", "OrderedDict"), "0", "cpu", 1),
     "unknown storage type"),
    (("storage", tf.GlobalRef("torch", "FloatStorage"), "../../../etc/passwd", "cpu", 1),
     "storage ../../../etc/passwd referenced by the pickle is missing"),
    (("storage",), "unknown persistent id"),
])
def test_bad_persistent_ids_are_refused(tmp_path, pid, match):
  data, _ = tf.torch_pickle({"model": {"w": tf.PersistentId(pid)}})
  path = tf.write_zip_checkpoint(tmp_path / "p.pt", data)
  with pytest.raises(CheckpointError, match=match):
    load_checkpoint(path)


def test_bare_pickle_is_not_unpickled(tmp_path):
  marker = tmp_path / "pwned"
  data, _ = tf.torch_pickle(tf.malicious_call(marker, "builtins.exec"))
  for name in ("legacy.pt", "legacy.pth", "legacy.bin"):
    path = _write_bytes(tmp_path / name, data)
    with pytest.raises(CheckpointError, match="bare pickle"):
      load_checkpoint(path)
  proto0 = _write_bytes(tmp_path / "p0.pt", b"cos\nsystem\n(S'true'\ntR.")
  with pytest.raises(CheckpointError, match="unrecognised checkpoint format"):
    load_checkpoint(proto0)
  assert not marker.exists()


# ---- torch zip: truncated and corrupted files --------------------------------------------------

def _small_checkpoint(tmp_path) -> tuple[Path, dict[str, tuple[int, int]]]:
  """A checkpoint with a few storages and where each member's data lies in the file."""
  r = _rng(3)
  sd = {"a": r.standard_normal((64, 64)).astype(np.float32),  # 16 KiB
        "b": r.standard_normal((16, 8)).astype(ml_dtypes.bfloat16),
        "c": np.arange(100, dtype=np.int64)}
  path = tf.write_torch_checkpoint(tmp_path / "full.pt", sd, cfg={"n_layer": 1})
  spans = {}
  with zipfile.ZipFile(path) as zf:
    for info in zf.infolist():
      with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        n, e = struct.unpack("<HH", f.read(4))
      start = info.header_offset + 30 + n + e
      spans[info.filename] = (start, start + info.file_size)
    cd_start = min(i.header_offset for i in zf.infolist()) + sum(
        30 + len(i.filename.encode()) + len(i.extra) + i.compress_size for i in zf.infolist())
  spans["<central directory>"] = (cd_start, path.stat().st_size)
  return path, spans


def _cut_points(spans, size):
  a0, a1 = spans["archive/data/0"]
  p0, p1 = spans["archive/data.pkl"]
  c0, c1 = spans["<central directory>"]
  return {
      "empty": 0, "one byte": 1, "magic only": 2, "inside the first local header": 20,
      "inside data.pkl": (p0 + p1) // 2, "at the start of a storage": a0,
      "inside a storage": (a0 + a1) // 2, "one byte short of a storage": a1 - 1,
      "before the central directory": c0, "inside the central directory": (c0 + c1) // 2,
      "inside the end record": size - 10, "one byte short": size - 1,
  }


def test_truncated_checkpoints_give_checkpoint_error(tmp_path):
  path, spans = _small_checkpoint(tmp_path)
  full = path.read_bytes()
  assert set(_read_all(path)) == {"a", "b", "c"}
  cuts = _cut_points(spans, len(full))
  for what, n in cuts.items():
    cut = _write_bytes(tmp_path / f"cut_{n}.pt", full[:n])
    try:
      _read_all(cut)
    except CheckpointError as e:
      assert str(e), what
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"cut {what} ({n} bytes): {type(e).__name__}: {e}")
    else:
      pytest.fail(f"cut {what} ({n} bytes) was read without error")


def test_file_truncated_after_opening(tmp_path):
  """Tensors are read lazily: a file cut after `load_checkpoint` fails at `read()` with a
  CheckpointError (not numpy's mmap ValueError)."""
  path, spans = _small_checkpoint(tmp_path)
  refs = load_checkpoint(path).state_dict()
  a0, a1 = spans["archive/data/0"]
  with open(path, "r+b") as f:
    f.truncate((a0 + a1) // 2)
  with pytest.raises(CheckpointError, match="truncated"):
    refs["a"].read()


def test_storage_bytes_removed_with_central_directory_intact(tmp_path):
  """Bytes cut out of the middle of a storage while the (now wrong) central directory is kept:
  member offsets no longer match."""
  path, spans = _small_checkpoint(tmp_path)
  full = path.read_bytes()
  a0, a1 = spans["archive/data/0"]
  for drop in (1, 64, 4096):
    mid = (a0 + a1) // 2
    bad = _write_bytes(tmp_path / f"hole_{drop}.pt", full[:mid] + full[mid + drop:])
    with pytest.raises(CheckpointError):
      _read_all(bad)


def test_corrupted_members_give_checkpoint_error(tmp_path):
  """A flipped byte in data.pkl or byteorder fails their CRC; a wrong byteorder is refused."""
  path, spans = _small_checkpoint(tmp_path)
  full = bytearray(path.read_bytes())
  for member in ("archive/data.pkl", "archive/byteorder"):
    start, end = spans[member]
    bad = bytearray(full)
    bad[(start + end) // 2] ^= 0x55
    p = _write_bytes(tmp_path / f"flip_{member.replace('/', '_')}.pt", bytes(bad))
    with pytest.raises(CheckpointError):
      _read_all(p)
  data, storages = tf.torch_pickle({"w": np.ones(3, np.float32)})
  big = tf.write_zip_checkpoint(tmp_path / "be.pt", data, storages, byteorder=b"big")
  with pytest.raises(CheckpointError, match="big-endian"):
    load_checkpoint(big)
  # No byteorder record (files of torch < 1.10) means little-endian.
  old = tf.write_zip_checkpoint(tmp_path / "old.pt", data, storages, byteorder=None)
  _assert_bitwise_equal(_read_all(old)["w"], np.ones(3, np.float32))


def test_malformed_pickles_give_checkpoint_error(tmp_path):
  good, storages = tf.torch_pickle({"model": {"w": np.ones(3, np.float32)}})
  cases = {
      "cut": good[: len(good) // 2],
      "garbage": b"\x80\x02\xff\xfe\xfd",
      "no stop": good[:-1],
      "bad size": tf.torch_pickle({"model": {"w": tf.Call(
          tf.REBUILD_TENSOR, (tf.PersistentId(("storage", tf.GlobalRef("torch", "FloatStorage"),
                                               "0", "cpu", 3)), 0, (3, 2), (1,), False))}})[0],
      "negative size": tf.torch_pickle({"model": {"w": tf.Call(
          tf.REBUILD_TENSOR, (tf.PersistentId(("storage", tf.GlobalRef("torch", "FloatStorage"),
                                               "0", "cpu", 3)), 0, (-3,), (1,), False))}})[0],
      "not a storage": tf.torch_pickle({"model": {"w": tf.Call(
          tf.REBUILD_TENSOR, ("0", 0, (3,), (1,), False))}})[0],
  }
  for what, data in cases.items():
    path = tf.write_zip_checkpoint(tmp_path / f"{what}.pt", data, storages)
    with pytest.raises(CheckpointError) as err:
      load_checkpoint(path)
    assert str(err.value), what
  zf_path = tmp_path / "two.pt"
  with zipfile.ZipFile(zf_path, "w") as zf:
    zf.writestr("a/data.pkl", good)
    zf.writestr("b/data.pkl", good)
  with pytest.raises(CheckpointError, match="expected one data.pkl"):
    load_checkpoint(zf_path)
  with zipfile.ZipFile(tmp_path / "none.pt", "w") as zf:
    zf.writestr("a/weights.bin", b"1234")
  with pytest.raises(CheckpointError, match="expected one data.pkl"):
    load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "deflated"])
def test_storage_too_small_for_its_tensor(tmp_path, compress):
  storage = np.arange(10, dtype=np.float32)
  # The tensor reaches past the end of its storage (the persistent id's numel is right).
  over = tf.write_torch_checkpoint(
      tmp_path / "over.pt", {"w": tf.StridedTensor(storage, 0, (4, 4), (4, 1))}, compress=compress)
  ref = load_checkpoint(over).state_dict()["w"]
  with pytest.raises(CheckpointError, match="reaches past the end of its storage"):
    ref.read()
  offset = tf.write_torch_checkpoint(
      tmp_path / "off.pt", {"w": tf.StridedTensor(storage, 8, (3,), (1,))}, compress=compress)
  with pytest.raises(CheckpointError, match="reaches past the end"):
    load_checkpoint(offset).state_dict()["w"].read()
  # The persistent id claims more elements than the storage member holds.
  short = tf.write_torch_checkpoint(
      tmp_path / "short.pt", {"w": tf.StridedTensor(storage, 0, (4, 4), (4, 1), numel=16)},
      compress=compress)
  with pytest.raises(CheckpointError, match="storage 0 holds 40 bytes, needs 64"):
    load_checkpoint(short)


def test_missing_and_directory_paths(tmp_path):
  with pytest.raises(FileNotFoundError, match="checkpoint not found"):
    load_checkpoint(tmp_path / "nope.pt")
  with pytest.raises(CheckpointError, match="is a directory"):
    load_checkpoint(tmp_path)
  text = _write_bytes(tmp_path / "x.pt", b"hello world")
  with pytest.raises(CheckpointError, match="unrecognised checkpoint format"):
    load_checkpoint(text)


# ---- safetensors -----------------------------------------------------------------------------

_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
              np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64",
              np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray],
                      metadata: dict[str, str] | None = None, header: dict | None = None) -> Path:
  """8-byte little-endian header length, JSON header (dtype, shape, data_offsets), bytes."""
  blobs, head, offset = [], {}, 0
  for name, arr in tensors.items():
    raw = np.ascontiguousarray(arr).tobytes()
    head[name] = {"dtype": _ST_DTYPES[arr.dtype], "shape": list(arr.shape),
                  "data_offsets": [offset, offset + len(raw)]}
    blobs.append(raw)
    offset += len(raw)
  if metadata is not None:
    head["__metadata__"] = metadata
  if header is not None:
    head = header
  text = json.dumps(head).encode()
  text += b" " * (-len(text) % 8)
  path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
  return path


def test_safetensors_round_trip(tmp_path):
  r = _rng(5)
  tensors = {"w": r.standard_normal((4, 6)).astype(np.float32),
             "bf": r.standard_normal((3, 5)).astype(ml_dtypes.bfloat16),
             "h": r.standard_normal((7,)).astype(np.float16),
             "ids": np.arange(-4, 8, dtype=np.int64).reshape(3, 4),
             "mask": np.array([True, False, True]),
             "scalar": np.array(7, np.int32), "empty": np.zeros((0, 2), np.float32)}
  cfg = {"n_layer": 3, "flow_range": [1, 5]}
  path = write_safetensors(tmp_path / "m.safetensors", tensors, {"cfg": json.dumps(cfg)})
  ckpt = load_checkpoint(path)
  assert ckpt.format == "safetensors"
  refs = ckpt.state_dict()
  assert sorted(refs) == sorted(tensors)
  for k, v in tensors.items():
    assert refs[k].shape == v.shape and refs[k].dtype == v.dtype
    _assert_bitwise_equal(refs[k].read(), v)
  assert ckpt.config() == cfg
  plain = write_safetensors(tmp_path / "p.safetensors", {"w": tensors["w"]}, {"format": "pt"})
  assert load_checkpoint(plain).config() is None


def test_safetensors_corrupted_headers(tmp_path):
  w = np.arange(6, dtype=np.float32).reshape(2, 3)
  good = write_safetensors(tmp_path / "good.safetensors", {"w": w}).read_bytes()
  (n,) = struct.unpack("<Q", good[:8])

  def with_header(raw: bytes) -> bytes:
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + good[8 + n:]
  spec = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
  cases = {
      "short": good[:5],
      "length past the end": struct.pack("<Q", len(good)) + good[8:],
      "huge length": struct.pack("<Q", 2**63) + good[8:],
      "not json": with_header(b"{not json"),
      "not utf-8": with_header(b'{"w": "\xff\xfe"}'),
      "a list": with_header(b"[1, 2, 3]"),
      "entry not a dict": with_header(json.dumps({"w": [0, 24]}).encode()),
      "no offsets": with_header(json.dumps({"w": {"dtype": "F32", "shape": [2, 3]}}).encode()),
      "no shape": with_header(
          json.dumps({"w": {"dtype": "F32", "data_offsets": [0, 24]}}).encode()),
      "unknown dtype": with_header(json.dumps({"w": {**spec, "dtype": "C64"}}).encode()),
      "size mismatch": with_header(json.dumps({"w": {**spec, "shape": [3, 3]}}).encode()),
      "negative dim": with_header(json.dumps({"w": {**spec, "shape": [-2, -3]}}).encode()),
      "bad offsets": with_header(json.dumps({"w": {**spec, "data_offsets": ["a", 3]}}).encode()),
      "past the end": with_header(json.dumps({"w": {**spec, "data_offsets": [24, 48]}}).encode()),
      "truncated data": good[:-4],
  }
  for what, raw in cases.items():
    path = _write_bytes(tmp_path / f"bad_{len(raw)}_{abs(hash(what))}.safetensors", raw)
    try:
      _read_all(path)
    except CheckpointError as e:
      assert str(e)
    except Exception as e:  # pylint: disable=broad-except
      pytest.fail(f"{what}: {type(e).__name__}: {e}")
    else:
      pytest.fail(f"{what}: read without error")


# ---- npz -----------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
  r = _rng(7)
  arrays = {"w": r.standard_normal((3, 4)).astype(np.float32),
            "h": r.standard_normal((5,)).astype(np.float16),
            "ids": np.arange(6, dtype=np.int64), "scalar": np.array(1.5)}
  path = tmp_path / "m.npz"
  np.savez(path, **arrays)
  ckpt = load_checkpoint(path)
  assert ckpt.format == "npz" and ckpt.config() is None
  refs = ckpt.state_dict()
  assert sorted(refs) == sorted(arrays)
  for k, v in arrays.items():
    assert refs[k].shape == v.shape and refs[k].dtype == v.dtype
    _assert_bitwise_equal(refs[k].read(), v)
  compressed = tmp_path / "c.npz"
  np.savez_compressed(compressed, **arrays)
  for k, v in arrays.items():
    _assert_bitwise_equal(_read_all(compressed)[k], v)


def test_npz_refuses_pickled_and_broken_members(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "o.npz"
  with zipfile.ZipFile(path, "w") as zf:  # an object array: its data is a pickle
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False,
                                               "shape": (1,)})
    data, _ = tf.torch_pickle([tf.malicious_call(marker, "builtins.exec")])
    zf.writestr("w.npy", buf.getvalue() + data)
  with pytest.raises(CheckpointError):
    _read_all(path)
  assert not marker.exists()
  full = tmp_path / "full.npz"
  np.savez(full, w=np.ones((64, 64), np.float32))
  raw = full.read_bytes()
  for n in (10, len(raw) // 2, len(raw) - 5):
    cut = _write_bytes(tmp_path / f"cut{n}.npz", raw[:n])
    with pytest.raises(CheckpointError):
      _read_all(cut)
  other = tmp_path / "other.npz"
  with zipfile.ZipFile(other, "w") as zf:
    zf.writestr("notes.txt", b"hello")
  with pytest.raises(CheckpointError):
    _read_all(other)


# ---- numpy arrays inside a torch zip (e.g. the flow-token table) ----

def _zip_with_plain_pickle(path, obj):
  import pickle as _pickle  # pylint: disable=g-import-not-at-top
  return tf.write_zip_checkpoint(path, _pickle.dumps(obj, protocol=2))


def test_numpy_arrays_in_pickle_are_rebuilt_without_numpy_code(tmp_path):
  table = {11646: np.zeros((4, 4, 2), np.float32), 7: np.arange(32, dtype=np.float64).reshape(4, 4, 2),
           3: np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3))}
  path = _zip_with_plain_pickle(tmp_path / "table.pt", {**table, "s": np.float32(2.5)})
  root = load_checkpoint(path).root
  assert list(root)[:3] == [11646, 7, 3]
  for k, v in table.items():
    got = root[k].read()
    np.testing.assert_array_equal(got, v)
    assert got.dtype == v.dtype.newbyteorder("=")
  assert root["s"] == np.float32(2.5)
  from spelke_jax.inference.maps import load_flow_table  # pylint: disable=g-import-not-at-top
  tab = load_flow_table(_zip_with_plain_pickle(tmp_path / "t2.pt", {1: table[7].astype(np.float32),
                                                                    5: table[11646]}))
  np.testing.assert_array_equal(tab.token_ids, [1, 5])


def test_numpy_object_arrays_are_refused(tmp_path):
  path = _zip_with_plain_pickle(tmp_path / "obj.pt", {"a": np.array([{"x": 1}], dtype=object)})
  with pytest.raises(CheckpointError, match="dtype"):
    load_checkpoint(path)
