"""Prompt (token sequence) construction of SpelkeNet's flow completion, mode 'seq2par' (numpy).

Port of the sequence side of `LRASFlowPredictor.quantized_flow_prediction(mode='seq2par')` /
`two_frame_seq2par_forward`. Layout (real 1B vocabulary; every offset comes from an `LRASConfig`):

  patch p (row-major on the patch grid) -> 5 tokens [pointer + p, c0, c1, c2, c3]
                                           at positions pos_offset + 5p + j (canonical, not order)
  frame 0   : rgb patches,  pointer rgb_patch_0_idx_range[0], positions frame_0_rgb_pos_range[0]
  camera    : [campose index token, 7 values] at campose_pos_range (optional)
  flow      : flow patches, pointer flow_patch_idx_range[0],  positions flow_pos_range[0]

  full sequence = [frame 0 (shuffled) | camera | flow (shuffled, revealed patches first)]
  prompt        = full[:P*T + C + T*len(unmask_indices)]

Then decoding: `num_seq_patches` patches are rolled out sequentially (KV cache, pointers forced
to the decode order), and the remaining N patches are decoded in parallel by T-1 full forwards
over [prompt | rollout | ptr_1..ptr_N | v1_1..v1_N | ...], each appending a block of N argmax
tokens (`parallel_step0`, `parallel_positions`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

# Pixels per LPQ code along each side (the LPQ encoder is a 4x4 stride-4 conv): a 2x2-code patch
# covers 8x8 pixels, a 64x64 code grid a 256x256 image.
LPQ_STRIDE = 4

# The "camera fixed" condition: zero-flow pokes (x1, y1, x2, y2) in the four corner patches of a
# 256 px image (patches 31, 0, 992, 1023), prepended to the object pokes.
CAMERA_FIXING_POKES = np.array(
    [[248, 0, 248, 0], [0, 0, 0, 0], [0, 248, 0, 248], [248, 248, 248, 248]], dtype=np.float64)


def camera_fixing_pokes(image_size: int = 256, patch_px: int = 8) -> np.ndarray:
  """[4, 4] zero-flow pokes (x1, y1, x2, y2) at the top-left pixel of the four corner patches
  of an image_size^2 image, in the original's order (top-right, top-left, bottom-left,
  bottom-right); CAMERA_FIXING_POKES for 256 px."""
  e = float(image_size - patch_px)
  return np.array([[e, 0, e, 0], [0, 0, 0, 0], [0, e, 0, e], [e, e, e, e]], dtype=np.float64)


def tokens_per_patch(patch_size: int) -> int:
  """Pointer + patch_size**2 codes."""
  return patch_size * patch_size + 1


# ---- Pokes ------------------------------------------------------------------------------------

def poke_flow_map(pokes: np.ndarray, image_size: int = 256,
                  patch_px: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """Pokes -> (flow [H, W, 2] float32 in pixels, unmask_indices [n] int64).

  pokes: [n, 4] rows (x1, y1, x2, y2) in pixels, x horizontal. The patch_px x patch_px patch
  containing (x1, y1) is set to (x2 - x1, y2 - y1) (channel 0 = dx); later pokes overwrite
  earlier ones. unmask_indices[i] = x1 // patch_px + (image_size // patch_px) * (y1 // patch_px),
  in poke order, duplicates kept. Raises ValueError if a poke start lies outside the image (the
  original would silently write nothing and reveal a wrong patch).
  """
  pokes = np.asarray(pokes, dtype=np.float64)
  if pokes.size == 0:
    pokes = pokes.reshape(0, 4)
  if pokes.ndim != 2 or pokes.shape[1] != 4:
    raise ValueError(f"pokes must be [n, 4] rows (x1, y1, x2, y2), got shape {pokes.shape}")
  if image_size % patch_px:
    raise ValueError(f"image_size={image_size} is not a multiple of patch_px={patch_px}")
  grid = image_size // patch_px
  flow = np.zeros((image_size, image_size, 2), dtype=np.float32)
  unmask = np.zeros(len(pokes), dtype=np.int64)
  for i, (x1, y1, x2, y2) in enumerate(pokes):
    if not (0 <= x1 < image_size and 0 <= y1 < image_size):
      raise ValueError(f"poke {i} starts at ({x1}, {y1}), outside the {image_size}x{image_size} image")
    x, y = int(x1 // patch_px), int(y1 // patch_px)
    flow[patch_px * y:patch_px * (y + 1), patch_px * x:patch_px * (x + 1)] = (x2 - x1, y2 - y1)
    unmask[i] = x + grid * y
  return flow, unmask


# ---- Patch packing ----------------------------------------------------------------------------

def patchify(codes: np.ndarray, patch_size: int) -> np.ndarray:
  """[h, w] codes -> [P, patch_size**2]; patches row-major on the grid, codes row-major inside."""
  h, w = codes.shape
  if h % patch_size or w % patch_size:
    raise ValueError(f"code grid {codes.shape} is not divisible by patch_size={patch_size}")
  gh, gw = h // patch_size, w // patch_size
  x = codes.reshape(gh, patch_size, gw, patch_size).transpose(0, 2, 1, 3)
  return x.reshape(gh * gw, patch_size * patch_size)


def unpatchify(patches: np.ndarray, grid_shape: tuple[int, int] | None = None) -> np.ndarray:
  """[P, patch_size**2] -> [h, w]; inverse of `patchify` (square grid unless grid_shape given)."""
  num, k = patches.shape
  ps = int(round(np.sqrt(k)))
  if grid_shape is None:
    side = int(round(np.sqrt(num)))
    grid_shape = (side, side)
  gh, gw = grid_shape
  if gh * gw != num or ps * ps != k:
    raise ValueError(f"cannot unpatchify {patches.shape} onto a {grid_shape} grid")
  return patches.reshape(gh, gw, ps, ps).transpose(0, 2, 1, 3).reshape(gh * ps, gw * ps)


def pack_patches(codes: np.ndarray, value_offset: int, pointer_offset: int, pos_offset: int,
                 patch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """[h, w] relative codes -> (seq [P, T] int64, pos [P, T] int64) in canonical patch order.

  Row p = [pointer_offset + p, value_offset + c0 .. c3]; pos[p, j] = pos_offset + T*p + j,
  T = patch_size**2 + 1.
  """
  codes = np.asarray(codes, dtype=np.int64)
  if codes.ndim != 2:
    raise ValueError(f"codes must be a [h, w] grid, got shape {codes.shape}")
  values = patchify(codes, patch_size) + value_offset
  num = values.shape[0]
  t = tokens_per_patch(patch_size)
  seq = np.concatenate([pointer_offset + np.arange(num, dtype=np.int64)[:, None], values], axis=1)
  pos = pos_offset + np.arange(num * t, dtype=np.int64).reshape(num, t)
  return seq, pos


def _check_codes(codes: np.ndarray, value_range: tuple[int, int], name: str) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim == 3 and codes.shape[0] == 1:
    codes = codes[0]
  if codes.ndim != 2:
    raise ValueError(f"{name} must be a [h, w] code grid, got shape {codes.shape}")
  size = value_range[1] - value_range[0]
  if codes.size and (codes.min() < 0 or codes.max() >= size):
    raise ValueError(f"{name} must hold relative codes in [0, {size}); got "
                     f"[{codes.min()}, {codes.max()}] (absolute token ids?)")
  return codes.astype(np.int64)


def bring_to_front(seq: np.ndarray, pos: np.ndarray, patch_ids: np.ndarray,
                   pointer_offset: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows whose patch id (seq[:, 0] - pointer_offset) is in patch_ids first, each group keeping
  its order. Membership only: a repeated id moves its row once."""
  front = np.isin(seq[:, 0] - pointer_offset, np.asarray(patch_ids, dtype=np.int64))
  order = np.concatenate([np.flatnonzero(front), np.flatnonzero(~front)])
  return seq[order], pos[order]


