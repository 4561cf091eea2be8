"""Slot attention in flax.nnx: NSI's exact module and a SAVi-style variant behind one
interface, plus NSI's broadcast decoder, projection head and a torch-exact GRU cell.

NSI (jha-lab/neural-slot-interpreters models/slot_attention.py, SLATE/STEVE lineage),
`variant='nsi'`:
  inputs [B, N, Din] -> LayerNorm -> Linear-ReLU-Linear (Din -> Din; `input_mlp`)
  slots_init = mu + exp(log_sigma) * noise, mu / log_sigma [D] shared by all slots, noise
               [B, K, D] drawn every call (injectable)
  slot attention: k, v = (LN(inputs) W_k, W_v) (no bias) [B, H, N, D/H], k *= (D/H)^-0.5
    per iteration: q = LN(slots) W_q; logits = k q^T [B, H, N, K]; softmax over slots,
    jointly over heads x slots (one softmax over H*K entries per input); attn_vis = sum over
    heads (kept from the last iteration, before the next two steps); attn += eps;
    attn /= sum over inputs; updates = attn^T v -> [B, K, D]; slots = GRU(updates, slots);
    slots = slots + MLP(LN(slots)).
SAVi (google-research/slot-attention-video modules/attention.py), `variant='savi'`:
  per-head projections [Din, H, hd] (qkv_size = H * hd), q /= sqrt(hd), softmax over slots
  per head, attn / (sum over inputs + eps) (epsilon on the sum), heads merged by a dense
  layer [H, hd, D] (+ bias) when H > 1; the returned attention map is the mean over heads.
  Initial slots: learned per slot (`init='param'`, [K, D]) or conditional (`init='conditional'`,
  an MLP of per-slot conditioning vectors [B, K, C], e.g. boxes or points).
Every variant/init combination is allowed; the defaults are NSI's ('gaussian') and SAVi's
('param').

The GRU is torch's nn.GRUCell: weight_ih [in, 3H], weight_hh [H, 3H] (torch's rows r | z | n,
transposed), separate biases, n = tanh(x W_in + b_in + r * (h W_hn + b_hn)),
h' = (h - n) * z + n. A flax GRUCell is the special case b_hr = b_hz = 0.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from spelke_jax.models import layers

# ---- Initialisers of the original (models/utils.py and torch defaults) ----------------------

# utils.linear(weight_init='xavier', gain=1): xavier_uniform_, bias 0.
XAVIER = jax.nn.initializers.xavier_uniform()
# utils.linear(weight_init='kaiming'): kaiming_uniform_(nonlinearity='relu') = U(+-sqrt(6 / fan_in)).
KAIMING = jax.nn.initializers.variance_scaling(2.0, "fan_in", "uniform")
# nn.Linear default: kaiming_uniform_(a=sqrt(5)) = U(+-1 / sqrt(fan_in)) (biases: zeros here).
TORCH_LINEAR = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# nn.Embedding default: N(0, 1).
STD_NORMAL = jax.nn.initializers.normal(1.0)


def xavier_gain(gain: float):
  return jax.nn.initializers.variance_scaling(gain * gain, "fan_avg", "uniform")


def dropout(x: jax.Array, rate: float, deterministic: bool, rng: jax.Array | None,
            what: str = "dropout") -> jax.Array:
  """Inverted dropout (torch nn.Dropout); identity when deterministic or rate == 0."""
  if deterministic or rate <= 0:
    return x
  if rng is None:
    raise ValueError(f"{what} in train mode needs dropout_rng (or call model.eval())")
  keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _split(rng: jax.Array | None, n: int):
  return [None] * n if rng is None else list(jax.random.split(rng, n))


class MLP(nnx.Module):
  """fc1 -> ReLU -> fc2 (both with bias): torch nn.Sequential(Linear, ReLU, Linear)."""

  def __init__(self, in_size: int, hidden: int, out_size: int, *, init1=KAIMING, init2=XAVIER,
               axes=("embed", "mlp", "embed"), rngs: nnx.Rngs | None = None):
    self.fc1 = layers.Linear(in_size, hidden, axes=(axes[0], axes[1]), use_bias=True, init=init1,
                             rngs=rngs)
    self.fc2 = layers.Linear(hidden, out_size, axes=(axes[1], axes[2]), use_bias=True, init=init2,
                             rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fc2(jax.nn.relu(self.fc1(x)))


class GRUCell(nnx.Module):
  """torch nn.GRUCell(in_size, hidden) with torch's gate order (r, z, n) and bias layout."""

  def __init__(self, in_size: int, hidden: int, *, rngs: nnx.Rngs | None = None):
    self.hidden = hidden
    self.weight_ih = layers.param(rngs, (in_size, 3 * hidden), ("embed", "mlp"), jnp.float32,
                                  XAVIER)
    self.weight_hh = layers.param(rngs, (hidden, 3 * hidden), ("embed", "mlp"), jnp.float32,
                                  jax.nn.initializers.orthogonal())
    self.bias_ih = layers.param(rngs, (3 * hidden,), ("mlp",), jnp.float32,
                                jax.nn.initializers.zeros)
    self.bias_hh = layers.param(rngs, (3 * hidden,), ("mlp",), jnp.float32,
                                jax.nn.initializers.zeros)

  def __call__(self, x: jax.Array, h: jax.Array) -> jax.Array:
    """x [..., in], h [..., H] -> new h [..., H]."""
    gi = x @ self.weight_ih[...] + self.bias_ih[...]
    gh = h @ self.weight_hh[...] + self.bias_hh[...]
    ir, iz, in_ = jnp.split(gi, 3, axis=-1)
    hr, hz, hn = jnp.split(gh, 3, axis=-1)
    r = jax.nn.sigmoid(ir + hr)
    z = jax.nn.sigmoid(iz + hz)
    n = jnp.tanh(in_ + r * hn)
    return (h - n) * z + n


