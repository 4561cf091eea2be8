"""Counterfactual probing: fixture parity, batching/prefix sharing equal the plain computation,
the full algorithm on the embedded small model, and clear errors on bad input."""
from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from spelke_jax.inference import probe, prompt, spelkenet_model, zoom
from tests.fixture_packs import assert_pack_passes, pack_params


@pytest.mark.slow
@pytest.mark.parametrize("pack", pack_params("spelkenet_probe"))
def test_fixture_parity(pack):
  assert_pack_passes(pack)


@pytest.fixture(scope="module")
def tiny():
  model, rgb, flow, table, no_motion = spelkenet_model.build_tiny(seed=3)
  return model, rgb, flow, table, no_motion


def _net(tiny, **probe_kw):
  model, rgb, flow, table, no_motion = tiny
  return probe.SpelkeNet(model, rgb, flow, table, probe.ProbeConfig(**probe_kw),
                         no_motion_codes=no_motion)


def _image(seed=0):
  rng = np.random.default_rng(seed)
  img = np.zeros((256, 256, 3), np.float32) + rng.uniform(0, 1, 3).astype(np.float32)
  img[80:170, 60:150] = rng.uniform(0, 1, 3)
  return img


def _runs(net, n=3):
  dirs = probe.poke_directions(n, np.full(n, 15.0, np.float32))
  return net.build_runs(np.asarray([[100.0, 120.0]]), dirs, [1000 + i for i in range(n)])


def test_batched_stage_equals_one_run_at_a_time(tiny):
  net = _net(tiny, per_run_frame0_order=True, num_seq_patches=0)
  img = _image()
  runs = _runs(net)
  batch = net.stage(img, runs, num_seq=2, key=jax.random.key(1))
  keys = jax.random.split(jax.random.key(1), len(runs))
  for i in range(len(runs)):
    single = net._decode_groups([batch.prompts[i]], keys[i:i + 1], False)[0]  # pylint: disable=protected-access
    ids = batch.prompts[i].target_seq[:, 0] - net.config.flow_patch_idx_range[0]
    np.testing.assert_allclose(batch.table_logits[i, ids], single["table_logits"], atol=2e-5)
    seq = prompt.assemble_flow_sequence(batch.prompts[i], single["rollout"], single["values"])
    codes = prompt.unpack_sorted_codes(seq, 2, net.config.flow_range[0], (net.grid, net.grid))
    np.testing.assert_array_equal(batch.codes[i], codes)


def test_shared_prefix_equals_prefilling_every_row(tiny):
  net = _net(tiny)
  img = _image(1)
  res = net.stage(img, _runs(net), key=jax.random.key(0))
  assert all(np.array_equal(q.seq[:q.flow_start], res.prompts[0].seq[:q.flow_start])
             for q in res.prompts)
  keys = jax.random.split(jax.random.key(0), 3)
  shared = probe._stage_inputs(res.prompts, keys, shared_prefix=True)  # pylint: disable=protected-access
  full = probe._stage_inputs(res.prompts, keys, shared_prefix=False)  # pylint: disable=protected-access
  assert shared.prefix_tokens.shape[0] == 1 and full.prefix_tokens.shape[0] == 3
  settings = probe.decode.DecodeSettings(
      sampling=probe.sampling.SamplingConfig(), flow_range=tuple(net.config.flow_range),
      table_ids=tuple(int(c) + net.config.flow_range[0] for c in net.table.token_ids))
  a = probe.decode.run(net.lras, shared, settings)
  b = probe.decode.run(net.lras, full, settings)
  np.testing.assert_allclose(np.asarray(a["table_logits"]), np.asarray(b["table_logits"]),
                             atol=2e-5)
  np.testing.assert_array_equal(np.asarray(a["values"]), np.asarray(b["values"]))


