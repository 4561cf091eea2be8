"""Learning-rate schedules (optax-compatible callables step -> lr)."""
from __future__ import annotations

import jax.numpy as jnp


def warmup_poly(base_lr: float, max_iters: int, *, warmup_factor: float = 0.001,
                warmup_iters: int = 1000, power: float = 0.9):
  """detectron2's WarmupPolyLR (the EISEN original): linear warmup from warmup_factor * base_lr
  over warmup_iters steps, then base_lr * (1 - t / max_iters) ** power. Step 0 is the first."""
  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    alpha = t / warmup_iters
    warm = jnp.where(t < warmup_iters, warmup_factor * (1 - alpha) + alpha, 1.0)
    return base_lr * warm * jnp.maximum(1.0 - t / max_iters, 0.0) ** power
  return schedule


def warmup_cosine(base_lr: float, max_iters: int, *, warmup_iters: int = 100,
                  final_fraction: float = 0.1):
  """Linear warmup then cosine decay to final_fraction * base_lr (for the LRAS / LPQ trainers)."""
  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (t + 1) / warmup_iters)
    progress = jnp.clip((t - warmup_iters) / jnp.maximum(max_iters - warmup_iters, 1), 0.0, 1.0)
    cos = final_fraction + (1 - final_fraction) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    return base_lr * warm * jnp.where(t < warmup_iters, 1.0, cos)
  return schedule
