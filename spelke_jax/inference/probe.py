"""Statistical counterfactual probing: Spelke segments from virtual pokes (SpelkeNetInference).

    net = SpelkeNet.from_converted("out/spelkenet_1b/model", "out/rgb_quantizer/model",
                                   "out/flow_quantizer/model", "flow_table.npz",
                                   probe=PRESETS["spelkenet_1b"]())
    mask = net.run_inference(image, (x, y), key=jax.random.key(0))   # bool [256, 256]

One stage = R = num_seeds x num_dirs pokes of the probe point, directions k*2pi/N with
magnitudes uniform in [min_mag, max_mag] px; every poke is one flow completion, the expected
displacement of each is dotted with its poke vector, the mean over pokes is thresholded with
Otsu. All R completions of a stage run as one batched jitted call (decode.run).

Parity switches (ProbeConfig) keep the original's behaviour available where ours differs; the
defaults are the corrected/faster behaviour, `ProbeConfig.original()` sets all of them back.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from spelke_jax.inference import camera, decode, maps, otsu, prompt, sampling, zoom
from spelke_jax.models import lpq as lpq_lib
from spelke_jax.models.lras_config import NO_MOTION_FLOW_CODES


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
  """Hyperparameters of SpelkeNetInference (original names) and parity switches.

  Parity switches (False = ours, True = the original):
    duplicate_reveals: a poke in a corner patch or two pokes in one patch make the original
      count a revealed patch twice, so its prompt also holds one unrevealed zero-flow patch.
    full_vocab_decoding: the original samples / argmaxes value tokens over the whole vocabulary
      (non-flow tokens possible); ours restricts them to flow codes.
    per_run_frame0_order: the original reshuffles frame 0 with every run's seed, so no two runs
      share a prefix; ours uses the first run's frame-0 order for all runs of a stage and
      prefills that prefix once (the flow order still follows each run's seed).
    bf16_displacement: the original computes the expected displacement in bf16 (its logsumexp
      rounds 4 times); ours in float32.
    raise_on_empty_zoom: the original crashes when a zoom stage finds an empty segment; ours
      stops zooming and keeps the previous crop.

  Options of ours for small models (off in the original presets, on in `synthetic_small`):
    point_crop: side of a square crop centred on the probe point, as a fraction of the image
      side, resized to the model's size before the first stage (the segment is pasted back).
      0 = off. Makes the objects span more of a coarse patch grid, as zooming does, without
      trusting a first segment to place the crop.
    second_point_stage: without zoom iterations, still run the one parallel stage (num_zoom_dirs
      pokes) whose segment gives the final stage its second poke points; the original runs it
      only after zooming.
    final_expected_displacement: the final stage dots the pokes with the expected displacement
      of the parallel-decoded patches (as the zoom stages do) instead of the sampled flow.

  Pixel hyperparameters (min_mag, max_mag, crop_padding, second_point_dist) are in pixels of a
  `reference_size` image (the original's 256) and scale with the model's image size
  (`scaled_to`): a 96-px model pokes 3.75-9.4 px, as objects in its training data move. At
  256 px (the released models) nothing changes; reference_size=0 turns scaling off.
  """
  num_zoom_iters: int = 0
  num_seq_patches: int = 0
  num_seeds: int = 1
  num_dirs: int = 4
  num_zoom_dirs: int = 1
  min_mag: float = 10.0
  max_mag: float = 25.0
  temperature: float = 1.0
  top_k: int | None = None
  top_p: float | None = None
  crop_padding: int = 25
  second_point_dist: tuple[float, float] = (9.0, 50.0)
  max_runs_per_batch: int = 0  # 0: all runs of a stage in one batch
  duplicate_reveals: bool = False
  full_vocab_decoding: bool = False
  per_run_frame0_order: bool = False
  bf16_displacement: bool = False
  raise_on_empty_zoom: bool = False
  point_crop: float = 0.0
  second_point_stage: bool = False
  final_expected_displacement: bool = False
  reference_size: int = 256

  def __post_init__(self):
    if not 0 <= self.point_crop < 1:
      raise ValueError(f"point_crop must lie in [0, 1) (a fraction of the image side), "
                       f"got {self.point_crop}")

  def scaled_to(self, image_size: int) -> "ProbeConfig":
    """The pixel hyperparameters scaled by image_size / reference_size (identity at 256)."""
    if not self.reference_size or image_size == self.reference_size:
      return self
    f = image_size / self.reference_size
    return dataclasses.replace(
        self, min_mag=self.min_mag * f, max_mag=self.max_mag * f,
        crop_padding=max(1, int(round(self.crop_padding * f))),
        second_point_dist=tuple(d * f for d in self.second_point_dist), reference_size=image_size)

  def original(self) -> "ProbeConfig":
    """The same hyperparameters with every parity switch set to the original's behaviour."""
    return dataclasses.replace(self, duplicate_reveals=True, full_vocab_decoding=True,
                               per_run_frame0_order=True, bf16_displacement=True,
                               raise_on_empty_zoom=True)


def spelkenet_1b() -> ProbeConfig:
  """SpelkeNetModel1B: 2 zoom iterations x 5 directions, then 3 seeds x 8 directions with 256
  sequentially sampled patches."""
  return ProbeConfig(num_zoom_iters=2, num_seq_patches=256, num_seeds=3, num_dirs=8,
                     num_zoom_dirs=5)


def spelkenet_7b() -> ProbeConfig:
  """SpelkeNetModel7B: the same schedule as 1B with the 7B transformer."""
  return spelkenet_1b()


def spelkenet_1b_fast() -> ProbeConfig:
  """SpelkeNetModel1BFast: 1 zoom iteration x 1 direction, then 1 seed x 4 directions, 2
  sequential patches."""
  return ProbeConfig(num_zoom_iters=1, num_seq_patches=2, num_seeds=1, num_dirs=4,
                     num_zoom_dirs=1)


def synthetic_small() -> ProbeConfig:
  """Ours, for the small models trained on the synthetic world (96 px, 12 x 12 patches of 8 px): a
  crop of half the image around the point, one stage of 8 pokes for the second points, then 8
  pokes with second points, both with the expected displacement. Chosen on the tuning sets
  (seeds 8 and 9; see README "Training on the synthetic world")."""
  return ProbeConfig(num_zoom_iters=0, num_seq_patches=0, num_seeds=1, num_dirs=8,
                     num_zoom_dirs=8, point_crop=0.5, second_point_stage=True,
                     final_expected_displacement=True)


PRESETS = {"spelkenet_1b": spelkenet_1b, "spelkenet_7b": spelkenet_7b,
           "spelkenet_1b_fast": spelkenet_1b_fast, "synthetic_small": synthetic_small}


# ---- Pokes ------------------------------------------------------------------------------------

def poke_directions(num_dirs: int, magnitudes: np.ndarray) -> np.ndarray:
  """[num_dirs, 2] float32 (dx, dy): angle k*2pi/N, length magnitudes[k] (float32 as torch)."""
  k = np.arange(num_dirs, dtype=np.float32)
  angles = k * np.float32(2 * math.pi / num_dirs)
  mags = np.asarray(magnitudes, np.float32)
  return np.stack([mags * np.cos(angles), mags * np.sin(angles)], axis=1).astype(np.float32)


def sample_magnitudes(key: jax.Array, num_dirs: int, min_mag: float, max_mag: float) -> np.ndarray:
  """[num_dirs] float32 uniform in [min_mag, max_mag)."""
  u = np.asarray(jax.random.uniform(key, (num_dirs,), jnp.float32))
  return (u * np.float32(max_mag - min_mag) + np.float32(min_mag)).astype(np.float32)


def object_pokes(points: np.ndarray, direction: np.ndarray) -> np.ndarray:
  """[P, 2] start points + one (dx, dy) -> [P, 4] pokes (x, y, x+dx, y+dy), float32 sums."""
  pts = np.asarray(points, np.float32).reshape(-1, 2)
  d = np.asarray(direction, np.float32)
  return np.concatenate([pts, pts + d[None]], axis=1).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Run:
  """One flow completion: flow_cond [n, 4] pokes (corner pokes first), the (dx, dy) used for
  the dot product (the last poke's), and the shuffling seed of its prompt."""
  flow_cond: np.ndarray
  direction: np.ndarray
  seed: int


@dataclasses.dataclass
class StageResult:
  """Everything one stage computed; R runs, G patches (32x32 grid for 256 px)."""
  rgb_codes: np.ndarray            # [h, w] relative
  flow_codes: np.ndarray           # [R, h, w] relative codes of the poke flow maps
  prompts: list                    # R prompt.Prompt
  table_logits: np.ndarray         # [R, G, K] step-0 logits at the flow table tokens (0 rows
                                   #   for patches not decoded in parallel)
  lse_flow: np.ndarray             # [R, G] logsumexp over the flow range (log(n_flow) for 0 rows)
  parallel: np.ndarray             # [R, G] bool: patch decoded in parallel (has logits)
  codes: np.ndarray                # [R, h, w] relative flow codes of the completed flow
  prob_no_motion: np.ndarray       # [R, gh, gw]
  displacement: np.ndarray         # [R, H', W', 2] expected displacement (or decoded flow)
  dot_maps: np.ndarray             # [R, H', W']
  mean_dot: np.ndarray             # [H', W']
  otsu_u8: np.ndarray
  threshold: int
  segment: np.ndarray              # [H', W'] bool
  segment_256: np.ndarray          # [S, S] bool at the image size
  diagnostics: dict = dataclasses.field(default_factory=dict)
  box: np.ndarray | None = None    # int32 [x0, y0, x1, y1]: the probed image (a crop, resized to
                                   #   S) in the input image's pixels; set by run_inference


class SpelkeNet:
  """SpelkeNet inference from converted models: LRAS + rgb/flow LPQs + the flow-token table."""

  def __init__(self, lras_model, rgb_lpq, flow_lpq, flow_table: maps.FlowTable,
               probe: ProbeConfig = ProbeConfig(),
               no_motion_codes: Sequence[int] = NO_MOTION_FLOW_CODES):
    missing = [c for c in no_motion_codes if c not in set(np.asarray(flow_table.token_ids).tolist())]
    if missing:
      raise ValueError(f"no-motion flow codes {missing} are not in the flow table")
    self.no_motion_codes = tuple(int(c) for c in no_motion_codes)
    self.lras = lras_model
    self.rgb_lpq = rgb_lpq
    self.flow_lpq = flow_lpq
    self.table = flow_table
    cfg = lras_model.config
    self.config = cfg
    self.grid = cfg.patch_grid
    self.patch_px = cfg.patch_size * prompt.LPQ_STRIDE
    self.image_size = self.grid * self.patch_px
    self.probe = probe.scaled_to(self.image_size)
    self.corner_pokes = prompt.camera_fixing_pokes(self.image_size, self.patch_px)
    self.campose = camera.campose_tokens(camera.IDENTITY_POSE, cfg)
    self._encode_rgb = jax.jit(lambda m, x: m.quantize(x))
    self._encode_flow = jax.jit(lambda m, x: m.quantize(lpq_lib.normalize_flow(x)))
    self._decode_flow = jax.jit(lambda m, i: lpq_lib.denormalize_flow(m.decode(i)))

  @classmethod
  def from_converted(cls, lras_dir, rgb_dir, flow_dir, flow_table, probe: ProbeConfig = ProbeConfig(),
                     *, mesh=None, rules="dp", **lras_overrides) -> "SpelkeNet":
    """Loads the three converted models (see convert mode) and the flow table (.pt or .npz)."""
    from spelke_jax.convert.load import load_converted  # pylint: disable=g-import-not-at-top
    table = flow_table if isinstance(flow_table, maps.FlowTable) else maps.load_flow_table(flow_table)
    return cls(load_converted(lras_dir, mesh=mesh, rules=rules, **lras_overrides),
               load_converted(rgb_dir), load_converted(flow_dir), table, probe)

  # ---- Inputs ---------------------------------------------------------------------------------

  def check_image(self, image: np.ndarray) -> np.ndarray:
    """[S, S, 3] uint8 or float in [0, 1] -> float32 in [0, 1]; clear errors otherwise."""
    image = np.asarray(image)
    s = self.image_size
    if image.shape != (s, s, 3):
      raise ValueError(f"image must be [{s}, {s}, 3] (the model's {self.grid}x{self.grid} patch "
                       f"grid), got shape {image.shape}")
    if image.dtype == np.uint8:
      return image.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(image.dtype, np.floating):
      raise ValueError(f"image must be uint8 or float in [0, 1], got dtype {image.dtype}")
    if image.size and (np.nanmin(image) < 0 or np.nanmax(image) > 1 or np.isnan(image).any()):
      raise ValueError("float image values must lie in [0, 1]")
    return image.astype(np.float32)

  def check_point(self, point: Sequence[float]) -> tuple[float, float]:
    x, y = (float(v) for v in point)
    s = self.image_size
    if not (0 <= x < s and 0 <= y < s):
      raise ValueError(f"poke point ({x}, {y}) lies outside the {s}x{s} image")
    return x, y

  def encode_image(self, image01: np.ndarray) -> np.ndarray:
    """[S, S, 3] float in [0, 1] -> [h, w] relative rgb codes (ToTensor + ImageNet Normalize)."""
    mean = np.asarray(lpq_lib.IMAGENET_MEAN, np.float32)
    std = np.asarray(lpq_lib.IMAGENET_STD, np.float32)
    x = lpq_lib._true_div(jnp.asarray(image01)[None] - mean, std)  # pylint: disable=protected-access
    return np.asarray(self._encode_rgb(self.rgb_lpq, x))[0]

  # ---- One stage ------------------------------------------------------------------------------

  def build_runs(self, points: np.ndarray, directions: np.ndarray, seeds: Sequence[int]) -> list[Run]:
    """Runs for probe points [R, P, 2] (or [P, 2] shared), directions [R, 2], seeds [R]."""
    points = np.asarray(points, np.float32)
    if points.ndim == 2:
      points = np.broadcast_to(points, (len(directions),) + points.shape)
    return [Run(np.concatenate([self.corner_pokes, object_pokes(p, d)]),
                np.asarray(d, np.float32), int(s))
            for p, d, s in zip(points, directions, seeds)]

  def stage(self, image01: np.ndarray, runs: list[Run], *, num_seq: int = 0,
            use_flow_pred: bool = False, key: jax.Array | None = None,
            diagnostics: bool = False, rgb_codes: np.ndarray | None = None,
            sampling_config: sampling.SamplingConfig | None = None) -> StageResult:
    """All runs as one batched completion, then maps, dot products, mean and Otsu.

    sampling_config overrides the probe config's temperature / top-k / top-p."""
    p = self.probe
    cfg = self.config
    if rgb_codes is None:
      rgb_codes = self.encode_image(image01)
    flows, unmasks = zip(*(prompt.poke_flow_map(r.flow_cond, self.image_size, self.patch_px)
                           for r in runs))
    flow_codes = np.asarray(self._encode_flow(self.flow_lpq, jnp.asarray(np.stack(flows))))
    prompts = [prompt.build_prompt(rgb_codes, fc, um, r.seed, cfg, campose=self.campose,
                                   num_seq_patches=num_seq, dedupe_revealed=not p.duplicate_reveals)
               for r, fc, um in zip(runs, flow_codes, unmasks)]
    if not p.per_run_frame0_order:
      prompts = [prompt.with_frame0_of(q, prompts[0]) for q in prompts]
    keys = (jax.random.split(key, len(runs)) if key is not None
            else sampling.row_keys(0, len(runs)))
    out = self._decode_groups(prompts, keys, diagnostics, sampling_config)

    g = self.grid * self.grid
    k = len(self.table.token_ids)
    n_flow = cfg.flow_range[1] - cfg.flow_range[0]
    t = prompts[0].tokens_per_patch
    r_all = len(runs)
    table_logits = np.zeros((r_all, g, k), np.float32)
    lse = np.full((r_all, g), np.log(np.float32(n_flow)), np.float32)
    parallel = np.zeros((r_all, g), bool)
    codes = np.zeros((r_all,) + rgb_codes.shape, np.int64)
    diag = {name: np.zeros((r_all, g), np.float32 if name != "argmax_all" else np.int64)
            for name in ("lse_all", "argmax_all", "top2_gap")} if diagnostics else {}
    if diagnostics:
      diag["lse_all"][:] = np.log(np.float32(cfg.vocab_size))
    for i, (q, o) in enumerate(zip(prompts, out)):
      ids = q.target_seq[:, 0] - cfg.flow_patch_idx_range[0]
      table_logits[i, ids] = o["table_logits"]
      lse[i, ids] = o["lse_flow"]
      parallel[i, ids] = True
      for name in diag:
        diag[name][i, ids] = o[name]
      seq = prompt.assemble_flow_sequence(q, o["rollout"], o["values"])
      codes[i] = prompt.unpack_sorted_codes(seq, cfg.patch_size, cfg.flow_range[0],
                                            (self.grid, self.grid))
    codes = np.clip(codes, 0, n_flow - 1)  # non-flow tokens only under full_vocab_decoding

    nm = [self.table.index_of(c) for c in self.no_motion_codes]
    bf16 = self.config.dtype == "bfloat16"
    # Only the poked patches count as certain no-motion; other rows without logits (sequential
    # patches) get the softmax of zeros, as the original's zero rows do.
    revealed = np.zeros((r_all, g), bool)
    for i, q in enumerate(prompts):
      revealed[i, q.unmask_indices] = True
    pnm = np.asarray(maps.prob_no_motion_from_lse(
        jnp.asarray(table_logits[..., nm]), jnp.asarray(lse), jnp.asarray(revealed), bf16=bf16))
    if use_flow_pred:
      disp = np.asarray(self._decode_flow(self.flow_lpq, jnp.asarray(codes)), np.float32)
    else:
      disp = np.asarray(maps.expected_displacement(
          jnp.asarray(table_logits), jnp.asarray(~parallel), self.table,
          bf16_parity=p.bf16_displacement))
    directions = np.stack([r.direction for r in runs])
    dots = np.asarray(maps.dot_map(jnp.asarray(disp), jnp.asarray(directions)))
    mean = dots.mean(axis=0, dtype=np.float32)
    segment, threshold, u8 = otsu.threshold_heatmap(mean)
    seg_full = zoom.nearest_resize(segment.astype(np.uint8), self.image_size,
                                   self.image_size).astype(bool)
    return StageResult(rgb_codes=rgb_codes, flow_codes=flow_codes, prompts=prompts,
                       table_logits=table_logits, lse_flow=lse, parallel=parallel, codes=codes,
                       prob_no_motion=pnm, displacement=disp, dot_maps=dots, mean_dot=mean,
                       otsu_u8=u8, threshold=int(threshold), segment=segment.astype(bool),
                       segment_256=seg_full, diagnostics=diag)

  # ---- The algorithm ---------------------------------------------------------------------------

  def motion_affordance(self, image: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, StageResult]:
    """1 - P(no motion) per patch [gh, gw] with only the camera pinned (Motion_Affordance)."""
    image01 = self.check_image(image)
    run = Run(self.corner_pokes.copy(), np.zeros(2, np.float32), seed)
    res = self.stage(image01, [run])
    return np.asarray(maps.motion_affordance(res.prob_no_motion[0])), res

  def get_segment(self, image01: np.ndarray, point: tuple[float, float], *, num_seeds: int,
                  num_dirs: int, num_seq: int = 0, use_flow_pred: bool = False,
                  key: jax.Array, magnitudes: np.ndarray | None = None,
                  initial_segment: np.ndarray | None = None, **stage_kw) -> StageResult:
    """One probing stage around `point` (SpelkeNetInference.get_segment).

    magnitudes [num_seeds, num_dirs] replays recorded poke lengths; otherwise they are drawn
    from `key`. With `initial_segment` [S, S], every run also pokes a second point of that
    segment 9-50 px away with the same (dx, dy) (the final stage of the original)."""
    p = self.probe
    k_mag, k_pts, k_run = jax.random.split(key, 3)
    if magnitudes is None:
      magnitudes = np.stack([sample_magnitudes(jax.random.fold_in(k_mag, s), num_dirs,
                                               p.min_mag, p.max_mag) for s in range(num_seeds)])
    magnitudes = np.asarray(magnitudes, np.float32).reshape(num_seeds, num_dirs)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(k_pts)).ravel().tolist())
    runs = []
    for s in range(num_seeds):
      dirs = poke_directions(num_dirs, magnitudes[s])
      for ct in range(num_dirs):
        pts = [point]
        if initial_segment is not None:
          second = zoom.sample_distant_point(initial_segment, (int(point[0]), int(point[1])), rng,
                                             *p.second_point_dist)
          if second is not None:
            pts.append(second)
        runs.append(self.build_runs(np.asarray([pts], np.float32), dirs[ct:ct + 1],
                                    [1000 + s + ct])[0])
    return self.stage(image01, runs, num_seq=num_seq, use_flow_pred=use_flow_pred, key=k_run,
                      **stage_kw)

  def sequential_displacement(self, image: np.ndarray, pokes: np.ndarray, *,
                              num_seq_patches: int = 32, num_seeds: int = 8,
                              key: jax.Array | None = None,
                              sampling_config: sampling.SamplingConfig = sampling.SamplingConfig(
                                  1.0, 1000, 0.9)) -> np.ndarray:
    """Expected displacement from sequential decoding (Expected_Displacement notebook): the
    decoded flow [S, S, 2] px averaged over `num_seeds` completions of the same pokes [n, 4]
    (x1, y1, x2, y2; the camera-fixing corners are added), each sampling `num_seq_patches`
    patches with the predictor's defaults (temperature 1, top-k 1000, top-p 0.9)."""
    image01 = self.check_image(image)
    pokes = np.asarray(pokes, np.float64).reshape(-1, 4)
    for x1, y1, _, _ in pokes:
      self.check_point((x1, y1))
    cond = np.concatenate([self.corner_pokes, pokes])
    direction = (pokes[-1, 2:] - pokes[-1, :2]).astype(np.float32)
    runs = [Run(cond, direction, seed) for seed in range(num_seeds)]
    res = self.stage(image01, runs, num_seq=num_seq_patches, use_flow_pred=True,
                     key=jax.random.key(0) if key is None else key,
                     sampling_config=sampling_config)
    return res.displacement.mean(axis=0)

  def run_inference(self, image: np.ndarray, point: Sequence[float], *,
                    key: jax.Array | None = None, trace: list | None = None) -> np.ndarray:
    """Spelke segment of the object at `point` (x, y): bool [S, S] (SpelkeBenchModel API).

    With point_crop, everything runs on a fixed crop around the point. Zoom stages
    (num_zoom_iters x num_zoom_dirs pokes, parallel decoding) crop around the segment; the
    final stage (num_seeds x num_dirs pokes, num_seq_patches sampled patches, decoded flow or
    with final_expected_displacement the expected displacement) runs on the last crop and is
    pasted back. `trace`, if given, receives every StageResult; each one's `box` says where the
    image it probed lies in `image`."""
    p = self.probe
    key = jax.random.key(0) if key is None else key
    image01 = self.check_image(image)
    point = self.check_point(point)
    size = (self.image_size, self.image_size)
    crops: list[zoom.Crop] = []
    crop_img, crop_pt = image01, point
    if p.point_crop:
      side = max(1, int(round(p.point_crop * self.image_size)))
      c = zoom.point_crop_box(point, side, self.image_size)
      crop_img, crop_pt = zoom.crop_image(crop_img, c, self.image_size), zoom.crop_point(crop_pt, c)
      crops.append(c)
    zoom_kw = dict(num_seeds=1, num_dirs=p.num_zoom_dirs, num_seq=0, use_flow_pred=False)

    def traced(res: StageResult) -> StageResult:
      res.box = zoom.absolute_boxes(crops, size)[-1]
      if trace is not None:
        trace.append(res)
      return res
    initial = None
    seeding_stage = 1 if (p.num_zoom_iters or p.second_point_stage) else 0
    for it in range(p.num_zoom_iters + seeding_stage):
      res = traced(self.get_segment(crop_img, crop_pt, key=jax.random.fold_in(key, it), **zoom_kw))
      if it == p.num_zoom_iters:  # the last zoom-level segment seeds the second pokes
        initial = res.segment_256.astype(np.uint8)
        break
      if not res.segment_256.any():
        if p.raise_on_empty_zoom:
          raise ValueError("Segmentation mask is empty.")
        break  # keep the current crop (the original would crash here)
      c = zoom.square_crop_box(res.segment_256, p.crop_padding, self.image_size)
      crop_img, crop_pt = zoom.crop_image(crop_img, c, self.image_size), zoom.crop_point(crop_pt, c)
      crops.append(c)
    if seeding_stage and initial is None:  # stopped early: segment the current crop
      res = traced(self.get_segment(crop_img, crop_pt, key=jax.random.fold_in(key, 99), **zoom_kw))
      initial = res.segment_256.astype(np.uint8)
    final = traced(self.get_segment(crop_img, crop_pt, num_seeds=p.num_seeds, num_dirs=p.num_dirs,
                                    num_seq=p.num_seq_patches,
                                    use_flow_pred=not p.final_expected_displacement,
                                    key=jax.random.fold_in(key, 1000), initial_segment=initial))
    if not crops:
      return final.segment_256
    return zoom.paste_segment(final.segment_256.astype(np.uint8), final.box, size).astype(bool)

  def _decode_groups(self, prompts: list, keys: jax.Array, diagnostics: bool,
                     sampling_config: sampling.SamplingConfig | None = None) -> list[dict]:
    """Runs grouped by prompt shape (one jitted call per group and batch chunk)."""
    cfg = self.config
    p = self.probe
    settings = decode.DecodeSettings(
        sampling=sampling_config or sampling.SamplingConfig(p.temperature, p.top_k, p.top_p),
        flow_range=tuple(cfg.flow_range),
        table_ids=tuple(int(c) + cfg.flow_range[0] for c in self.table.token_ids),
        restrict_to_flow=not p.full_vocab_decoding, diagnostics=diagnostics)
    groups: dict[tuple, list[int]] = {}
    for i, q in enumerate(prompts):
      groups.setdefault((q.cond_len, q.num_seq_patches, q.num_par_targets), []).append(i)
    results: list[dict] = [{} for _ in prompts]
    chunk = p.max_runs_per_batch or len(prompts)
    for idx in groups.values():
      for start in range(0, len(idx), chunk):
        part = idx[start:start + chunk]
        inputs = _stage_inputs([prompts[i] for i in part], keys[np.asarray(part)],
                               shared_prefix=not p.per_run_frame0_order)
        out = jax.device_get(decode.run(self.lras, inputs, settings))
        for j, i in enumerate(part):
          results[i] = {name: np.asarray(v[j]) for name, v in out.items()}
    return results