def dedupe(indices: np.ndarray) -> np.ndarray:
  """Unique values in order of first occurrence."""
  indices = np.asarray(indices, dtype=np.int64)
  _, first = np.unique(indices, return_index=True)
  return indices[np.sort(first)]


# ---- Prompt -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Prompt:
  """Token layout of one seq2par flow completion. Arrays are int64; T = tokens per patch,
  P = patches per frame, C = camera tokens (8 or 0), n = len(unmask_indices).

  im0_seq / im0_pos [P, T]: frame-0 rows in the order perm_im0 [P].
  flow_seq_shuffled / flow_pos_shuffled [P, T]: flow rows in the order perm_flow [P].
  flow_seq / flow_pos [P, T]: the same with the revealed patches moved to the front.
  campose_seq / campose_pos [C].
  seq / pos [P*T + C + P*T]: the full sequence [im0 | camera | flow].
  unmask_indices [n]: the revealed patch ids as used (duplicates kept unless deduped).
  decode_pointers [P - n]: pointer tokens of flow rows n.. (the original's `rmi`): the
    sequential rollout decodes the first num_seq_patches, the parallel phase the rest.
  decode_order [P - n]: decode_pointers - flow pointer offset (patch ids).
  """
  im0_seq: np.ndarray
  im0_pos: np.ndarray
  perm_im0: np.ndarray
  flow_seq_shuffled: np.ndarray
  flow_pos_shuffled: np.ndarray
  perm_flow: np.ndarray
  flow_seq: np.ndarray
  flow_pos: np.ndarray
  campose_seq: np.ndarray
  campose_pos: np.ndarray
  seq: np.ndarray
  pos: np.ndarray
  unmask_indices: np.ndarray
  decode_pointers: np.ndarray
  decode_order: np.ndarray
  num_seq_patches: int
  tokens_per_patch: int

  @property
  def num_patches(self) -> int:
    """Flow patches P."""
    return self.flow_seq.shape[0]

  @property
  def num_prompt_flow_patches(self) -> int:
    """Flow rows inside the prompt: len(unmask_indices), duplicates included."""
    return int(self.unmask_indices.shape[0])

  @property
  def flow_start(self) -> int:
    """Index of the first flow token in `seq`."""
    return self.im0_seq.size + self.campose_seq.size

  @property
  def cond_len(self) -> int:
    """Prompt length: P*T + C + T*n."""
    return self.flow_start + self.tokens_per_patch * self.num_prompt_flow_patches

  @property
  def cond_seq(self) -> np.ndarray:
    return self.seq[:self.cond_len]

  @property
  def cond_pos(self) -> np.ndarray:
    return self.pos[:self.cond_len]

  @property
  def num_new_tokens(self) -> int:
    """Tokens generated by the sequential rollout: T * num_seq_patches."""
    return self.tokens_per_patch * self.num_seq_patches

  @property
  def num_par_targets(self) -> int:
    """Patches decoded in the parallel phase, N = P - n - num_seq_patches."""
    return self.num_patches - self.num_prompt_flow_patches - self.num_seq_patches

  @property
  def target_seq(self) -> np.ndarray:
    """[N, T] true flow rows of the parallel targets (pointer, c0..)."""
    return self.flow_seq[self.num_prompt_flow_patches + self.num_seq_patches:]

  @property
  def target_pos(self) -> np.ndarray:
    """[N, T] positions of the parallel targets."""
    return self.flow_pos[self.num_prompt_flow_patches + self.num_seq_patches:]


