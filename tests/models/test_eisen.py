"""EISEN affinity network: fixture parity (head, sampling, logits, loss), resampling helpers,
BatchNorm semantics, shapes of the paper backbone, the checkpoint mapping."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spelke_jax.convert import eisen_mapping
from spelke_jax.convert.load import load_torch
from spelke_jax.convert.mapping import CONV_OIHW_TO_HWIO, LINEAR, MappingError, plan
from spelke_jax.convert.torch_writer import write_torch_checkpoint
from spelke_jax.models import eisen
from spelke_jax.models.eisen_config import EisenConfig, eisen_code, eisen_paper, tiny
from spelke_jax.parity import compare, load_pack
from tests.fixture_packs import pack_params


def _nhwc(x):
  return np.transpose(np.asarray(x), (0, 2, 3, 1))


def _numpy_model(config, seed: int = 0) -> eisen.EISEN:
  """A tiny EISEN with random weights drawn by numpy (eager jax.random init compiles one
  program per shape, ~0.5 s each on a small CPU)."""
  model = eisen.EISEN(config)  # no rngs: zeros, BatchNorm var ones
  rng = np.random.default_rng(seed)
  _, state = nnx.split(model)
  for _, var in nnx.to_flat_state(state):
    if isinstance(var, nnx.Param):
      fan_in = int(np.prod(var.shape[:-1])) if len(var.shape) > 1 else 4
      value = rng.normal(size=var.shape) / np.sqrt(fan_in)
      var.set_value(jnp.asarray(value + (1.0 if len(var.shape) == 1 else 0.0), jnp.float32))
  nnx.update(model, state)
  return model


@nnx.jit
def _forward(model, images):
  return model(images)


# ---- Fixture parity ----------------------------------------------------------------------------

@pytest.mark.parametrize("pack", pack_params("eisen_grouping"))
def test_fixture_affinities_and_loss(pack):
  pack = load_pack(pack)
  tol = pack.tolerances
  cfg = dict(pack.config["EISEN"], feature_dim=pack.config["fixture"]["backbone_feature_dim"])
  config = EisenConfig.from_dict(cfg)
  k_win, s = config.local_window_size, config.num_affinity_samples
  out = {}
  head = load_torch(pack.file("model.pt"), "eisen_head", config=cfg)
  levels = config.supervision_level
  recorded = [pack[f"train_global_idx_l{l}"] for l in range(levels)]

  @nnx.jit
  def run(head, features, global_idx, recorded, target):
    key, query = head(features)  # [B, h, w, C]
    o = {"key": jnp.transpose(key, (0, 3, 1, 2)), "query": jnp.transpose(query, (0, 3, 1, 2))}
    _, h, w, _ = key.shape
    idx = eisen.sample_indices(eisen.local_indices(h, w, k_win), global_idx)
    o["sample_idx"] = idx
    o["logits"] = logits = eisen.affinity_logits(key, query, idx)
    o["loss"] = eisen.affinity_loss(logits, idx, target, size=(h, w))
    o["adj"] = eisen.softmax_max_norm(logits)
    total, per_level = eisen.multiscale_loss(key, query, target, local_window_size=k_win,
                                             num_samples=s, levels=levels, global_idx=recorded)
    for level in range(levels):
      st = 2 ** level
      lg, ix = eisen.sample_affinities(eisen.downsample(key, st), eisen.downsample(query, st),
                                       local_window_size=k_win, num_samples=s,
                                       global_idx=recorded[level])
      o[f"train_sample_idx_l{level}"] = ix
      o[f"train_logits_l{level}"] = lg
      o[f"train_loss_l{level}"] = per_level[level]
    o["train_loss_total"] = total
    return o

  out = run(head, _nhwc(pack["features"]), pack["global_idx"], recorded, pack["segment_target"])
  out = {k: np.asarray(v) for k, v in out.items()}
  h, w = pack["features"].shape[2:]
  out["local_indices"] = eisen.local_indices(h, w, k_win)
  failed = []
  for name, value in out.items():
    r = compare(name, pack[name], value, tol[name])
    if not r.ok:
      failed.append(r.line())
  assert not failed, "\n".join(failed)
  # The golden key/query fed directly reproduce the logits too (no head error in between).
  lg = jax.jit(eisen.affinity_logits)(_nhwc(pack["key"]), _nhwc(pack["query"]),
                                      pack["sample_idx"])
  assert compare("logits", pack["logits"], np.asarray(lg), tol["logits"]).ok


# ---- Sampling, logits -----------------------------------------------------------------------

def test_local_indices_window_order_and_sentinel():
  loc = eisen.local_indices(3, 4, 3)  # N = 12, sentinel 12
  assert loc.shape == (12, 9) and loc.dtype == np.int32
  np.testing.assert_array_equal(loc[0], [12, 12, 12, 12, 0, 1, 12, 4, 5])
  np.testing.assert_array_equal(loc[5], [0, 1, 2, 4, 5, 6, 8, 9, 10])
  np.testing.assert_array_equal(loc[:, 4], np.arange(12))  # the node itself at the centre


def test_sentinel_logit_is_exactly_zero():
  rng = np.random.default_rng(0)
  key = jnp.asarray(rng.normal(size=(2, 4, 4, 8)) * 100, jnp.float32)
  query = jnp.asarray(rng.normal(size=(2, 4, 4, 8)) * 100, jnp.float32)
  local = eisen.local_indices(4, 4, 5)
  idx = eisen.sample_indices(local, rng.integers(0, 16, size=(2, 16, 7)))
  assert idx.shape == (2, 16, 32)
  logits = np.asarray(eisen.affinity_logits(key, query, idx))
  sentinel = np.asarray(idx) == 16
  assert sentinel.sum() > 0
  assert np.all(logits[sentinel] == 0.0)
  assert np.all(logits[~sentinel] != 0.0)
  # Non-sentinel entries are the scaled dot products.
  kf, qf = np.asarray(key).reshape(2, 16, 8), np.asarray(query).reshape(2, 16, 8)
  b, n, s = 1, 5, 30
  j = int(idx[b, n, s])
  np.testing.assert_allclose(logits[b, n, s], qf[b, n] @ kf[b, j] / np.sqrt(8), rtol=1e-5)
  # Chunked over nodes (lax.map + checkpoint): the same logits.
  np.testing.assert_array_equal(np.asarray(eisen.affinity_logits(key, query, idx, node_chunk=5)),
                                logits)
  # Full affinities agree with sampling every node.
  every = jnp.broadcast_to(jnp.arange(16, dtype=jnp.int32), (2, 16, 16))
  np.testing.assert_allclose(eisen.full_affinity_logits(key, query),
                             eisen.affinity_logits(key, query, every), rtol=1e-6, atol=1e-3)


def test_random_global_indices_and_softmax_max_norm():
  g = eisen.random_global_indices(jax.random.key(1), 2, 10, 500)
  assert g.shape == (2, 10, 500) and g.dtype == jnp.int32
  assert int(g.min()) == 0 and int(g.max()) == 9
  x = jnp.asarray([[1.0, 2.0, 0.0, 2.0], [-50.0, -50.0, -50.0, -49.0]])
  a = np.asarray(eisen.softmax_max_norm(x))
  np.testing.assert_allclose(a.max(-1), 1.0)
  np.testing.assert_allclose(a[0], np.exp(np.asarray([1, 2, 0, 2]) - 2.0), rtol=1e-6)


# ---- Loss ------------------------------------------------------------------------------------

def _numpy_loss(logits, idx, seg):
  """compute_loss written out row by row in float64."""
  b_, n_, s_ = logits.shape
  total, rows = 0.0, 0
  for b in range(b_):
    for n in range(n_):
      if seg[b, n] == 0:
        continue
      rows += 1
      lab = np.asarray([seg[b, j] if j < n_ else 0 for j in idx[b, n]])
      t = (lab == seg[b, n]).astype(np.float64)
      t /= t.sum() + 1e-9
      e = np.exp(logits[b, n] - logits[b, n].max())
      p = np.maximum(e / (e.sum() + 1e-12), 1e-8)
      total += sum(ti * (np.log(ti) - np.log(pi)) for ti, pi in zip(t, p) if ti > 0)
  return total / (rows + 1e-9)


def test_loss_two_objects_by_hand():
  # 2x4 map, objects 1 (left column pair) and 2 (right half), background elsewhere.
  seg = np.asarray([[[1, 0, 2, 2], [1, 0, 2, 2]]])
  local = eisen.local_indices(2, 4, 3)  # 9 samples, sentinel 8
  idx = eisen.sample_indices(local, None)
  idx = np.broadcast_to(np.asarray(idx), (1, 8, 9))
  # All logits zero: p is uniform over the 9 samples, so a moving row with c positives has
  # KL = log(9 / c). Node 0 (object 1): positives self and node 4 -> c = 2; node 2 (object 2):
  # window 1,2,3,5,6,7 valid, positives 2,3,6,7 -> c = 4; node 3: positives 2,3,6,7 -> 4.
  # Rows 4, 6, 7 mirror rows 0, 2, 3 -> loss = mean over the 6 moving rows.
  zeros = jnp.zeros((1, 8, 9), jnp.float32)
  want = (2 * np.log(9 / 2) + 4 * np.log(9 / 4)) / 6
  got = float(eisen.affinity_loss(zeros, idx, seg))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(got, _numpy_loss(np.zeros((1, 8, 9)), idx, seg.reshape(1, 8)),
                             rtol=1e-6)
  # Random logits against the row-by-row numpy version; with full-resolution target input.
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(1, 8, 9)).astype(np.float32) * 3
  np.testing.assert_allclose(float(eisen.affinity_loss(logits, idx, seg)),
                             _numpy_loss(logits.astype(np.float64), idx, seg.reshape(1, 8)),
                             rtol=1e-5)
  up = np.repeat(np.repeat(seg, 4, axis=1), 4, axis=2)[:, None]  # [1, 1, 8, 16]
  np.testing.assert_allclose(float(eisen.affinity_loss(logits, idx, up, size=(2, 4))),
                             float(eisen.affinity_loss(logits, idx, seg)), rtol=1e-7)
  # The explicit-target form with a per-entry mask equal to the row mask gives the same.
  targets, rows = eisen.connectivity_targets(jnp.asarray(seg), idx)
  per_entry = jnp.broadcast_to(rows[..., None], targets.shape)
  np.testing.assert_allclose(float(eisen.affinity_loss_from_targets(logits, targets, per_entry)),
                             float(eisen.affinity_loss(logits, idx, seg)), rtol=1e-7)
  # No moving pixel at all: loss 0, gradient finite.
  g = jax.grad(lambda l: eisen.affinity_loss(l, idx, np.zeros_like(seg)))(jnp.asarray(logits))
  assert np.all(np.isfinite(np.asarray(g)))


def test_multiscale_loss_draws_fresh_samples():
  rng = np.random.default_rng(0)
  key = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  query = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  target = jnp.asarray(rng.integers(0, 3, size=(2, 32, 32)))

  @jax.jit
  def fn(k, q, t, r):
    # Level l draws from fold_in(rng, l): the same draws given explicitly give the same losses.
    g = [eisen.random_global_indices(jax.random.fold_in(r, l), 2, 64 // 4**l, 11)
         for l in range(2)]
    return (eisen.multiscale_loss(k, q, t, local_window_size=3, num_samples=20, levels=2, rng=r),
            eisen.multiscale_loss(k, q, t, local_window_size=3, num_samples=20, levels=2,
                                  global_idx=g))

  (total, per), (_, per_g) = fn(key, query, target, jax.random.key(0))
  assert len(per) == 2 and np.isfinite(float(total))
  np.testing.assert_allclose(float(total), float(sum(per)), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(per_g), np.asarray(per), rtol=1e-6)
  (total2, _), _ = fn(key, query, target, jax.random.key(1))
  assert float(total) != float(total2)


# ---- Resampling ------------------------------------------------------------------------------

def test_bilinear_matches_torch_align_corners_false():
  x = jnp.asarray([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
  want = np.asarray([[1.0, 1.25, 1.75, 2.0], [1.5, 1.75, 2.25, 2.5],
                     [2.5, 2.75, 3.25, 3.5], [3.0, 3.25, 3.75, 4.0]])
  np.testing.assert_allclose(np.asarray(eisen.resize_bilinear(x, (4, 4)))[0, :, :, 0], want,
                             rtol=1e-7)
  # 3 -> 5 along W (non-integer ratio): src = 0.6 (dst + 0.5) - 0.5 = -0.2 (clamped to 0), 0.4,
  # 1.0, 1.6, 2.2 (i0 = 2 = last, so i1 = 2: edge clamp).
  v = np.asarray([10.0, 20.0, 40.0])
  row = eisen.resize_bilinear(jnp.asarray(v)[None, None, :, None], (1, 5))[0, 0, :, 0]
  np.testing.assert_allclose(np.asarray(row), [10.0, 14.0, 20.0, 32.0, 40.0], rtol=1e-6)
  # A 1x1 map (the ASPP pooling branch) broadcasts.
  one = eisen.resize_bilinear(jnp.full((1, 1, 1, 2), 3.5), (3, 4))
  np.testing.assert_allclose(np.asarray(one), 3.5)


def test_nearest_resize_labels_torch_indices():
  t = jnp.arange(2 * 64 * 64).reshape(2, 1, 64, 64)
  np.testing.assert_array_equal(np.asarray(eisen.nearest_resize_labels(t, 16, 16)),
                                np.asarray(t)[:, 0, ::4, ::4])
  # 5 -> 3: floor(dst * 5/3) = 0, 1, 3.
  t = jnp.arange(5)[None, None, :] * jnp.ones((1, 5, 1), jnp.int32)
  np.testing.assert_array_equal(np.asarray(eisen.nearest_resize_labels(t, 1, 3))[0, 0], [0, 1, 3])
  np.testing.assert_array_equal(np.asarray(eisen.downsample(jnp.arange(16).reshape(1, 4, 4), 2)),
                                [[[0, 2], [8, 10]]])


# ---- Modules ---------------------------------------------------------------------------------

def test_batchnorm_train_and_eval_like_torch():
  rng = np.random.default_rng(0)
  x = rng.normal(loc=2.0, scale=3.0, size=(2, 4, 5, 3)).astype(np.float32)
  bn = eisen.BatchNorm2d(3, rngs=nnx.Rngs(0))
  bn.scale.set_value(jnp.asarray([1.0, 2.0, 0.5]))
  bn.bias.set_value(jnp.asarray([0.0, 1.0, -1.0]))
  assert bn.use_running_average  # created in eval mode
  bn.train()
  y = np.asarray(bn(jnp.asarray(x)))
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  want = (x - mean) / np.sqrt(var + 1e-5) * np.asarray([1.0, 2.0, 0.5]) + np.asarray([0, 1, -1])
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  n = 2 * 4 * 5
  np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  bn.eval()
  y2 = np.asarray(bn(jnp.asarray(x)))
  rm, rv = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
  want2 = (x - rm) / np.sqrt(rv + 1e-5) * np.asarray([1.0, 2.0, 0.5]) + np.asarray([0, 1, -1])
  np.testing.assert_allclose(y2, want2, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(bn.mean[...]), rm)  # eval does not update


def test_paper_backbone_shapes():
  """ResNet-50 DeepLab + DeepLabV3+ (eval_shape only): 64x64 -> 16x16x128 features."""
  config = eisen_code()
  graphdef, state = nnx.split(eisen.abstract(config))
  img = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.uint8)
  feats = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).features(x), state, img)
  assert feats.shape == (2, 16, 16, 128) and feats.dtype == jnp.float32
  key, query = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, img)
  assert key.shape == query.shape == (2, 16, 16, 32)
  res = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s).backbone.backbone(x), state,
                       jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  assert {k: v.shape for k, v in res.items()} == {
      "res2": (1, 16, 16, 256), "res3": (1, 8, 8, 512), "res4": (1, 4, 4, 1024),
      "res5": (1, 4, 4, 2048)}
  # Every variable (params and BatchNorm statistics) carries logical axes.
  for path, var in nnx.to_flat_state(state):
    axes = var.get_metadata().get("logical_axes")
    assert axes is not None and len(axes) == len(var.shape), path
  dil = [b.conv2.conv.dilation for b in nnx.merge(graphdef, state).backbone.backbone.res5]
  assert dil == [2, 4, 8]


def test_tiny_model_train_and_eval():
  config = tiny()
  model = _numpy_model(config)
  imgs = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)), jnp.uint8)
  key, query = _forward(model, imgs)
  assert key.shape == query.shape == (2, 8, 8, 8)
  assert np.isfinite(np.asarray(key)).all() and float(jnp.std(key)) > 0
  np.testing.assert_array_equal(np.asarray(_forward(model, imgs)[0]), np.asarray(key))
  # uint8 and float 0..255 inputs normalise alike: (x - mean) / std.
  px = np.asarray([[[[0, 128, 255]]]], np.uint8)
  want = (px.astype(np.float32) - np.float32([123.675, 116.28, 103.53])) / np.float32(
      [58.395, 57.12, 57.375])
  for x in (px, px.astype(np.float32)):
    np.testing.assert_array_equal(
        np.asarray(eisen.normalize_images(x, config.pixel_mean, config.pixel_std)), want)
  before = np.asarray(model.backbone.backbone.stem.conv1.norm.mean[...])
  model.train()
  with pytest.raises(ValueError, match="dropout_rng"):
    _forward(model, imgs)

  @nnx.jit
  def step(m, x, r):
    return m(x, dropout_rng=r)

  k1, _ = step(model, imgs, jax.random.key(0))
  after = np.asarray(model.backbone.backbone.stem.conv1.norm.mean[...])
  assert not np.allclose(before, after)  # running statistics updated in train mode
  assert k1.shape == key.shape and not np.allclose(np.asarray(k1), np.asarray(key))
  model.eval()
  assert model.backbone.decoder.res5.deterministic
  assert model.backbone.backbone.stem.conv1.norm.use_running_average


def test_create_uses_the_original_inits():
  """He (fan_out) normal in the ResNet, c2_xavier uniform in the decoder, torch defaults in
  the head; BatchNorm weight 1, bias 0, statistics 0 / 1 (eval_shape + one small init)."""
  config = tiny()
  head = eisen.create_head(config.replace(feature_dim=64, kq_dim=32), seed=0)
  bound = 1 / np.sqrt(64)
  k = np.asarray(head.feat_conv.kernel[...])
  assert k.shape == (1, 1, 64, 32) and np.abs(k).max() <= bound and np.abs(k).max() > 0.8 * bound
  assert np.abs(np.asarray(head.feat_conv.bias[...])).max() <= bound
  assert np.abs(np.asarray(head.key_proj.bias[...])).max() > 0  # torch default bias, not 0
  key = jax.random.key(0)
  w = eisen.MSRA(key, (3, 3, 64, 256))
  np.testing.assert_allclose(float(jnp.std(w)), np.sqrt(2 / (9 * 256)), rtol=0.05)
  x = eisen.XAVIER(key, (3, 3, 256, 64))
  np.testing.assert_allclose(float(jnp.abs(x).max()), np.sqrt(3 / (9 * 256)), rtol=0.01)
  bn = eisen.BatchNorm2d(4, rngs=nnx.Rngs(0))
  for v, want in ((bn.scale, 1.0), (bn.bias, 0.0), (bn.mean, 0.0), (bn.var, 1.0)):
    np.testing.assert_array_equal(np.asarray(v[...]), want)


def test_config_presets_and_dict_round_trip():
  code, paper = eisen_code(), eisen_paper()
  assert (code.hidden_dim, code.propagation_iters, code.propagation_affinity_thresh) == (32, 25, 0.7)
  assert (paper.hidden_dim, paper.propagation_iters, paper.propagation_affinity_thresh) == (256, 40, 0.5)
  assert code.num_samples == 1024 and code.num_global == 399 and code.feature_dim == 128
  assert code.num_blocks == (3, 4, 6, 3) and code.res5_multi_grid == (1, 2, 4)
  cfg = tiny(num_blocks=[1, 2, 1, 1])
  d = cfg.to_dict()
  assert EisenConfig.from_dict(d) == cfg
  nested = {"EISEN": {"kq_dim": 8, "affinity_res": [16, 16]},
            "compute_segments": {"hidden_dim": 32, "min_cc_area": 12}, "feature_dim": 16}
  c = EisenConfig.from_dict(nested)
  assert (c.kq_dim, c.affinity_res, c.min_cc_area, c.feature_dim) == (8, (16, 16), 12, 16)
  with pytest.raises(ValueError):
    EisenConfig(local_window_size=4)
  with pytest.raises(ValueError):
    EisenConfig(backbone="resnet9000")


# ---- Checkpoint mapping -----------------------------------------------------------------------

_BN = ("weight", "running_mean", "running_var", "bias", "num_batches_tracked")

# torch conv name -> OIHW shape for tiny() (stem 16, res2 32 wide, bottleneck 8, 1 block per
# stage, ASPP 16, projections 8/8, decoder 16), written out by hand.
_TINY_CONV_NORM = {
    "stem.conv1": (8, 3, 3, 3), "stem.conv2": (8, 8, 3, 3), "stem.conv3": (16, 8, 3, 3),
    "res2.0.shortcut": (32, 16, 1, 1), "res2.0.conv1": (8, 16, 1, 1),
    "res2.0.conv2": (8, 8, 3, 3), "res2.0.conv3": (32, 8, 1, 1),
    "res3.0.shortcut": (64, 32, 1, 1), "res3.0.conv1": (16, 32, 1, 1),
    "res3.0.conv2": (16, 16, 3, 3), "res3.0.conv3": (64, 16, 1, 1),
    "res4.0.shortcut": (128, 64, 1, 1), "res4.0.conv1": (32, 64, 1, 1),
    "res4.0.conv2": (32, 32, 3, 3), "res4.0.conv3": (128, 32, 1, 1),
    "res5.0.shortcut": (256, 128, 1, 1), "res5.0.conv1": (64, 128, 1, 1),
    "res5.0.conv2": (64, 64, 3, 3), "res5.0.conv3": (256, 64, 1, 1),
}
_TINY_OTHER = {
    "backbone.decoder.res5.project_conv.convs.0.weight": (16, 256, 1, 1),
    "backbone.decoder.res5.project_conv.convs.1.weight": (16, 256, 3, 3),
    "backbone.decoder.res5.project_conv.convs.2.weight": (16, 256, 3, 3),
    "backbone.decoder.res5.project_conv.convs.3.weight": (16, 256, 3, 3),
    "backbone.decoder.res5.project_conv.convs.4.1.weight": (16, 256, 1, 1),
    "backbone.decoder.res5.project_conv.convs.4.1.bias": (16,),
    "backbone.decoder.res5.project_conv.project.weight": (16, 80, 1, 1),
    "backbone.decoder.res3.project_conv.weight": (8, 64, 1, 1),
    "backbone.decoder.res3.fuse_conv.0.weight": (16, 24, 3, 3),
    "backbone.decoder.res3.fuse_conv.1.weight": (16, 16, 3, 3),
    "backbone.decoder.res2.project_conv.weight": (8, 32, 1, 1),
    "backbone.decoder.res2.fuse_conv.0.weight": (16, 24, 3, 3),
    "backbone.decoder.res2.fuse_conv.1.weight": (16, 16, 3, 3),
    "feat_conv.weight": (8, 16, 1, 1), "feat_conv.bias": (8,),
    "key_proj.weight": (8, 8), "key_proj.bias": (8,),
    "query_proj.weight": (8, 8), "query_proj.bias": (8,),
}


def _expected_tiny_shapes() -> dict[str, tuple]:
  out = {}
  for name, shape in _TINY_CONV_NORM.items():
    out[f"backbone.backbone.{name}.weight"] = shape
    for s in _BN:
      out[f"backbone.backbone.{name}.norm.{s}"] = () if s == "num_batches_tracked" else (shape[0],)
  out.update(_TINY_OTHER)
  return out


def _torch_layout(model, table) -> dict[str, np.ndarray]:
  _, state = nnx.split(model)
  values = {"/".join(str(p) for p in path): np.asarray(var[...])
            for path, var in nnx.to_flat_state(state)}
  return {e.torch_name: np.ascontiguousarray(e.transform.inverse(values[e.flax_path]))
          for e in table.entries}


def _tiny_checkpoint(seed: int = 3):
  """(model, state dict in the torch layout with num_batches_tracked) for tiny()."""
  config = tiny()
  model = _numpy_model(config, seed=seed)
  _, state = nnx.split(model)
  rng = np.random.default_rng(seed + 1)
  for _, var in nnx.to_flat_state(state):  # non-default BatchNorm statistics
    if isinstance(var, nnx.BatchStat):
      var.set_value(jnp.asarray(rng.uniform(0.5, 1.5, var.shape), jnp.float32))
  nnx.update(model, state)
  sd = _torch_layout(model, eisen_mapping.table(config))
  for name in list(sd):
    if name.endswith("norm.running_var"):
      sd[name.replace("running_var", "num_batches_tracked")] = np.asarray(1, np.int64)
  return model, sd


def _flat_values(model) -> dict[str, np.ndarray]:
  _, state = nnx.split(model)
  return {"/".join(str(p) for p in path): np.asarray(var[...])
          for path, var in nnx.to_flat_state(state)}


def test_mapping_names_tiny_and_conversion():
  config = tiny()
  model, sd = _tiny_checkpoint()
  expected = _expected_tiny_shapes()
  assert sorted(sd) == sorted(expected)
  assert {k: tuple(v.shape) for k, v in sd.items()} == expected
  # Convert in memory with the plan (as convert.py does, without the Orbax round trip).
  stored = {f"module.{k}": v for k, v in sd.items()}
  graphdef, state = nnx.split(eisen.abstract(config))
  flat = dict(nnx.to_flat_state(state))
  by_path = {"/".join(str(p) for p in path): path for path in flat}
  steps = plan(eisen_mapping.table(config), {k: v.shape for k, v in stored.items()},
               {k: flat[p].shape for k, p in by_path.items()})
  assert len(steps) == len(flat) == 114  # params and BatchNorm statistics, each once
  for step in steps:
    flat[by_path[step.flax_path]].set_value(jnp.asarray(step.transform.fn(stored[step.source])))
  loaded = nnx.merge(graphdef, state)
  want, got = _flat_values(model), _flat_values(loaded)
  assert want.keys() == got.keys()
  for p in want:
    np.testing.assert_array_equal(want[p], got[p], err_msg=p)
  # A missing tensor and a foreign one are both reported by name.
  shapes = {k: v.shape for k, v in stored.items()}
  del shapes["module.backbone.decoder.res2.fuse_conv.1.weight"]
  shapes["module.backbone.extra.weight"] = (1,)
  with pytest.raises(MappingError) as err:
    plan(eisen_mapping.table(config), shapes, {k: flat[p].shape for k, p in by_path.items()})
  assert "res2.fuse_conv.1.weight" in str(err.value) and "backbone.extra" in str(err.value)


@pytest.mark.slow
def test_load_torch_round_trip(tmp_path):
  """The real converter + loader (Orbax) on a 'module.'-prefixed tiny checkpoint."""
  config = tiny()
  model, sd = _tiny_checkpoint()
  path = write_torch_checkpoint(tmp_path / "eisen.pt", {f"module.{k}": v for k, v in sd.items()})
  loaded = load_torch(path, "eisen", config=config.to_dict())
  want, got = _flat_values(model), _flat_values(loaded)
  assert want.keys() == got.keys()
  for p in want:
    np.testing.assert_array_equal(want[p], got[p], err_msg=p)
  imgs = jnp.asarray(np.random.default_rng(2).integers(0, 256, (1, 32, 32, 3)), jnp.uint8)
  np.testing.assert_array_equal(np.asarray(_forward(loaded, imgs)[0]),
                                np.asarray(_forward(model, imgs)[0]))


def test_mapping_full_model_reference_shapes():
  """Shapes the reference lists for the released ResNet-50 DeepLab checkpoint."""
  config = eisen_code()
  _, state = nnx.split(eisen.abstract(config))
  flax_shapes = {"/".join(str(p) for p in path): v.shape for path, v in nnx.to_flat_state(state)}
  torch_shapes = {}
  for e in eisen_mapping.table(config).entries:
    s = flax_shapes[e.flax_path]
    if e.transform is CONV_OIHW_TO_HWIO:
      s = (s[3], s[2], s[0], s[1])
    elif e.transform is LINEAR:
      s = (s[1], s[0])
    torch_shapes[e.torch_name] = tuple(s)
  ref = {
      "backbone.backbone.stem.conv1.weight": (64, 3, 3, 3),
      "backbone.backbone.stem.conv2.weight": (64, 64, 3, 3),
      "backbone.backbone.stem.conv3.weight": (128, 64, 3, 3),
      "backbone.decoder.res3.project_conv.weight": (64, 512, 1, 1),
      "backbone.decoder.res3.fuse_conv.0.weight": (128, 320, 3, 3),
      "backbone.decoder.res3.fuse_conv.1.weight": (128, 128, 3, 3),
      "backbone.decoder.res2.project_conv.weight": (32, 256, 1, 1),
      "backbone.decoder.res2.fuse_conv.0.weight": (128, 160, 3, 3),
      "backbone.decoder.res2.fuse_conv.1.weight": (128, 128, 3, 3),
      "backbone.decoder.res5.project_conv.convs.4.1.bias": (256,),
      "backbone.decoder.res5.project_conv.project.weight": (256, 1280, 1, 1),
      "backbone.backbone.res5.2.conv2.weight": (512, 512, 3, 3),
      "backbone.backbone.res5.0.shortcut.weight": (2048, 1024, 1, 1),
      "feat_conv.weight": (32, 128, 1, 1), "key_proj.weight": (32, 32),
  }
  for k, v in ref.items():
    assert torch_shapes[k] == v, k
  assert "backbone.backbone.res2.1.shortcut.weight" not in torch_shapes
  nbt = {k.replace(".running_var", ".num_batches_tracked"): () for k in torch_shapes
         if k.endswith("running_var")}
  assert len(nbt) == 55 and len(torch_shapes) == 294
  steps = plan(eisen_mapping.table(config), {**torch_shapes, **nbt}, flax_shapes)
  assert len(steps) == len(flax_shapes) == 294