def _stage_inputs(prompts: list, keys: jax.Array, *, shared_prefix: bool) -> decode.StageInputs:
  """Stacks R prompts (same shapes) into decode.StageInputs."""
  q0 = prompts[0]
  t = q0.tokens_per_patch
  cond = np.stack([q.cond_seq for q in prompts])
  cond_pos = np.stack([q.cond_pos for q in prompts])
  split = q0.flow_start if shared_prefix else cond.shape[1]
  if shared_prefix:
    assert all((q.cond_seq[:split] == q0.cond_seq[:split]).all() for q in prompts)
  n_ctx = q0.cond_len + q0.num_new_tokens
  seq_pos = np.stack([q.pos[q0.cond_len:n_ctx] for q in prompts])
  seq_ptr = np.stack([q.decode_pointers[:q.num_seq_patches] for q in prompts])
  tgt_ptr = np.stack([q.target_seq[:, 0] for q in prompts])
  tgt_pos = np.stack([q.target_pos[:, :t - 1].T for q in prompts])
  i32 = lambda a: jnp.asarray(a, jnp.int32)
  return decode.StageInputs(
      prefix_tokens=i32(cond[:1, :split] if shared_prefix else cond),
      prefix_positions=i32(cond_pos[:1, :split] if shared_prefix else cond_pos),
      rest_tokens=i32(cond[:, split:]), rest_positions=i32(cond_pos[:, split:]),
      seq_positions=i32(seq_pos), seq_pointers=i32(seq_ptr), target_pointers=i32(tgt_ptr),
      target_positions=i32(tgt_pos), keys=keys)