# ---- Slot attention ------------------------------------------------------------------------

VARIANTS = ("nsi", "savi")
INITS = ("gaussian", "param", "conditional")


@dataclasses.dataclass(frozen=True)
class SlotAttentionConfig:
  """Slot attention sizes. `mlp_hidden_size` 0 drops the residual MLP (SAVi's MOVi option);
  `qkv_size` (SAVi only) defaults to `slot_size`; `cond_size` / `cond_hidden` size the
  conditional initialiser's MLP; `input_mlp` is NSI's LayerNorm + MLP on the inputs."""
  num_slots: int = 11
  num_iterations: int = 3
  num_heads: int = 1
  input_size: int = 768
  slot_size: int = 192
  mlp_hidden_size: int = 192
  epsilon: float = 1e-8
  variant: str = "nsi"
  init: str | None = None
  qkv_size: int | None = None
  input_mlp: bool = True
  cond_size: int = 4
  cond_hidden: int | None = None
  ln_eps: float = 1e-5

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"unknown slot attention variant {self.variant!r}; known: {VARIANTS}")
    if self.init is None:
      object.__setattr__(self, "init", "gaussian" if self.variant == "nsi" else "param")
    if self.init not in INITS:
      raise ValueError(f"unknown slot init {self.init!r}; known: {INITS}")
    if self.qkv_size is None:
      object.__setattr__(self, "qkv_size", self.slot_size)
    if self.variant == "nsi" and self.qkv_size != self.slot_size:
      raise ValueError("variant 'nsi' projects to slot_size; qkv_size must equal slot_size")
    if self.qkv_size % self.num_heads:
      raise ValueError(f"qkv_size {self.qkv_size} is not divisible by num_heads {self.num_heads}")
    if self.variant == "savi" and self.num_heads == 1 and self.qkv_size != self.slot_size:
      raise ValueError("single-head 'savi' has no output projection: qkv_size must equal "
                       "slot_size")
    if self.num_iterations < 1 or self.num_slots < 1:
      raise ValueError("num_iterations and num_slots must be >= 1")

  @property
  def head_dim(self) -> int:
    return self.qkv_size // self.num_heads

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], **overrides) -> "SlotAttentionConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in {**dict(d), **overrides}.items() if k in names})

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SlotOutput:
  """slots [B, K, D] (final), attn [B, N, K] (last iteration, before eps/renormalisation),
  slots_init [B, K, D], slots_per_iter [iters, B, K, D]."""
  slots: jax.Array
  attn: jax.Array
  slots_init: jax.Array
  slots_per_iter: jax.Array


