"""Test helpers: the library's torch-format writer plus deliberately malicious checkpoints.

`write_malicious_checkpoint` writes a torch-zip whose `data.pkl` runs code when unpickled
naively (plain `pickle.load`, or `torch.load(weights_only=False)`).
"""
from __future__ import annotations

import collections
import shlex
from pathlib import Path

import numpy as np

from spelke_jax.convert.torch_writer import (  # noqa: F401  (re-exported for the tests)
    REBUILD_TENSOR, Call, GlobalRef, LazyTensor, PersistentId, StridedTensor, torch_pickle,
    write_torch_checkpoint, write_zip_checkpoint)


# ---- Malicious checkpoints ------------------------------------------------------------------

PAYLOADS = ("os.system", "posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen",
            "cfg.os.system")


def malicious_call(marker_file: str | Path, kind: str = "os.system") -> Call:
  """A pickled call that creates `marker_file` when unpickled naively."""
  marker = str(Path(marker_file).absolute())
  touch = f"open({marker!r}, 'w').write('pwned')"
  if kind in ("os.system", "posix.system", "cfg.os.system"):
    module = "posix" if kind == "posix.system" else "os"
    return Call(GlobalRef(module, "system"), (f"touch {shlex.quote(marker)}",))
  if kind == "builtins.eval":
    return Call(GlobalRef("builtins", "eval"), (touch,))
  if kind == "builtins.exec":
    return Call(GlobalRef("builtins", "exec"), (touch,))
  if kind == "subprocess.Popen":
    return Call(GlobalRef("subprocess", "Popen"), (["touch", marker],))
  raise ValueError(f"unknown payload kind {kind!r}; known: {PAYLOADS}")


def write_malicious_checkpoint(path: str | Path, marker_file: str | Path,
                               kind: str = "os.system") -> Path:
  """A torch-zip that looks like a normal checkpoint but whose `data.pkl` creates
  `marker_file` when loaded with plain `pickle.load` / `torch.load(weights_only=False)`.

  kind: 'os.system' / 'posix.system' (a shell `touch`), 'builtins.eval' / 'builtins.exec'
  (Python `open(...).write`), 'subprocess.Popen' (runs `touch`, asynchronously), or
  'cfg.os.system' (the call is hidden one level down, inside the 'cfg' dict). The payload is
  pickled before the weights, so even a bare `pickle.loads` (which cannot resolve the tensors'
  persistent ids) runs it before failing."""
  weights = collections.OrderedDict(
      [("lm_head.weight", np.arange(12, dtype=np.float32).reshape(3, 4))])
  payload = malicious_call(marker_file, kind)
  if kind == "cfg.os.system":
    root = {"cfg": {"n_layer": 1, "note": payload}, "model": weights}
  else:
    root = {"cfg": payload, "model": weights}
  data_pkl, storages = torch_pickle(root)
  return write_zip_checkpoint(path, data_pkl, storages, root_name="archive")
