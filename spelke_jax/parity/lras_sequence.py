"""Parity runner for `lras_sequence` packs: the seq2par prompt layout and camera-pose tokens.

Scenarios are discovered from the inputs named `<X>_rgb_codes`. The pack's tokenizers and
transformer are recording stand-ins; their stand-in outputs are reproduced here (and only here):
flow codes are an input, the sequential rollout emits placeholder values
(`fixture_standin_rollout`), and the parallel decoder's argmax is token 0 everywhere.
"""
from __future__ import annotations

import numpy as np

from spelke_jax.inference import camera, prompt as prompt_lib
from spelke_jax.models.lras_config import LRASConfig
from spelke_jax.parity.pack import FixturePack


def fixture_standin_rollout(pointers: np.ndarray, num_new_tokens: int, tokens_per_patch: int,
                            flow_range: tuple[int, int]) -> np.ndarray:
  """The FIXTURE's stand-in for LRAS.rollout: [num_new_tokens] generated tokens.

  Slot j: the forced pointer pointers[j // T] when j % T == 0, else the placeholder value
  flow_range[0] + (j*7919 + 13) % flow_vocab (not a model prediction).
  """
  j = np.arange(num_new_tokens, dtype=np.int64)
  vocab = flow_range[1] - flow_range[0]
  values = flow_range[0] + (j * 7919 + 13) % vocab
  ptr = np.asarray(pointers, dtype=np.int64)[j // tokens_per_patch]
  return np.where(j % tokens_per_patch == 0, ptr, values)


def _scenarios(pack: FixturePack) -> list[str]:
  suffix = "_rgb_codes"
  return sorted(k[:-len(suffix)] for k in pack.arrays if k.endswith(suffix))


def _scalar(x) -> np.ndarray:
  return np.asarray(x, dtype=np.int64).reshape(())


def _run_scenario(pack: FixturePack, x: str, cfg: LRASConfig) -> dict[str, np.ndarray]:
  rgb_codes = np.asarray(pack[f"{x}_rgb_codes"])
  flow_codes = np.asarray(pack[f"{x}_flow_codes"])
  seed = int(pack[f"{x}_seed"])
  num_seq = int(pack[f"{x}_num_seq_patches"])
  image_size = int(pack.config.get("image_size", prompt_lib.LPQ_STRIDE * flow_codes.shape[-1]))
  patch_px = prompt_lib.LPQ_STRIDE * cfg.patch_size
  std = float(pack.config.get("flow_normalization_std", 20.0))

  out: dict[str, np.ndarray] = {}
  flow_map, unmask = prompt_lib.poke_flow_map(pack[f"{x}_pokes"], image_size, patch_px)
  out[f"{x}_flow_map"] = flow_map
  out[f"{x}_flow_lpq_input"] = (flow_map / np.float32(std)).transpose(2, 0, 1)[None]
  out[f"{x}_unmask_indices"] = unmask

  pose = pack.arrays.get(f"{x}_campose", camera.IDENTITY_POSE)
  out[f"{x}_campose_6dof_quantized"] = camera.quantize_6dof(
      camera.matrix_to_6dof(pose)).astype(np.int64)
  cam_tokens, cam_pos = camera.campose_tokens(pose, cfg)
  out[f"{x}_campose_tokens"], out[f"{x}_campose_pos"] = cam_tokens, cam_pos

  p = prompt_lib.build_prompt(rgb_codes, flow_codes, unmask, seed, cfg,
                              campose=(cam_tokens, cam_pos), num_seq_patches=num_seq)
  out.update({
      f"{x}_im0_seq": p.im0_seq, f"{x}_im0_pos": p.im0_pos, f"{x}_perm_im0": p.perm_im0,
      f"{x}_flow_seq_shuffled": p.flow_seq_shuffled,
      f"{x}_flow_pos_shuffled": p.flow_pos_shuffled, f"{x}_perm_flow": p.perm_flow,
      f"{x}_flow_seq": p.flow_seq, f"{x}_flow_pos": p.flow_pos,
      f"{x}_cond_len": _scalar(p.cond_len), f"{x}_decode_order": p.decode_order,
      f"{x}_par_num_targets": _scalar(p.num_par_targets),
  })

  rollout_tokens = None
  if num_seq > 0:
    r = prompt_lib.rollout_inputs(p)
    out.update({
        f"{x}_rollout_seq": r.seq, f"{x}_rollout_pos": r.pos, f"{x}_rollout_rmi": r.pointers,
        f"{x}_rollout_num_new_tokens": _scalar(r.num_new_tokens),
        f"{x}_rollout_causal_mask_length": _scalar(r.causal_mask_length),
    })
    rollout_tokens = fixture_standin_rollout(r.pointers, r.num_new_tokens, p.tokens_per_patch,
                                             cfg.flow_range)

  step0_seq, step0_pos = prompt_lib.parallel_step0(p, rollout_tokens)
  out[f"{x}_par_step0_seq"], out[f"{x}_par_step0_pos"] = step0_seq, step0_pos
  out[f"{x}_par_step0_tgt"] = prompt_lib.parallel_step0_targets(p)
  out[f"{x}_par_full_pos"] = prompt_lib.parallel_positions(p, p.tokens_per_patch - 2)

  # Stand-in parallel decoder: argmax of all-zero logits is token 0 for every target value.
  par_values = np.zeros((p.num_par_targets, p.tokens_per_patch - 1), dtype=np.int64)
  flow_sequence = prompt_lib.assemble_flow_sequence(p, rollout_tokens, par_values)
  out[f"{x}_pred_codes_unpacked"] = prompt_lib.unpack_sorted_codes(
      flow_sequence, cfg.patch_size, grid_shape=(flow_codes.shape[-2] // cfg.patch_size,
                                                 flow_codes.shape[-1] // cfg.patch_size))
  return out


def _run_poses(pose_lists: np.ndarray, cfg: LRASConfig) -> dict[str, np.ndarray]:
  mats = np.stack([camera.pose_list_to_matrix(pl) for pl in pose_lists]).astype(np.float32)
  sixdof = np.stack([camera.matrix_to_6dof(m) for m in mats])
  quant = np.stack([camera.quantize_6dof(v) for v in sixdof]).astype(np.int64)
  tokens = np.stack([camera.campose_tokens(m, cfg)[0] for m in mats])
  return {"pose_matrices": mats, "pose_6dof": sixdof, "pose_6dof_quantized": quant,
          "pose_tokens": tokens}


def run(pack: FixturePack) -> dict[str, np.ndarray]:
  cfg = LRASConfig.from_dict(pack.config)
  out: dict[str, np.ndarray] = {}
  for x in _scenarios(pack):
    out.update(_run_scenario(pack, x, cfg))
  if "pose_lists" in pack.arrays:
    pose_lists = np.asarray(pack["pose_lists"], dtype=np.float64).reshape(-1, 6)
    out.update(_run_poses(pose_lists, cfg))
  return out