def build_prompt(rgb_codes: np.ndarray, flow_codes: np.ndarray, unmask_indices: np.ndarray,
                 seed: int, config, *, campose: tuple[np.ndarray, np.ndarray] | None = None,
                 num_seq_patches: int = 0, dedupe_revealed: bool = False) -> Prompt:
  """Builds the seq2par prompt as `two_frame_seq2par_forward` does.

  rgb_codes [h, w], flow_codes [h, w]: relative LPQ codes (e.g. 64x64). unmask_indices [n]: the
  revealed flow patch ids (`poke_flow_map`). seed: the shuffling seed; as after the original's
  `np.random.seed(seed)`, frame 0 takes the first `permutation(P)` and flow the second (a local
  RandomState, global numpy state is untouched). config: an `LRASConfig`. campose: (tokens [C],
  positions [C]) from `camera.campose_tokens` (SpelkeNet: the identity pose) or None for no
  camera segment. num_seq_patches: patches decoded sequentially before the parallel phase.

  dedupe_revealed=False (the original's behaviour): rows are moved to the front by membership,
  but the prompt length counts every entry of unmask_indices. A repeated id (two pokes in one
  patch, or an object poke inside a camera-fixing corner patch) therefore puts the next
  unrevealed patch, with its true flow codes, into the prompt and drops it from the decode
  order. dedupe_revealed=True de-duplicates unmask_indices first (first occurrence order), so the
  prompt holds exactly the revealed patches.
  """
  t = tokens_per_patch(config.patch_size)
  rgb_codes = _check_codes(rgb_codes, config.rgb_range, "rgb_codes")
  flow_codes = _check_codes(flow_codes, config.flow_range, "flow_codes")
  unmask = np.asarray(unmask_indices, dtype=np.int64).reshape(-1)
  if dedupe_revealed:
    unmask = dedupe(unmask)

  im0_seq, im0_pos = pack_patches(rgb_codes, config.rgb_range[0], config.rgb_patch_0_idx_range[0],
                                  config.frame_0_rgb_pos_range[0], config.patch_size)
  flow_seq, flow_pos = pack_patches(flow_codes, config.flow_range[0],
                                    config.flow_patch_idx_range[0], config.flow_pos_range[0],
                                    config.patch_size)
  num = flow_seq.shape[0]
  if unmask.size and (unmask.min() < 0 or unmask.max() >= num):
    raise ValueError(f"unmask_indices must be patch ids in [0, {num}), got {unmask.tolist()}")
  if len(unmask) > num:
    raise ValueError(f"{len(unmask)} unmask indices for only {num} patches")
  if not 0 <= num_seq_patches <= num - len(unmask):
    raise ValueError(f"num_seq_patches={num_seq_patches} must be in [0, {num - len(unmask)}]")

  rng = np.random.RandomState(int(seed))
  perm_im0 = rng.permutation(im0_seq.shape[0])
  perm_flow = rng.permutation(num)
  im0_seq, im0_pos = im0_seq[perm_im0], im0_pos[perm_im0]
  flow_shuf, flow_pos_shuf = flow_seq[perm_flow], flow_pos[perm_flow]
  flow_front, flow_pos_front = bring_to_front(flow_shuf, flow_pos_shuf, unmask,
                                              config.flow_patch_idx_range[0])

  if campose is None:
    cam_seq = cam_pos = np.zeros(0, dtype=np.int64)
  else:
    cam_seq, cam_pos = (np.asarray(a, dtype=np.int64).reshape(-1) for a in campose)
    if cam_seq.shape != cam_pos.shape:
      raise ValueError(f"campose tokens {cam_seq.shape} and positions {cam_pos.shape} differ")

  seq = np.concatenate([im0_seq.reshape(-1), cam_seq, flow_front.reshape(-1)])
  pos = np.concatenate([im0_pos.reshape(-1), cam_pos, flow_pos_front.reshape(-1)])
  pointers = flow_front[len(unmask):, 0].copy()
  return Prompt(
      im0_seq=im0_seq, im0_pos=im0_pos, perm_im0=perm_im0.astype(np.int64),
      flow_seq_shuffled=flow_shuf, flow_pos_shuffled=flow_pos_shuf,
      perm_flow=perm_flow.astype(np.int64), flow_seq=flow_front, flow_pos=flow_pos_front,
      campose_seq=cam_seq, campose_pos=cam_pos, seq=seq, pos=pos, unmask_indices=unmask,
      decode_pointers=pointers, decode_order=pointers - config.flow_patch_idx_range[0],
      num_seq_patches=int(num_seq_patches), tokens_per_patch=t)


