"""Run a stack of identical transformer blocks as one `jax.lax.scan` (ModelConfig.scan_layers).

Why: unrolled, XLA compiles every block separately, so compile time and program size grow with
depth. The shipped v5e config's step (28-layer Gemma-7B teacher + 12-layer student, 256 chips)
took 1,103 s to compile unrolled on this project's 2-core CPU (other jobs running) and 246 s
scanned (quiet), with 1.7 GiB less temporary memory per chip (launch/README.md). Scanned, the block body is compiled once
whatever the depth, as MaxText and t5x do on accelerators.

The parameters keep their per-layer layout (`block_0`, `block_1`, ...): checkpoints, the
Hugging Face / GGUF loaders, pruning and export read them unchanged. The scan stacks them
inside the step (`jnp.stack`, one extra copy of the block weights per device, in their own
dtype and sharding); the gradient of the stack is a slice back into the per-layer leaves.

Layers differ only where sliding windows alternate (Gemma 2/3: every `sliding_pattern`-th layer
global). The scan then runs over groups of `period` consecutive layers, each group one scan
step, and the layers left over after the last whole group run unrolled.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def layer_period(n_layers: int, sliding_window: int, sliding_pattern: int) -> int:
  """How many consecutive layers make one repeating group."""
  if sliding_window and sliding_pattern:
    return min(sliding_pattern, n_layers)
  return 1


def scan_blocks(blocks: Sequence[nnx.Module], x, call: Callable, period: int, remat: bool,
                collect: bool = False):
  """x -> (x after every block, [x after block i for each i] if `collect` else None).

  `call(block, x) -> x` runs one block (its other inputs are closed over: they are the same for
  every layer). Blocks i and i + period must be structurally identical.
  """
  groups = len(blocks) // period
  if groups < 2:  # nothing repeats: every block runs unrolled below
    groups = 0
  outs = []
  if groups:
    x, outs = _scan_groups(blocks, x, call, period, groups, remat, collect)
  for blk in blocks[groups * period:]:
    x = call(blk, x)
    outs.append(x)
  return x, (outs if collect else None)


def _scan_groups(blocks, x, call, period, groups, remat, collect):
  """The first `groups * period` blocks as one scan: (x, per-block outputs or [])."""
  defs, stacked = [], []
  for j in range(period):
    members = [nnx.split(blocks[g * period + j]) for g in range(groups)]
    defs.append(members[0][0])
    stacked.append(jax.tree.map(lambda *leaves: jnp.stack(leaves), *[s for _, s in members]))

  def body(h, group_states):
    ys = []
    for gdef, st in zip(defs, group_states):
      h = call(nnx.merge(gdef, st), h)
      ys.append(h)
    return h, (jnp.stack(ys) if collect else None)

  if remat:
    # Save only each group's input (the carry) and recompute the group in the backward pass:
    # activation memory independent of depth, as with nnx.remat per block when unrolled.
    body = jax.checkpoint(body, prevent_cse=False)
  x, ys = jax.lax.scan(body, x, stacked)
  return x, ([ys[g, j] for g in range(groups) for j in range(period)] if collect else [])
