"""Schedules for alpha and the temperature: step -> fp32 scalar, traced-safe."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

SCHEDULES = ("constant", "linear", "cosine")


def schedule(kind: str, start: float, end: float,
             total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """step -> fp32 scalar going from `start` (step 0) to `end` (total_steps).

  "constant" always returns `start`. Steps outside [0, total_steps] clamp.
  Works with a traced step inside jit.
  """
  if kind not in SCHEDULES:
    raise ValueError(f"Unknown schedule {kind!r}; valid kinds: {SCHEDULES}.")
  start_f, end_f = float(start), float(end)
  total = max(int(total_steps), 0)

  def fn(step):
    step = jnp.asarray(step, jnp.float32)
    if kind == "constant":
      return jnp.full((), start_f, jnp.float32)
    frac = jnp.clip(step / total, 0.0, 1.0) if total else jnp.ones(
        (), jnp.float32)
    if kind == "cosine":
      frac = 0.5 * (1.0 - jnp.cos(math.pi * frac))
    return (start_f + (end_f - start_f) * frac).astype(jnp.float32)

  return fn