def test_decoded_values_are_flow_codes_unless_parity(tiny):
  net = _net(tiny)
  lo, hi = net.config.flow_range
  runs = _runs(net, 2)
  keys = jax.random.split(jax.random.key(2), 2)
  prompts = net.stage(_image(2), runs, num_seq=3, key=jax.random.key(2)).prompts
  for full_vocab in (False, True):
    net.probe = dataclasses.replace(net.probe, full_vocab_decoding=full_vocab)
    out = net._decode_groups(prompts, keys, False)  # pylint: disable=protected-access
    values = np.concatenate([np.concatenate([o["values"].ravel(), o["rollout"].ravel()])
                             for o in out])
    values = values[(values < net.config.flow_patch_idx_range[0])
                    | (values >= net.config.flow_patch_idx_range[1])]  # drop forced pointers
    in_flow = (values >= lo) & (values < hi)
    if not full_vocab:
      assert in_flow.all()
    else:  # a random model over the whole vocabulary picks non-flow tokens
      assert not in_flow.all()


def test_run_inference_end_to_end_and_deterministic(tiny):
  net = _net(tiny, num_zoom_iters=1, num_zoom_dirs=2, num_seeds=1, num_dirs=2, num_seq_patches=2)
  img = _image(3)
  trace = []
  a = net.run_inference(img, (100, 120), key=jax.random.key(5), trace=trace)
  b = net.run_inference(img, (100, 120), key=jax.random.key(5))
  assert a.shape == (256, 256) and a.dtype == bool
  np.testing.assert_array_equal(a, b)
  assert len(trace) == 3  # zoom stage, initial segment on the crop, final stage
  assert trace[-1].dot_maps.shape == (2, 256, 256)  # decoded flow at full resolution
  assert trace[0].dot_maps.shape == (2, 128, 128)   # expected displacement from logits


def test_point_crop_runs_every_stage_on_the_crop(tiny):
  cfg = dict(num_zoom_iters=0, num_zoom_dirs=2, num_seeds=1, num_dirs=2, num_seq_patches=0,
             point_crop=0.5, second_point_stage=True, final_expected_displacement=True)
  net = _net(tiny, **cfg)
  img = _image(3)
  seen = []
  real = net.get_segment

  def spy(image01, point, **kw):
    seen.append((image01, point, kw.get("initial_segment"), kw["use_flow_pred"]))
    return real(image01, point, **kw)
  net.get_segment = spy
  trace = []
  seg = net.run_inference(img, (40, 120), key=jax.random.key(5), trace=trace)
  # a 128-px square centred on the point, shifted inside the image: x 0..128, y 56..184
  crop = zoom.point_crop_box((40, 120), 128, 256)
  assert (crop.x_start, crop.y_start, crop.x_end, crop.y_end) == (0, 56, 128, 184)
  expect_img = zoom.crop_image(img, crop, 256)
  assert len(seen) == len(trace) == 2  # the seeding stage, then the final stage, both on the crop
  for image01, point, _, use_flow_pred in seen:
    np.testing.assert_array_equal(image01, expect_img)
    assert point == zoom.crop_point((40, 120), crop) == (80, 128)
    assert not use_flow_pred  # expected displacement in both stages
  assert seen[0][2] is None
  np.testing.assert_array_equal(seen[1][2], trace[0].segment_256.astype(np.uint8))
  assert trace[-1].dot_maps.shape == (2, 128, 128)  # expected displacement, not decoded flow
  np.testing.assert_array_equal(seg, zoom.paste_segment(
      trace[-1].segment_256.astype(np.uint8), np.array([0, 56, 128, 184]), (256, 256)).astype(bool))
  assert not seg[:56].any() and not seg[184:].any() and not seg[:, 128:].any()
  # without the crop and the seeding stage: one stage on the whole image
  plain = _net(tiny, **{**cfg, "point_crop": 0.0, "second_point_stage": False})
  trace = []
  plain.run_inference(img, (40, 120), key=jax.random.key(5), trace=trace)
  assert len(trace) == 1