def with_frame0_of(p: Prompt, other: Prompt) -> Prompt:
  """`p` with the frame-0 patch order of `other` (a prompt of the same image).

  Runs that share frame 0's order share the whole [frame 0 | camera] prefix, which is then
  prefilled once for all of them; everything after it (flow order, revealed patches) stays p's.
  """
  n = p.flow_start
  if p.im0_seq.shape != other.im0_seq.shape or not np.array_equal(
      np.sort(p.im0_seq, axis=0), np.sort(other.im0_seq, axis=0)) or not np.array_equal(
          p.campose_seq, other.campose_seq):
    raise ValueError("with_frame0_of needs two prompts of the same image and camera")
  seq, pos = p.seq.copy(), p.pos.copy()
  seq[:n], pos[:n] = other.seq[:n], other.pos[:n]
  return dataclasses.replace(p, im0_seq=other.im0_seq, im0_pos=other.im0_pos,
                             perm_im0=other.perm_im0, seq=seq, pos=pos)


# ---- Sequential phase -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RolloutInputs:
  """Arguments of the original's `LRAS.rollout` for the sequential phase.

  seq [cond_len]: the prompt. pos [len(Prompt.seq)]: positions of the prompt followed by every
  remaining flow row in decode order (generation order). pointers [P - n]: pointer tokens in
  decode order; generated token i with i % T == 0 is forced to pointers[i // T].
  num_new_tokens = T * num_seq_patches. causal_mask_length = cond_len (unused by attention).
  """
  seq: np.ndarray
  pos: np.ndarray
  pointers: np.ndarray
  num_new_tokens: int
  causal_mask_length: int


