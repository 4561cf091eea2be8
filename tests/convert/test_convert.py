"""torch checkpoint -> Orbax -> nnx model: exact round trips, refusals, memory bound, sharding.

The torch-format files are written by tests/torch_files.py from a JAX model's own parameters
through the INVERSE of the LRAS mapping (written out here independently of lras_mapping.py),
so converting them back must reproduce every parameter bit for bit.
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx


from spelke_jax import sharding
from spelke_jax.convert.convert import convert_checkpoint
from spelke_jax.convert.load import load_config, load_converted, read_meta
from spelke_jax.convert.mapping import MappingError
from spelke_jax.convert.torch_reader import CheckpointError
from spelke_jax.models import lras
from spelke_jax.models.lras_config import LRASConfig
from spelke_jax.parity.pack import default_fixtures_dir
from tests import torch_files as tf

TINY = LRASConfig(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32)


# ---- The inverse of the LRAS mapping --------------------------------------------------------

def flat_params(model: nnx.Module) -> dict[str, np.ndarray]:
  """{'blocks/0/attn/qkv': array} of every parameter."""
  _, state = nnx.split(model)
  return {"/".join(str(p) for p in path): np.asarray(var[...])
          for path, var in nnx.to_flat_state(state)}


def export_torch_state_dict(params: dict[str, np.ndarray], config: LRASConfig,
                            contiguous: bool = False) -> dict[str, np.ndarray]:
  """The torch state dict of the original LRAS holding `params` (nnx layout).

  qkv [d, 3, H, hs] -> c_attn.weight [3d, d] (rows q|k|v, heads contiguous inside each);
  out [H, hs, d] -> c_proj.weight [d, d]; Linear kernels [in, out] -> weight [out, in].
  Transposes are left as strided views unless `contiguous` (both are legal torch tensors)."""
  d = config.n_embd
  fix = np.ascontiguousarray if contiguous else (lambda x: x)
  sd = collections.OrderedDict()
  sd["transformer.token_embedding.weight"] = params["token_embedding/embedding"]
  sd["transformer.positional_embedding.weight"] = params["positional_embedding/embedding"]
  for i in range(config.n_layer):
    t, f = f"transformer.h.{i}", f"blocks/{i}"
    sd[f"{t}.ln_1.weight"] = params[f"{f}/ln_1/scale"]
    sd[f"{t}.attn.c_attn.weight"] = fix(params[f"{f}/attn/qkv"].reshape(d, 3 * d).T)
    sd[f"{t}.attn.c_proj.weight"] = fix(params[f"{f}/attn/out"].reshape(d, d).T)
    sd[f"{t}.ln_2.weight"] = params[f"{f}/ln_2/scale"]
    sd[f"{t}.mlp.c_fc.weight"] = fix(params[f"{f}/mlp/fc/kernel"].T)
    sd[f"{t}.mlp.c_proj.weight"] = fix(params[f"{f}/mlp/proj/kernel"].T)
  sd["transformer.ln_f.weight"] = params["ln_f/scale"]
  sd["lm_head.weight"] = fix(params["lm_head/kernel"].T)
  return sd


def torch_cfg(config: LRASConfig) -> dict:
  """The checkpoint's 'cfg' as the original saves it: dataclass fields plus class paths."""
  cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()}
  cfg.update(
      config_class="spelke_net.spelke_net.config.LRAS1B_Campose_FlowQuantized_Patch8_RGBConfig",
      model_class="spelke_net.spelke_net.model.LRAS")
  return cfg


@pytest.fixture(scope="module")
def tiny_model():
  model = lras.create(TINY, seed=3)
  # LayerNorm scales are initialised to ones: make them distinct so a mix-up cannot pass.
  _, state = nnx.split(model)
  rng = np.random.default_rng(0)
  for path, var in nnx.to_flat_state(state):
    if path[-1] == "scale":
      var.set_value(jnp.asarray(1 + 0.1 * rng.standard_normal(var.shape), var.dtype))
  nnx.update(model, state)
  return model