def test_point_crop_geometry_and_bad_values():
  c = zoom.point_crop_box((48.0, 48.0), 48, 96)
  assert (c.x_start, c.y_start, c.x_end, c.y_end, c.ratio) == (24, 24, 72, 72, 2.0)
  c = zoom.point_crop_box((95.0, 3.0), 48, 96)  # pushed inside at the corner
  assert (c.x_start, c.y_start, c.x_end, c.y_end) == (48, 0, 96, 48)
  with pytest.raises(ValueError, match="crop side 0 px"):
    zoom.point_crop_box((10, 10), 0, 96)
  with pytest.raises(ValueError, match="point_crop must lie in"):
    probe.ProbeConfig(point_crop=1.0)
  with pytest.raises(ValueError, match="point_crop must lie in"):
    probe.ProbeConfig(point_crop=-0.1)
  small = probe.PRESETS["synthetic_small"]()
  assert small.point_crop == 0.5 and small.original().point_crop == 0.5
  assert probe.spelkenet_1b_fast().point_crop == 0.0  # the original presets keep it off


def test_bad_inputs(tiny):
  net = _net(tiny)
  img = _image()
  with pytest.raises(ValueError, match="outside"):
    net.run_inference(img, (256, 10))
  with pytest.raises(ValueError, match=r"\[256, 256, 3\]"):
    net.run_inference(img[:128], (10, 10))
  with pytest.raises(ValueError, match="dtype"):
    net.run_inference((img * 255).astype(np.int32), (10, 10))
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    net.run_inference(img * 3, (10, 10))
  model, rgb, flow, table, _ = tiny
  with pytest.raises(ValueError, match="not in the flow table"):
    probe.SpelkeNet(model, rgb, flow, table, no_motion_codes=(10**6,))


def test_empty_zoom_segment_falls_back(tiny, monkeypatch):
  net = _net(tiny, num_zoom_iters=2, num_zoom_dirs=1, num_dirs=1, num_seq_patches=0)
  real = net.get_segment
  calls = []

  def fake(image01, point, **kw):
    res = real(image01, point, **kw)
    calls.append(kw.get("num_seq"))
    if len(calls) == 1:  # the first zoom stage finds nothing
      res = dataclasses.replace(res, segment_256=np.zeros_like(res.segment_256))
    return res
  monkeypatch.setattr(net, "get_segment", fake)
  seg = net.run_inference(_image(4), (100, 120), key=jax.random.key(0))
  assert seg.shape == (256, 256)
  strict = _net(tiny, num_zoom_iters=2, num_zoom_dirs=1, num_dirs=1).probe.original()
  net.probe = strict
  calls.clear()
  with pytest.raises(ValueError, match="empty"):
    net.run_inference(_image(4), (100, 120), key=jax.random.key(0))


def test_poke_directions_follow_the_original():
  d = probe.poke_directions(4, np.asarray([10, 20, 30, 40], np.float32))
  np.testing.assert_allclose(d, [[10, 0], [0, 20], [-30, 0], [0, -40]], atol=1e-5)
  assert d.dtype == np.float32
  mags = probe.sample_magnitudes(jax.random.key(0), 100, 10.0, 25.0)
  assert mags.min() >= 10 and mags.max() < 25


# ---- zoom geometry ----

def test_square_crop_box_and_point():
  mask = np.zeros((256, 256), np.uint8)
  mask[100:120, 50:90] = 1  # bbox x 50..89, y 100..119
  c = zoom.square_crop_box(mask, padding=25)
  # centre (69, 109), half = 39 // 2 + 25 = 44 -> [25, 114) x [65, 154)
  assert (c.x_start, c.x_end, c.y_start, c.y_end) == (25, 114, 65, 154)
  assert c.ratio == pytest.approx(256 / 89)
  assert zoom.crop_point((69, 109), c) == (int(44 * 256 / 89), int(44 * 256 / 89))
  edge = np.zeros((256, 256), np.uint8)
  edge[0:10, 0:10] = 1
  c2 = zoom.square_crop_box(edge)
  assert c2.x_start == 0 and c2.y_start == 0 and c2.x_end - c2.x_start == c2.y_end - c2.y_start
  with pytest.raises(ValueError, match="empty"):
    zoom.square_crop_box(np.zeros((8, 8)))


def test_resizes():
  x = np.arange(16, dtype=np.float32).reshape(4, 4)
  np.testing.assert_allclose(zoom.area_resize(x, 2, 2), [[2.5, 4.5], [10.5, 12.5]])
  const = np.full((61, 61, 3), 0.3, np.float32)
  np.testing.assert_allclose(zoom.area_resize(const, 256, 256), 0.3, atol=1e-6)
  m = np.array([[1, 0], [0, 1]], np.uint8)
  np.testing.assert_array_equal(zoom.nearest_resize(m, 4, 4),
                                np.kron(m, np.ones((2, 2), np.uint8)))