class SlotAttention(nnx.Module):
  """The iterative part: (inputs [B, N, Din], slots [B, K, D]) -> SlotOutput (slots_init =
  the given slots). Permutation-equivariant over slots."""

  def __init__(self, config: SlotAttentionConfig, *, rngs: nnx.Rngs | None = None):
    c = self.config = config
    din, d, eps = c.input_size, c.slot_size, c.ln_eps
    self.norm_inputs = layers.LayerNorm(din, use_bias=True, eps=eps, rngs=rngs)
    self.norm_slots = layers.LayerNorm(d, use_bias=True, eps=eps, rngs=rngs)
    if c.variant == "nsi":
      self.project_q = layers.Linear(d, d, axes=("embed", "heads"), init=XAVIER, rngs=rngs)
      self.project_k = layers.Linear(din, d, axes=("embed", "heads"), init=XAVIER, rngs=rngs)
      self.project_v = layers.Linear(din, d, axes=("embed", "heads"), init=XAVIER, rngs=rngs)
      gru_in = d
    else:
      h, hd = c.num_heads, c.head_dim
      lecun = jax.nn.initializers.lecun_normal()
      axes = ("embed", "heads", "head_dim")
      self.project_q = layers.param(rngs, (d, h, hd), axes, jnp.float32, lecun)
      self.project_k = layers.param(rngs, (din, h, hd), axes, jnp.float32, lecun)
      self.project_v = layers.param(rngs, (din, h, hd), axes, jnp.float32, lecun)
      if h > 1:
        self.dense_o = layers.param(rngs, (h, hd, d), ("heads", "head_dim", "embed"), jnp.float32,
                                    jax.nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2))
        self.dense_o_bias = layers.param(rngs, (d,), ("embed",), jnp.float32,
                                         jax.nn.initializers.zeros)
      gru_in = d if h > 1 else c.qkv_size
    self.gru = GRUCell(gru_in, d, rngs=rngs)
    if c.mlp_hidden_size > 0:
      self.norm_mlp = layers.LayerNorm(d, use_bias=True, eps=eps, rngs=rngs)
      self.mlp = MLP(d, c.mlp_hidden_size, d, rngs=rngs)
    else:
      self.norm_mlp = None
      self.mlp = None

  def _attend_nsi(self, k, v, slots):
    """k, v [B, H, N, hd] (k pre-scaled); slots [B, K, D] -> (updates [B, K, D], attn_vis)."""
    c = self.config
    b, h, n, _ = k.shape
    q = self.project_q(self.norm_slots(slots))
    q = q.reshape(b, c.num_slots, h, -1).transpose(0, 2, 1, 3)           # [B, H, K, hd]
    logits = jnp.einsum("bhnd,bhkd->bnhk", k, q).reshape(b, n, h * c.num_slots)
    attn = jax.nn.softmax(logits, axis=-1).reshape(b, n, h, c.num_slots)
    attn = attn.transpose(0, 2, 1, 3)                                     # [B, H, N, K]
    attn_vis = attn.sum(axis=1)
    attn = attn + c.epsilon
    attn = attn / jnp.sum(attn, axis=-2, keepdims=True)
    updates = jnp.einsum("bhnk,bhnd->bkhd", attn, v).reshape(b, c.num_slots, -1)
    return updates, attn_vis

  def _attend_savi(self, k, v, slots):
    """k, v [B, N, H, hd]; slots [B, K, D] -> (updates [B, K, D], attn_vis [B, N, K])."""
    c = self.config
    q = jnp.einsum("bkd,dhe->bkhe", self.norm_slots(slots), self.project_q[...])
    q = q / jnp.sqrt(jnp.float32(c.head_dim))
    logits = jnp.einsum("bkhe,bnhe->bhkn", q, k)
    attn = jax.nn.softmax(logits, axis=-2)                                # over slots
    attn_vis = jnp.mean(attn, axis=1).transpose(0, 2, 1)
    attn = attn / (jnp.sum(attn, axis=-1, keepdims=True) + c.epsilon)
    updates = jnp.einsum("bhkn,bnhe->bkhe", attn, v)
    if c.num_heads > 1:
      updates = jnp.einsum("bkhe,hed->bkd", updates, self.dense_o[...]) + self.dense_o_bias[...]
    else:
      updates = updates[:, :, 0]
    return updates, attn_vis

  def __call__(self, inputs: jax.Array, slots: jax.Array) -> SlotOutput:
    c = self.config
    if inputs.ndim != 3 or inputs.shape[-1] != c.input_size:
      raise ValueError(f"slot attention inputs must be [B, N, {c.input_size}], got "
                       f"{tuple(inputs.shape)}")
    if slots.shape != (inputs.shape[0], c.num_slots, c.slot_size):
      raise ValueError(f"slots must be [B={inputs.shape[0]}, K={c.num_slots}, D={c.slot_size}], "
                       f"got {tuple(slots.shape)}")
    slots_init = slots
    b, n, _ = inputs.shape
    x = self.norm_inputs(inputs)
    if c.variant == "nsi":
      h = c.num_heads
      k = self.project_k(x).reshape(b, n, h, -1).transpose(0, 2, 1, 3)
      v = self.project_v(x).reshape(b, n, h, -1).transpose(0, 2, 1, 3)
      k = (c.slot_size // h) ** -0.5 * k
      attend = self._attend_nsi
    else:
      k = jnp.einsum("bnd,dhe->bnhe", x, self.project_k[...])
      v = jnp.einsum("bnd,dhe->bnhe", x, self.project_v[...])
      attend = self._attend_savi
    per_iter, attn_vis = [], None
    for _ in range(c.num_iterations):
      slots_prev = slots
      updates, attn_vis = attend(k, v, slots)
      slots = self.gru(updates, slots_prev)
      if self.mlp is not None:
        slots = slots + self.mlp(self.norm_mlp(slots))
      per_iter.append(slots)
    return SlotOutput(slots=slots, attn=attn_vis, slots_init=slots_init,
                      slots_per_iter=jnp.stack(per_iter))


class SlotAttentionEncoder(nnx.Module):
  """NSI's SlotAttentionEncoder: input LN + MLP, the slot initialiser, SlotAttention.

  Torch names: slot_attn.{layer_norm, mlp.0, mlp.2, slot_mu, slot_log_sigma, slot_attention.*}.
  """

  def __init__(self, config: SlotAttentionConfig, *, rngs: nnx.Rngs | None = None):
    c = self.config = config
    din, d = c.input_size, c.slot_size
    if c.input_mlp:
      self.layer_norm = layers.LayerNorm(din, use_bias=True, eps=c.ln_eps, rngs=rngs)
      self.mlp = MLP(din, din, din, rngs=rngs)
    else:
      self.layer_norm = None
      self.mlp = None
    if c.init == "gaussian":
      # xavier_uniform_ of a (1, 1, D) tensor: fan_in = fan_out = D -> U(+-sqrt(3 / D)).
      bound = (3.0 / d) ** 0.5
      uni = lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                     bound)
      self.slot_mu = layers.param(rngs, (d,), ("embed",), jnp.float32, uni)
      self.slot_log_sigma = layers.param(rngs, (d,), ("embed",), jnp.float32, uni)
    elif c.init == "param":
      self.slots = layers.param(rngs, (c.num_slots, d), (None, "embed"), jnp.float32, STD_NORMAL)
    else:
      self.cond_mlp = MLP(c.cond_size, c.cond_hidden or d, d, init1=TORCH_LINEAR,
                          init2=TORCH_LINEAR, rngs=rngs)
    self.slot_attention = SlotAttention(config, rngs=rngs)

  def initial_slots(self, batch: int, *, noise: jax.Array | None = None,
                    rng: jax.Array | None = None,
                    conditioning: jax.Array | None = None) -> jax.Array:
    """[B, K, D] initial slots. gaussian: mu + exp(log_sigma) * noise (noise [B, K, D], or
    drawn from `rng`); param: the learned [K, D] slots; conditional: MLP(conditioning
    [B, K, cond_size])."""
    c = self.config
    shape = (batch, c.num_slots, c.slot_size)
    if c.init == "gaussian":
      if noise is None:
        if rng is None:
          raise ValueError("gaussian slot init needs `noise` [B, K, D] or an `rng`")
        noise = jax.random.normal(rng, shape, jnp.float32)
      if tuple(noise.shape) != shape:
        raise ValueError(f"slot noise must be {shape}, got {tuple(noise.shape)}")
      return self.slot_mu[...] + jnp.exp(self.slot_log_sigma[...]) * noise
    if c.init == "param":
      return jnp.broadcast_to(self.slots[...], shape)
    if conditioning is None:
      raise ValueError("conditional slot init needs `conditioning` [B, K, cond_size]")
    if tuple(conditioning.shape) != (batch, c.num_slots, c.cond_size):
      raise ValueError(f"conditioning must be {(batch, c.num_slots, c.cond_size)}, got "
                       f"{tuple(conditioning.shape)}")
    return self.cond_mlp(conditioning)

  def __call__(self, inputs: jax.Array, *, noise: jax.Array | None = None,
               rng: jax.Array | None = None, conditioning: jax.Array | None = None,
               slots: jax.Array | None = None) -> SlotOutput:
    """inputs [B, N, Din] -> SlotOutput. `slots` [B, K, D] bypasses the initialiser."""
    x = inputs
    if self.mlp is not None:
      x = self.mlp(self.layer_norm(x))
    if slots is None:
      slots = self.initial_slots(inputs.shape[0], noise=noise, rng=rng, conditioning=conditioning)
    return self.slot_attention(x, slots)