def _inputs(config: LRASConfig, batch=2, length=12):
  rng = np.random.default_rng(11)
  tokens = rng.integers(0, config.vocab_size, (batch, length))
  positions = np.stack([rng.permutation(config.block_size)[:length] for _ in range(batch)])
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(positions, jnp.int32)


def _assert_params_identical(got: dict[str, np.ndarray], want: dict[str, np.ndarray]):
  assert sorted(got) == sorted(want)
  for k in want:
    assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
    assert got[k].tobytes() == want[k].tobytes(), f"{k} differs"


def _dir_listing(folder: Path) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# ---- Round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["plain", "orig_mod_prefix", "optimizer_and_args"])
def test_round_trip_is_bit_exact(tmp_path, tiny_model, variant):
  params = flat_params(tiny_model)
  sd = export_torch_state_dict(params, TINY, contiguous=variant != "plain")
  extra = None
  if variant == "orig_mod_prefix":  # torch.compile'd model
    sd = collections.OrderedDict((f"_orig_mod.{k}", v) for k, v in sd.items())
  if variant == "optimizer_and_args":
    extra = {
        "optimizer": {"state": {i: {"exp_avg": np.full(v.shape, 0.5, np.float32),
                                    "step": np.array(10.0, np.float32)}
                                for i, v in enumerate(list(sd.values())[:3])},
                      "param_groups": [{"lr": 3e-4, "betas": (0.9, 0.95), "params": [0, 1, 2]}]},
        "args": {"batch_size": 8, "lr": 3e-4, "compile": True},
        "step": 5000,
    }
  src = tf.write_torch_checkpoint(tmp_path / "lras.pt", sd, extra, cfg=torch_cfg(TINY))
  out = convert_checkpoint(src, tmp_path / "converted", "lras", progress=False)
  assert out == (tmp_path / "converted").absolute()
  assert sorted(p.name for p in out.iterdir()) == ["config.json", "params"]
  meta = read_meta(out)
  assert meta["system"] == "lras" and meta["source"] == str(src.absolute())
  assert load_config(out) == TINY

  loaded = load_converted(out)
  _assert_params_identical(flat_params(loaded), params)
  tokens, positions = _inputs(TINY)
  want = np.asarray(tiny_model(tokens, positions))
  got = np.asarray(loaded(tokens, positions))
  assert np.isfinite(want).all() and want.std() > 0
  np.testing.assert_array_equal(got, want)
  # Nothing but the output in the folder: no temporary or partial-save directories left.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["converted", "lras.pt"]


def test_config_overrides_and_overwrite(tmp_path, tiny_model):
  """A checkpoint without 'cfg' needs the config given; an existing output is refused unless
  overwrite=True; the dtype policy can be changed at load time."""
  params = flat_params(tiny_model)
  src = tf.write_torch_checkpoint(tmp_path / "bare.pt", export_torch_state_dict(params, TINY))
  with pytest.raises(ValueError, match="no saved 'cfg'"):
    convert_checkpoint(src, tmp_path / "out", "lras", progress=False)
  sizes = dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32)
  out = convert_checkpoint(src, tmp_path / "out", "lras", config_overrides=sizes, progress=False)
  assert load_config(out) == TINY
  with pytest.raises(FileExistsError):
    convert_checkpoint(src, out, "lras", config_overrides=sizes, progress=False)
  # Overwrite with different weights: the new ones are what is loaded.
  doubled = {k: v * 2 for k, v in params.items()}
  src2 = tf.write_torch_checkpoint(tmp_path / "doubled.pt", export_torch_state_dict(doubled, TINY),
                                   cfg=torch_cfg(TINY))
  convert_checkpoint(src2, out, "lras", overwrite=True, progress=False)
  _assert_params_identical(flat_params(load_converted(out)), doubled)
  bf16 = load_converted(out, param_dtype="bfloat16", dtype="bfloat16")
  kernel = flat_params(bf16)["lm_head/kernel"]
  assert kernel.dtype == jnp.bfloat16
  np.testing.assert_array_equal(kernel, doubled["lm_head/kernel"].astype(jnp.bfloat16))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.pt", "doubled.pt", "out"]


