"""Schedules for alpha and the temperature: step -> fp32 scalar, traced-safe (optax schedules)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "linear", "cosine")


def schedule(kind: str, start: float, end: float,
             total_steps: int) -> Callable[[jax.Array], jax.Array]:
  """step -> fp32 scalar going from `start` (step 0) to `end` (total_steps).

  "constant" always returns `start`. Steps outside [0, total_steps] clamp; with
  total_steps <= 0, "linear" and "cosine" are at `end` from step 0.
  Works with a traced step inside jit.

  The curves are optax's: `constant_schedule`, `linear_schedule` and, for "cosine",
  `cosine_decay_schedule` of (start - end) plus `end`, so a schedule may start at 0 (optax's
  own `alpha` argument is a fraction of the initial value). Values agree with
  start + (end - start) * f(step / total), f = identity or (1 - cos(pi x)) / 2, to fp32
  rounding (tests/test_losses.py compares with NumPy).
  """
  if kind not in SCHEDULES:
    raise ValueError(f"Unknown schedule {kind!r}; valid kinds: {SCHEDULES}.")
  start_f, end_f = float(start), float(end)
  total = max(int(total_steps), 0)
  if kind == "constant":
    curve = optax.constant_schedule(start_f)
  elif not total:
    # optax holds a zero-length linear schedule at its start and refuses a cosine one;
    # here a schedule with no steps has already arrived.
    curve = optax.constant_schedule(end_f)
  elif kind == "linear":
    curve = optax.linear_schedule(start_f, end_f, transition_steps=total)
  else:
    decay = optax.cosine_decay_schedule(start_f - end_f, decay_steps=total)
    curve = lambda step: decay(step) + end_f  # pylint: disable=unnecessary-lambda-assignment

  def fn(step):
    # Negative steps clamp to 0 (optax's cosine does not clamp below).
    step = jnp.maximum(jnp.asarray(step, jnp.float32), 0.0)
    return jnp.asarray(curve(step), jnp.float32).reshape(())

  return fn
