"""Stage-wise checks of the structure extractions against a `spelkenet_probe` pack.

Not a registered system (the pack's own runner recomputes everything from image, pokes and
weights). Here every stage is fed the pack's RECORDED predecessor, so the tolerances can be
tight (see the manifest notes):

  P_*_logits_table [.., G, K], P_*_lse_flow [.., G]  -> prob_no_motion, affordance_map
  P_*_logits_table (zero rows = prompt patches)      -> avg_flow  (bf16 recipe, both chains)
  P_poke_avg_flow, poke_direction                    -> poke_dot_map
  P_poke_dot_map                                     -> mean_dot_map
  P_mean_dot_map                                     -> otsu_u8, otsu_threshold, segment,
                                                        segment_256 (nearest resize)

plus the chained values (`<name>@chain`: dot/mean/Otsu from OUR avg_flow), whose tolerances
are those of the pack (end-to-end) since a 1-ulp avg_flow difference can move them.
Revealed patches come from the recorded flow_cond, as the original's `unmask_indices`.
"""
from __future__ import annotations

import numpy as np

from spelke_jax.inference import maps, otsu
from spelke_jax.models.lras_config import NO_MOTION_FLOW_CODES, LRASConfig
from spelke_jax.parity.pack import Comparison, FixturePack, Tolerance, compare

# Stage-wise tolerances, per chain. prob_no_motion (fp32): exp(l - lse) from a float32 lse of
# magnitude ~30 vs torch's softmax differs by <= 2e-5 relative for p ~ 1. bf16: 1-2 bf16 ulps.
# avg_flow: about 1 bf16 ulp of the value (<= 2^-6 absolute, as the notes).
STAGE_TOLERANCES = {
    "fp32": {"prob_no_motion": Tolerance(1e-6, 2.5e-5), "affordance_map": Tolerance(2.5e-5, 0.0),
             "avg_flow": Tolerance(2.0**-6, 2.0**-8)},
    "bf16": {"prob_no_motion": Tolerance(1e-7, 2.0**-7), "affordance_map": Tolerance(2.0**-8, 0.0),
             "avg_flow": Tolerance(2.0**-6, 2.0**-8)},
}
# float32 exact up to summation order.
DOT_TOLERANCE = Tolerance(1e-5, 1e-6)
MEAN_TOLERANCE = Tolerance(1e-5, 1e-6)
EXACT = Tolerance(0.0, 0.0)


def _config(pack: FixturePack) -> LRASConfig:
  return LRASConfig.from_dict(pack.config.get("lras", {}))


def nearest_resize(seg: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """[h, w] -> [H, W] as cv2.resize(INTER_NEAREST): src = min(floor(dst * h / H), h - 1)."""
  h, w = seg.shape
  rows = np.minimum(np.floor(np.arange(out_hw[0]) * (h / out_hw[0])).astype(np.int64), h - 1)
  cols = np.minimum(np.floor(np.arange(out_hw[1]) * (w / out_hw[1])).astype(np.int64), w - 1)
  return seg[rows][:, cols]


def _otsu_outputs(mean: np.ndarray, seg256_shape) -> dict[str, np.ndarray]:
  seg, t, u8 = otsu.threshold_heatmap(np.asarray(mean, np.float32))
  seg = seg.astype(np.uint8)
  return {"otsu_u8": u8, "otsu_threshold": np.float64(t), "segment": seg,
          "segment_256": nearest_resize(seg, tuple(seg256_shape))}


def check_stages(pack: FixturePack) -> list[Comparison]:
  """Stage-wise comparisons for every chain (fp32, bf16) present in the pack."""
  if pack.system != "spelkenet_probe":
    raise ValueError(f"check_stages needs a spelkenet_probe pack, got {pack.system!r}")
  cfg = _config(pack)
  table = maps.FlowTable.from_arrays(pack["flow_table_token_ids"], pack["flow_table_vectors"])
  codes = pack.config.get("no_motion_codes", list(NO_MOTION_FLOW_CODES))
  code_cols = [table.index_of(c) for c in codes]
  pack_tols = pack.tolerances
  out: list[Comparison] = []

  def cmp(name, actual, tol):
    out.append(compare(name, pack[name], actual, tol))

  for chain in ("fp32", "bf16"):
    if f"{chain}_aff_logits_table" not in pack.arrays:
      continue
    tols = STAGE_TOLERANCES[chain]
    bf16 = chain == "bf16"
    runs = {}
    for kind, cond_key in (("aff", "aff_flow_cond"), ("poke", "poke_flow_cond")):
      logits = np.asarray(pack[f"{chain}_{kind}_logits_table"], np.float32)
      lse = np.asarray(pack[f"{chain}_{kind}_lse_flow"], np.float32)
      conds = np.asarray(pack[cond_key])
      if kind == "aff":
        logits, lse, conds = logits[None], lse[None], conds[None]
      g = logits.shape[1]
      revealed = np.stack([maps.revealed_mask(c, g) for c in conds])
      pnm = np.asarray(maps.prob_no_motion_from_lse(logits[..., code_cols], lse, revealed,
                                                    bf16=bf16))
      avg = np.asarray(maps.expected_displacement(logits, revealed, table, cfg, bf16_parity=True))
      if kind == "aff":
        pnm, avg = pnm[0], avg[0]
        cmp(f"{chain}_affordance_map", np.asarray(maps.motion_affordance(pnm)),
            tols["affordance_map"])
      cmp(f"{chain}_{kind}_prob_no_motion", pnm, tols["prob_no_motion"])
      cmp(f"{chain}_{kind}_avg_flow", avg, tols["avg_flow"])
      runs[kind] = avg

    direction = np.asarray(pack["poke_direction"], np.float32)
    dot = np.asarray(maps.dot_map(pack[f"{chain}_poke_avg_flow"], direction))
    cmp(f"{chain}_poke_dot_map", dot, DOT_TOLERANCE)
    mean = np.asarray(maps.mean_dot_map(pack[f"{chain}_poke_dot_map"]))
    cmp(f"{chain}_mean_dot_map", mean, MEAN_TOLERANCE)
    seg256_shape = pack[f"{chain}_segment_256"].shape
    for name, val in _otsu_outputs(pack[f"{chain}_mean_dot_map"], seg256_shape).items():
      cmp(f"{chain}_{name}", val, EXACT)

    # Chained from our avg_flow: judged with the pack's end-to-end tolerances.
    dot_c = np.asarray(maps.dot_map(runs["poke"], direction))
    mean_c = np.asarray(maps.mean_dot_map(dot_c))
    chained = {"poke_dot_map": dot_c, "mean_dot_map": mean_c,
               **_otsu_outputs(mean_c, seg256_shape)}
    for name, val in chained.items():
      key = f"{chain}_{name}"
      c = compare(key, pack[key], val, pack_tols.get(key, EXACT))
      out.append(Comparison(f"{key}@chain", c.ok, c.max_abs_err, c.tolerance, c.detail))
  if not out:
    raise KeyError(f"pack {pack.path} holds no *_aff_logits_table array")
  return out