def test_boxes_round_trip_to_original_coordinates():
  mask = np.zeros((256, 256), np.uint8)
  mask[100:140, 60:100] = 1
  c1 = zoom.square_crop_box(mask)
  seg = np.ones((256, 256), np.uint8)
  boxes = zoom.absolute_boxes([c1], (256, 256))
  np.testing.assert_array_equal(boxes[0], [0, 0, 256, 256])
  np.testing.assert_array_equal(boxes[1], [c1.x_start, c1.y_start, c1.x_end, c1.y_end])
  pasted = zoom.paste_segment(seg, boxes[1], (256, 256))
  ys, xs = np.nonzero(pasted)
  assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (c1.x_start, c1.x_end, c1.y_start,
                                                              c1.y_end)


def test_sequential_displacement_averages_decoded_flows(tiny):
  net = _net(tiny)
  img = _image(5)
  pokes = np.asarray([[100, 120, 115, 120]], np.float64)
  disp = net.sequential_displacement(img, pokes, num_seq_patches=2, num_seeds=2,
                                     key=jax.random.key(0))
  assert disp.shape == (256, 256, 2) and disp.dtype == np.float32 and np.isfinite(disp).all()
  with pytest.raises(ValueError, match="outside"):
    net.sequential_displacement(img, np.asarray([[300, 1, 305, 1]]), num_seeds=1)


def test_flow_columns_only_head_equals_full_head(tiny):
  """With diagnostics off the parallel steps compute only the flow columns of the head."""
  net = _net(tiny)
  res = net.stage(_image(6), _runs(net, 2), key=jax.random.key(0))
  inputs = probe._stage_inputs(res.prompts, jax.random.split(jax.random.key(0), 2),  # pylint: disable=protected-access
                               shared_prefix=True)
  base = dict(sampling=probe.sampling.SamplingConfig(), flow_range=tuple(net.config.flow_range),
              table_ids=tuple(int(c) + net.config.flow_range[0] for c in net.table.token_ids))
  cheap = probe.decode.run(net.lras, inputs, probe.decode.DecodeSettings(**base))
  full = probe.decode.run(net.lras, inputs, probe.decode.DecodeSettings(**base, diagnostics=True))
  for name in ("table_logits", "lse_flow"):
    np.testing.assert_allclose(np.asarray(cheap[name]), np.asarray(full[name]), atol=2e-5)
  np.testing.assert_array_equal(np.asarray(cheap["values"]), np.asarray(full["values"]))


def test_pixel_hyperparameters_scale_with_the_model_size(tiny):
  base = probe.ProbeConfig(crop_padding=25, second_point_dist=(9.0, 50.0))
  assert base.scaled_to(256) == base  # the released models: unchanged
  small = base.scaled_to(96)
  assert (small.min_mag, small.max_mag) == pytest.approx((3.75, 9.375))
  assert small.crop_padding == 9 and small.second_point_dist == pytest.approx((3.375, 18.75))
  assert small.scaled_to(96) == small  # idempotent: sizes are now relative to 96
  off = dataclasses.replace(base, reference_size=0)
  assert off.scaled_to(96) == off
  assert _net(tiny).probe == probe.ProbeConfig().scaled_to(256)  # the tiny model is 256 px


def test_probe_config_from_a_config():
  c = ml_collections.ConfigDict(dict(preset="synthetic_small", num_zoom_iters=-1, num_dirs=4,
                                     point_crop=-1.0, parity=False))
  cfg = spelkenet_model.probe_config_from(c)
  assert cfg == dataclasses.replace(probe.synthetic_small(), num_dirs=4)
  c.point_crop = 0.0
  assert spelkenet_model.probe_config_from(c).point_crop == 0.0
  c.preset = "spelkenet_2b"
  with pytest.raises(ValueError, match="unknown probing preset 'spelkenet_2b'"):
    spelkenet_model.probe_config_from(c)
