"""Parity runner for the `eisen_grouping` fixture packs: EISEN's grouping path after the
backbone, from the recorded inputs (stand-in backbone `features`, recorded global samples,
KProp init and seed, Competition draws and noise) to the matched mIoU.

features -> affinity head (model.pt through the converter) -> key, query -> sample indices
-> logits -> KL losses (1 level; 3 levels with the train_* samples) -> adj -> KProp (every
iteration) -> Competition (replayed) -> argmax -> connected components (cc_torch ids,
parity=True) -> matched mIoU against gt_segment. `cc_probe_segments` labels the hand-made
`cc_probe_labels` directly.

Stage isolation: `adj` and everything after it start from the reference's recorded `logits`
(checked on their own above) when the pack holds them (FROM_RECORDED_LOGITS). Our logits differ
from torch's by a few float32 ulps (5.7e-6 at |logit| ~ 25 on the public pack), which
softmax_max_norm turns into adj differences of ~9e-6 against an atol of 1e-5; with our own
logits the public pack still passes every output, but a pack with larger logits would fail
`adj` on rounding alone.
"""
from __future__ import annotations

import jax
import numpy as np

from spelke_jax.evals import matched_miou as mm
from spelke_jax.grouping import competition as comp_lib
from spelke_jax.grouping import components
from spelke_jax.grouping import kprop as kprop_lib
from spelke_jax.parity.pack import FixturePack

FROM_RECORDED_LOGITS = True
_COMPETITION_KEYS = ("mask_beta", "mask_thresh", "compete_thresh", "sticky_winners",
                     "selection_strength", "homing_strength", "mask_dead_segments")


def _nchw(x) -> np.ndarray:
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def _nhwc(x) -> np.ndarray:
  return np.transpose(np.asarray(x), (0, 2, 3, 1))


def affinity_outputs(pack: FixturePack, cfg: dict) -> dict[str, np.ndarray]:
  """Head, sampling, logits and losses with spelke_jax.models.eisen."""
  from spelke_jax.convert.load import load_torch  # pylint: disable=g-import-not-at-top
  from spelke_jax.models import eisen  # pylint: disable=g-import-not-at-top
  from spelke_jax.models.eisen_config import EisenConfig  # pylint: disable=g-import-not-at-top
  config = EisenConfig.from_dict(cfg)
  k_win, s = config.local_window_size, config.num_affinity_samples
  head = load_torch(pack.file("model.pt"), "eisen_head", config=cfg)
  key, query = head(_nhwc(pack["features"]))                      # [B, h, w, C]
  _, h, w, _ = key.shape
  out: dict[str, np.ndarray] = {"key": _nchw(key), "query": _nchw(query)}
  local = eisen.local_indices(h, w, k_win)
  idx = eisen.sample_indices(local, pack["global_idx"])
  logits = eisen.affinity_logits(key, query, idx)
  out.update(local_indices=np.asarray(local), sample_idx=np.asarray(idx),
             logits=np.asarray(logits),
             loss=np.asarray(eisen.affinity_loss(logits, idx, pack["segment_target"],
                                                 size=(h, w))))
  levels = config.supervision_level
  recorded = [pack[f"train_global_idx_l{l}"] for l in range(levels)]
  total, per_level = eisen.multiscale_loss(key, query, pack["segment_target"],
                                           local_window_size=k_win, num_samples=s,
                                           levels=levels, global_idx=recorded)
  for level in range(levels):
    st = 2 ** level
    lg, ix = eisen.sample_affinities(eisen.downsample(key, st), eisen.downsample(query, st),
                                     local_window_size=k_win, num_samples=s,
                                     global_idx=recorded[level])
    out[f"train_sample_idx_l{level}"] = np.asarray(ix)
    out[f"train_logits_l{level}"] = np.asarray(lg)
    out[f"train_loss_l{level}"] = np.asarray(per_level[level])
  out["train_loss_total"] = np.asarray(total)
  return out


def run(pack: FixturePack) -> dict[str, np.ndarray]:
  conf = pack.config
  eisen_cfg = dict(conf["EISEN"])
  seg_cfg = dict(conf.get("compute_segments", {}))
  cfg = dict(eisen_cfg, feature_dim=conf.get("fixture", {}).get("backbone_feature_dim"))
  cfg.update(seg_cfg)
  out = affinity_outputs(pack, cfg)
  h, w = (int(v) for v in eisen_cfg["affinity_res"])
  iters = int(eisen_cfg["propagation_iters"])
  thresh = float(eisen_cfg["propagation_affinity_thresh"])
  m, r = int(eisen_cfg["num_masks"]), int(eisen_cfg["num_competition_rounds"])
  min_area = int(seg_cfg.get("min_cc_area", 20))
  comp_kw = {k: v for k, v in conf.get("Competition_defaults", {}).items()
             if k in _COMPETITION_KEYS}

  # KProp
  logits = (pack["logits"] if FROM_RECORDED_LOGITS and "logits" in pack.arrays
            else out["logits"])
  adj = kprop_lib.affinities_from_logits(logits)
  out["adj"] = np.asarray(adj)
  h0 = jax.nn.softmax(np.asarray(pack["h0_normal"], np.float32), axis=-1)
  out["h0"] = np.asarray(h0)
  kp = kprop_lib.kprop(adj, out["sample_idx"], h0, pack["seed_idx"], iters=iters,
                       thresh=thresh, return_all=True)
  out["plateau_all"] = np.asarray(kp.all)
  out["kprop_activated"] = np.asarray(kp.activated).astype(np.uint8)
  b = out["plateau_all"].shape[1]

  # Competition (replayed draws and noise)
  plateau = kp.plateau.reshape(b, h, w, -1)
  comp = comp_lib.competition(plateau, num_masks=m, num_rounds=r,
                              draws=[pack[f"comp_draw_{j}"] for j in range(r + 1)],
                              noise=[pack[f"comp_noise_{j}"] for j in range(r + 1)], **comp_kw)
  for j in range(r + 1):
    out[f"comp_edges_{j}"] = np.asarray(comp.edges[j])
  out.update(comp_round_masks=np.asarray(comp.round_masks),
             comp_round_fitness=np.asarray(comp.round_fitness),
             comp_round_alive=np.asarray(comp.round_alive), comp_masks=np.asarray(comp.masks),
             comp_agents=np.asarray(comp.agents), comp_alive=np.asarray(comp.alive),
             comp_phenotypes=np.asarray(comp.phenotypes),
             comp_unharvested=np.asarray(comp.unharvested))

  # Segments, connected components (cc_torch ids), mIoU
  inst = components.segments_from_masks(comp.masks)
  out["instance_seg"] = inst
  segments = (components.label_batch(inst, min_area, parity=True)
              if seg_cfg.get("run_cc", True) else inst)
  out["segments"] = segments
  if "cc_probe_labels" in pack.arrays:
    out["cc_probe_segments"] = np.stack([
        components.label_connected_components(l, min_area, parity=True)
        for l in np.asarray(pack["cc_probe_labels"])])
  if "gt_segment" in pack.arrays:
    per_image = mm.per_image_miou(pack["gt_segment"], segments)
    out["miou_per_image"] = per_image
    out["miou_batch"] = np.asarray(np.mean(per_image), np.float64)
  return out
