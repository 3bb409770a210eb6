"""The train step and its one builder: state, shardings, jit, donation.

`train_step` is `(state, batch, rng, teacher_params) -> (state, metrics)`: module-level and
pure. `make_step` is the ONE place that turns it into the compiled program (initial state from
shapes, state shardings derived from the parameters' rules, explicit in/out shardings, the
state donated); training (`train.run`), the AOT memory check (`distill.aot`), the step
benchmark and the tests all build it here, so what they measure is the step that trains.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from distill.models import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(*, lr: float, steps: int, warmup: int, weight_decay: float = 0.0,
                   clip_norm: float = 1.0) -> optax.GradientTransformation:
  warmup = max(0, min(warmup, steps - 1))
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1),
                                             end_value=lr * 0.1)
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=weight_decay))


def train_step(state: TrainState, batch, rng, teacher_params, *, loss_fn: Callable,
               tx: optax.GradientTransformation, skip_nonfinite: bool = False):
  # rng is unused by the deterministic models here but threaded through for dropout-style
  # extensions: one stream per step, independent of how the loop was resumed.
  del rng
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, teacher_params, state.step)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  metrics = dict(metrics, grad_norm=grad_norm)
  if skip_nonfinite:
    # A bad batch leaves params and optimizer untouched; the step counter still advances so
    # the data order stays the one an uninterrupted run sees.
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(ok, new, old)
    params = jax.tree.map(keep, params, state.params)
    opt_state = jax.tree.map(keep, opt_state, state.opt_state)
    metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
  return TrainState(state.step + 1, params, opt_state), metrics


# ---------------------------------------------------------------------------------------------
# Shardings for the whole state, derived from the parameters' rules.


def _path_keys(path):
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)


def state_shardings(abstract_state: TrainState, param_shardings, mesh):
  """Optimizer leaves shaped like a parameter get that parameter's sharding."""
  by_path = {}
  jax.tree_util.tree_map_with_path(lambda p, s: by_path.__setitem__(_path_keys(p), s),
                                   param_shardings)

  def pick(path, leaf):
    keys = _path_keys(path)
    for n in range(len(keys)):
      sh = by_path.get(keys[n:])
      if sh is not None and len(sh.spec) <= leaf.ndim:
        return sh
    return sharding.replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, abstract_state)


# ---------------------------------------------------------------------------------------------
# The builder.


@dataclasses.dataclass(frozen=True)
class Step:
  """What `make_step` returns.

  init(key) -> TrainState: jitted, laid out on `state_shardings` (never compiled unless called:
    `distill.aot` only lowers `step` on `abstract`).
  step(state, batch, rng, teacher_params) -> (state, metrics): jitted, state donated.
  abstract: the TrainState's shapes/dtypes (for checkpoint restore and AOT inputs).
  jit(pure): any other pure step with the same signature, jitted exactly as `step` is (the
    on-policy step of `distill.methods.onpolicy`).
  """
  init: Callable
  step: Callable
  abstract: Any
  state_shardings: Any
  param_shardings: Any
  batch_sharding: Any
  teacher_shardings: Any
  replicated: Any

  def jit(self, pure: Callable) -> Callable:
    return jax.jit(pure, in_shardings=(self.state_shardings, self.batch_sharding,
                                       self.replicated, self.teacher_shardings),
                   out_shardings=(self.state_shardings, self.replicated), donate_argnums=(0,))


def make_step(loss_fn: Callable, tx: optax.GradientTransformation, lm, mesh, *,
              teacher_shardings=None, param_shardings=None, batch_sharding=None,
              init_params: Callable | None = None, skip_nonfinite: bool = False) -> Step:
  """Build the training step of `lm` (the trained model) with `loss_fn` and `tx` on `mesh`.

  loss_fn: (params, batch, teacher_params, step) -> (loss, metrics), e.g.
    `functools.partial(objectives.distill_loss, student=..., teacher=..., cfg=...)`.
  teacher_shardings: the teacher params' shardings (None when the loss reads no teacher).
  param_shardings: default `sharding.param_shardings(lm, mesh)`; batch_sharding: default
    `sharding.batch_sharding(mesh)`.
  init_params: key -> params (default `lm.init`), e.g. a pruned init or extra feature params.
  """
  p_shard = param_shardings if param_shardings is not None else sharding.param_shardings(lm, mesh)
  b_shard = batch_sharding if batch_sharding is not None else sharding.batch_sharding(mesh)
  make_params = init_params if init_params is not None else lm.init

  def init(key):
    params = make_params(key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  abstract = jax.eval_shape(init, jax.eval_shape(lambda: jax.random.key(0)))
  s_shard = state_shardings(abstract, p_shard, mesh)
  built = Step(init=jax.jit(init, out_shardings=s_shard), step=None, abstract=abstract,
               state_shardings=s_shard, param_shardings=p_shard, batch_sharding=b_shard,
               teacher_shardings=teacher_shardings, replicated=sharding.replicated(mesh))
  # `train_step` is looked up here, at build time, so a test may wrap it (test_robustness).
  pure = functools.partial(train_step, loss_fn=loss_fn, tx=tx, skip_nonfinite=skip_nonfinite)
  return dataclasses.replace(built, step=built.jit(pure))
