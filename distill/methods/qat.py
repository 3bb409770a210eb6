"""The QAD stage's one method of its own: which residual-stream channels the quantized student
computes apart (`ModelConfig.outlier_channels`), picked on the fp32 student before the stage.
The quantization grids the stage trains against are `distill.models.quant`."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils


@functools.partial(jax.jit, static_argnums=0)  # compiled once per model, not per call
def _outlier_scores(lm, params, tokens):
  """[D]: each residual-stream channel's largest |value| relative to its token's RMS, over the
  residual after every block and the final hidden state (the inputs of the d_model-input
  matmuls are these, normed)."""
  hidden, states = lm.hidden_states(params, tokens)

  def rel(x):
    x = x.astype(jnp.float32)
    return jnp.abs(x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-12)).max(axis=(0, 1))
  return jnp.max(jnp.stack([rel(x) for x in [*states, hidden]]), axis=0)


def outlier_channels(lm, params, token_batches, k: int) -> tuple:
  """The `k` channels with the largest `_outlier_scores` over `token_batches` (global [B, T]
  int arrays), sorted: ModelConfig.outlier_channels for a QAD student. Every process gets the
  same answer (the scores are computed on global arrays)."""
  if k <= 0:
    return ()
  if k >= lm.cfg.d_model:
    raise ValueError(f"qat_outliers={k} must be below d_model={lm.cfg.d_model}")
  # process_allgather: the global [D] on every process, however XLA left it sharded.
  best = np.max([multihost_utils.process_allgather(_outlier_scores(lm, params, t), tiled=True)
                 for t in token_batches], axis=0)
  return tuple(sorted(int(i) for i in np.argsort(-best, kind="stable")[:k]))