def test_real_fixture_converts_to_golden_logits(tmp_path):
  """The torch-written fixture converts and reproduces torch's logits."""
  src = default_fixtures_dir() / "lras" / "model.pt"
  if not src.exists():
    pytest.skip(f"fixture {src} not present")
  golden = np.load(src.parent / "golden.npz")
  tol = json.loads((src.parent / "manifest.json").read_text())["outputs"]["logits"]
  out = convert_checkpoint(src, tmp_path / "fixture", "lras", progress=False)
  model = load_converted(out)
  logits = model(jnp.asarray(golden["seq"], jnp.int32), jnp.asarray(golden["pos"], jnp.int32))
  np.testing.assert_allclose(np.asarray(logits), golden["logits"], atol=tol["atol"],
                             rtol=tol["rtol"])


# ---- Refusals leave nothing behind -----------------------------------------------------------

def test_wrong_shape_is_refused_and_nothing_is_written(tmp_path, tiny_model):
  sd = export_torch_state_dict(flat_params(tiny_model), TINY, contiguous=True)
  sd["lm_head.weight"] = np.zeros((TINY.vocab_size + 4, TINY.n_embd), np.float32)
  src_dir, out_dir = tmp_path / "src", tmp_path / "out"
  src_dir.mkdir()
  out_dir.mkdir()
  src = tf.write_torch_checkpoint(src_dir / "bad.pt", sd, cfg=torch_cfg(TINY))
  with pytest.raises(MappingError) as err:
    convert_checkpoint(src, out_dir / "converted", "lras", progress=False)
  msg = str(err.value)
  assert "lm_head.weight" in msg and "lm_head/kernel" in msg
  assert "(100, 32)" in msg and "(32, 96)" in msg  # torch shape and the model's shape
  assert "1 problems" in msg
  assert _dir_listing(out_dir) == []
  assert _dir_listing(src_dir) == ["bad.pt"]


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny_model):
  sd = export_torch_state_dict(flat_params(tiny_model), TINY, contiguous=True)
  del sd["transformer.h.1.ln_2.weight"]
  sd["transformer.h.1.attn.bias"] = np.ones((4,), np.float32)
  sd["_orig_mod.extra_head.weight"] = np.ones((3, 3), np.float32)
  src = tf.write_torch_checkpoint(tmp_path / "bad.pt", sd, cfg=torch_cfg(TINY))
  with pytest.raises(MappingError) as err:
    convert_checkpoint(src, tmp_path / "out", "lras", progress=False)
  msg = str(err.value)
  assert "missing in checkpoint: transformer.h.1.ln_2.weight (for blocks/1/ln_2/scale)" in msg
  assert "unexpected key in checkpoint: transformer.h.1.attn.bias" in msg
  assert "unexpected key in checkpoint: _orig_mod.extra_head.weight" in msg
  assert "3 problems" in msg
  assert _dir_listing(tmp_path) == ["bad.pt"]


def test_failure_while_streaming_cleans_up(tmp_path, tiny_model):
  """A tensor that passes the plan but cannot be read (it reaches past its storage) fails the
  conversion after earlier tensors were written: the temporary output is removed."""
  sd = export_torch_state_dict(flat_params(tiny_model), TINY, contiguous=True)
  v, d = TINY.vocab_size, TINY.n_embd
  sd["lm_head.weight"] = tf.StridedTensor(np.zeros(10, np.float32), 0, (v, d), (d, 1))
  src = tf.write_torch_checkpoint(tmp_path / "bad.pt", sd, cfg=torch_cfg(TINY))
  with pytest.raises(CheckpointError, match="reaches past the end of its storage"):
    convert_checkpoint(src, tmp_path / "out", "lras", progress=False)
  assert _dir_listing(tmp_path) == ["bad.pt"]