# ---- Decoder and projection head ------------------------------------------------------------

class BroadcastDecoder(nnx.Module):
  """NSI's BroadCastDecoder (DINOSAUR MLP decoder, alpha in channel 0).

  slots [B, K, D] broadcast to P positions + learned positions [P, D] -> MLP
  (D -> hidden -> ... -> F + 1, ReLU between) -> alpha = softmax over slots of channel 0,
  recon = sum_k alpha * channels 1: -> (recon [B, P, F], alpha [B, K, P]).
  """

  def __init__(self, slot_size: int, feature_size: int, num_positions: int, *,
               hidden: int = 1024, num_hidden_layers: int = 3, rngs: nnx.Rngs | None = None):
    self.num_positions = num_positions
    self.positions = layers.Embed(num_positions, slot_size, axes=("position", "embed"),
                                  init=STD_NORMAL, rngs=rngs)
    sizes = [slot_size] + [hidden] * num_hidden_layers + [feature_size + 1]
    self.layers = nnx.List([
        layers.Linear(i, o, axes=("embed", "mlp") if j == 0 else ("mlp", "mlp"), use_bias=True,
                      init=TORCH_LINEAR, rngs=rngs)
        for j, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))])

  def __call__(self, slots: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = slots[:, :, None, :] + self.positions.embedding[...][None, None]   # [B, K, P, D]
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = jax.nn.relu(x)
    alpha = jax.nn.softmax(x[..., 0], axis=1)                              # [B, K, P]
    recon = jnp.einsum("bkpf,bkp->bpf", x[..., 1:], alpha)
    return recon, alpha


class ProjectionHead(nnx.Module):
  """p = proj(x); p + Dropout(fc2(ReLU(fc1(LN(p))))) with fc1 E -> 4E (NSI's embed_proj,
  norm_embed, embed_mlp on both the slot and the program side). [..., in] -> [..., E]."""

  def __init__(self, in_size: int, embed_dim: int, dropout_rate: float = 0.1, *,
               ln_eps: float = 1e-5, rngs: nnx.Rngs | None = None):
    self.proj = layers.Linear(in_size, embed_dim, axes=("embed", "proj"), use_bias=True,
                              init=TORCH_LINEAR, rngs=rngs)
    self.norm = layers.LayerNorm(embed_dim, use_bias=True, eps=ln_eps, rngs=rngs)
    self.mlp = MLP(embed_dim, 4 * embed_dim, embed_dim, init1=TORCH_LINEAR, init2=TORCH_LINEAR,
                   axes=("proj", "mlp", "proj"), rngs=rngs)
    self.dropout_rate = dropout_rate
    self.deterministic = True

  def __call__(self, x: jax.Array, dropout_rng: jax.Array | None = None) -> jax.Array:
    p = self.proj(x)
    y = dropout(self.mlp(self.norm(p)), self.dropout_rate, self.deterministic, dropout_rng,
                "projection-head dropout")
    return p + y