def rollout_inputs(prompt: Prompt) -> RolloutInputs:
  return RolloutInputs(seq=prompt.cond_seq, pos=prompt.pos, pointers=prompt.decode_pointers,
                       num_new_tokens=prompt.num_new_tokens, causal_mask_length=prompt.cond_len)


def _check_rollout_tokens(prompt: Prompt, rollout_tokens: np.ndarray | None) -> np.ndarray:
  if rollout_tokens is None:
    rollout_tokens = np.zeros(0, dtype=np.int64)
  rollout_tokens = np.asarray(rollout_tokens, dtype=np.int64).reshape(-1)
  if rollout_tokens.size != prompt.num_new_tokens:
    raise ValueError(f"expected the {prompt.num_new_tokens} generated rollout tokens "
                     f"(T * num_seq_patches), got {rollout_tokens.size}")
  return rollout_tokens


# ---- Parallel phase ---------------------------------------------------------------------------

def parallel_step0(prompt: Prompt,
                   rollout_tokens: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """First parallel forward: (seq, pos) [cond_len + T*num_seq_patches + N] int64.

  [prompt | rollout tokens | pointer tokens of the N targets]. rollout_tokens: the
  T*num_seq_patches tokens generated by the sequential phase (None when num_seq_patches == 0).
  The logits at the last N positions predict the first code of every target patch.
  """
  rollout_tokens = _check_rollout_tokens(prompt, rollout_tokens)
  n_ctx = prompt.cond_len + prompt.num_new_tokens
  seq = np.concatenate([prompt.cond_seq, rollout_tokens, prompt.target_seq[:, 0]])
  pos = np.concatenate([prompt.pos[:n_ctx], prompt.target_pos[:, 0]])
  return seq, pos


def parallel_step0_targets(prompt: Prompt) -> np.ndarray:
  """[N] true first codes (absolute ids) of the targets (the original's unused loss target)."""
  return prompt.target_seq[:, 1].copy()


def parallel_positions(prompt: Prompt, step: int) -> np.ndarray:
  """Positions of parallel forward `step` (0 .. T-2): step-0 positions followed by the positions
  of value slots 1..step of every target, block-wise (all slot 1, then all slot 2, ...)."""
  if not 0 <= step <= prompt.tokens_per_patch - 2:
    raise ValueError(f"step must be in [0, {prompt.tokens_per_patch - 2}], got {step}")
  n_ctx = prompt.cond_len + prompt.num_new_tokens
  blocks = prompt.target_pos[:, :step + 1].T.reshape(-1)
  return np.concatenate([prompt.pos[:n_ctx], blocks])


def assemble_flow_sequence(prompt: Prompt, rollout_tokens: np.ndarray | None,
                           parallel_values: np.ndarray) -> np.ndarray:
  """Final flow token sequence [P*T] (prompt flow rows | rollout rows | parallel rows).

  parallel_values: [N, T-1] decoded values per target patch (absolute token ids), i.e.
  `np.stack(step_tokens, axis=1)` of the T-1 parallel forwards. The result is the last P*T
  tokens of [prompt | rollout | targets], as the original passes to unpack_and_sort_img_seq.
  """
  rollout_tokens = _check_rollout_tokens(prompt, rollout_tokens)
  values = np.asarray(parallel_values, dtype=np.int64)
  expected = (prompt.num_par_targets, prompt.tokens_per_patch - 1)
  if values.shape != expected:
    raise ValueError(f"parallel_values must be {expected}, got {values.shape}")
  rows = np.concatenate([prompt.target_seq[:, :1], values], axis=1)
  full = np.concatenate([prompt.cond_seq, rollout_tokens, rows.reshape(-1)])
  return full[-prompt.flow_seq.size:]


def unpack_sorted_codes(flow_sequence: np.ndarray, patch_size: int, value_offset: int = 0,
                        grid_shape: tuple[int, int] | None = None) -> np.ndarray:
  """[P*T] patch rows in any order -> [h, w] codes sorted by pointer, minus value_offset.

  The original's unpack_and_sort_img_seq (value_offset=0 keeps absolute ids; pass
  config.flow_range[0] for relative flow codes). grid_shape: patch grid (default square).
  """
  t = tokens_per_patch(patch_size)
  rows = np.asarray(flow_sequence, dtype=np.int64).reshape(-1, t)
  order = np.argsort(rows[:, 0], kind="stable")
  return unpatchify(rows[order, 1:] - value_offset, grid_shape)