def test_malicious_checkpoint_is_refused_by_the_converter(tmp_path):
  marker = tmp_path / "pwned"
  src = tf.write_malicious_checkpoint(tmp_path / "evil.pt", marker, "builtins.exec")
  with pytest.raises(CheckpointError, match="builtins.exec"):
    convert_checkpoint(src, tmp_path / "out", "lras", progress=False)
  assert not marker.exists()
  assert _dir_listing(tmp_path) == ["evil.pt"]


# ---- Streaming memory bound ----------------------------------------------------------------

# A model whose largest tensors (token embedding and lm_head, 12288 x 1024 float32) are 48 MiB
# and whose file is 8x that.
BIG = dict(vocab_size=12288, block_size=64, n_layer=6, n_head=8, n_embd=1024)

_WRITE_BIG = textwrap.dedent("""
    import json, sys
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from tests import torch_files as tf
    from spelke_jax.convert import lras_mapping
    from spelke_jax.models.lras_config import LRASConfig

    def write(path, sizes):
      # One LazyTensor per torch key, made (seeded by its index in the table) only when written.
      config = LRASConfig(**sizes)
      d, v, t = config.n_embd, config.vocab_size, config.block_size
      shapes = {'token_embedding.weight': (v, d), 'positional_embedding.weight': (t, d),
                'c_attn.weight': (3 * d, d), 'attn.c_proj.weight': (d, d),
                'c_fc.weight': (4 * d, d), 'mlp.c_proj.weight': (d, 4 * d),
                'lm_head.weight': (v, d)}
      sd = {}
      for i, e in enumerate(lras_mapping.table(config).entries):
        shape = next((s for k, s in shapes.items() if e.torch_name.endswith(k)), (d,))
        make = lambda i=i, shape=shape: np.random.default_rng(i).standard_normal(
            shape, dtype=np.float32)
        sd[e.torch_name] = tf.LazyTensor(shape, np.float32, make)
      cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.to_dict().items()}
      tf.write_torch_checkpoint(path, sd, cfg=cfg)
      return max(int(np.prod(x.shape)) * 4 for x in sd.values())

    largest = write(sys.argv[2], json.loads(sys.argv[3]))
    write(sys.argv[4], dict(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16))
    print(json.dumps({'largest': largest}))
""")

_MEASURE = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from spelke_jax.convert.convert import convert_checkpoint
    from spelke_jax.convert.load import load_converted

    def status():
      # VmRSS / VmHWM (peak) of this process's own address space, in bytes. ru_maxrss is not
      # used for the bound: Linux carries it over exec from the forking parent (pytest).
      out = {}
      with open('/proc/self/status') as f:
        for line in f:
          key, _, value = line.partition(':')
          if key in ('VmRSS', 'VmHWM'):
            out[key] = int(value.split()[0]) * 1024
      return out

    big, tiny, out = sys.argv[1], sys.argv[2], sys.argv[3]
    convert_checkpoint(tiny, out + '_warmup', 'lras', progress=False)  # warm up Orbax/JAX
    try:
      with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current RSS
      reset = True
    except OSError:
      reset = False
    before = status()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    convert_checkpoint(big, out, 'lras', progress=False)
    after = status()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # Spot check of the result (after the measurement): lm_head was made by rng(seed).
    model = load_converted(out)
    lm_head = np.asarray(model.lm_head.kernel[...])
    want = np.random.default_rng(int(sys.argv[4])).standard_normal(
        lm_head.shape[::-1], dtype=np.float32).T
    print(json.dumps({'rss_before': before['VmRSS'], 'hwm_before': before['VmHWM'],
                      'hwm_after': after['VmHWM'], 'hwm_reset': reset,
                      'maxrss_before': maxrss_before, 'maxrss_after': maxrss_after,
                      'lm_head_exact': bool(np.array_equal(lm_head, want))}))
""")


@pytest.mark.slow
def test_conversion_memory_is_bounded_by_the_largest_tensor(tmp_path):
  """Converting a 384 MiB file whose largest tensor is 48 MiB raises the peak RSS of a fresh
  process by less than 3 x 48 MiB: tensors are streamed, never the whole file."""
  repo = str(Path(__file__).resolve().parents[2])
  big, tiny, out = tmp_path / "big.pt", tmp_path / "tiny.pt", tmp_path / "converted"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  # The files are written by their own process, so writing them does not count.
  written = subprocess.run([sys.executable, "-c", _WRITE_BIG, repo, str(big), json.dumps(BIG),
                            str(tiny)],
                           capture_output=True, text=True, timeout=300, env=env, check=False)
  assert written.returncode == 0, written.stderr[-3000:]
  largest = json.loads(written.stdout.strip().splitlines()[-1])["largest"]
  file_size = big.stat().st_size
  assert largest >= 48 * 2**20 and file_size >= 6 * largest

  lm_head_seed = 3 + 6 * BIG["n_layer"]  # index of lm_head.weight in the table (its rng seed)
  measured = subprocess.run([sys.executable, "-c", _MEASURE, str(big), str(tiny), str(out),
                             str(lm_head_seed)],
                            capture_output=True, text=True, timeout=600, env=env, check=False)
  assert measured.returncode == 0, measured.stderr[-3000:]
  m = json.loads(measured.stdout.strip().splitlines()[-1])
  increase = m["hwm_after"] - m["hwm_before"]
  mib = lambda x: f"{x / 2**20:.0f} MiB"
  print(f"\nfile {mib(file_size)}, largest tensor {mib(largest)}; RSS before converting "
        f"{mib(m['rss_before'])}, peak before {mib(m['hwm_before'])} (reset: {m['hwm_reset']}), "
        f"peak after {mib(m['hwm_after'])}: increase {mib(increase)} = "
        f"{increase / largest:.2f} x largest, {increase / file_size:.2f} x file; ru_maxrss "
        f"{mib(m['maxrss_before'])} -> {mib(m['maxrss_after'])}")
  assert m["lm_head_exact"]
  assert 0 < increase < 3 * largest
  assert increase < file_size / 3
  for p in (big, tiny):
    p.unlink()


# ---- Sharded loading --------------------------------------------------------------------------

@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices (XLA_FLAGS="
                    "--xla_force_host_platform_device_count=8)")
def test_load_converted_sharded(tmp_path, tiny_model):
  params = flat_params(tiny_model)
  src = tf.write_torch_checkpoint(tmp_path / "lras.pt", export_torch_state_dict(params, TINY),
                                  cfg=torch_cfg(TINY))
  out = convert_checkpoint(src, tmp_path / "converted", "lras", progress=False)
  mesh = sharding.make_mesh({"data": 2, "model": 4}, jax.devices()[:8])
  model = load_converted(out, mesh=mesh, rules="tp")
  qkv = model.blocks[0].attn.qkv[...]
  assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, None, "model", None)
  assert len(qkv.addressable_shards) == 8
  assert qkv.addressable_shards[0].data.shape == (TINY.n_embd, 3, TINY.n_head // 4, TINY.head_dim)
  fc = model.blocks[0].mlp.fc.kernel[...]
  assert fc.sharding.spec == jax.sharding.PartitionSpec(None, "model")
  _assert_params_identical(flat_params(model), params)
  tokens, positions = _inputs(TINY, batch=4)
  want = np.asarray(load_converted(out)(tokens, positions))
  batch = sharding.batch_sharding(mesh, sharding.RULES["tp"], 2)
  got = model(jax.device_put(tokens, batch), jax.device_put(positions, batch))
  assert got.sharding.spec[0] == "data"
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
