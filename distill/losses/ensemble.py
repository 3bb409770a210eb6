"""Ensemble soft targets: the weighted average of several teachers' probabilities.

P_ens = sum_i w_i softmax(teacher_i / T) / sum_i w_i over one shared vocabulary (teachers with
other tokenizers are first mapped to the student's: distill.losses.cross_tokenizer), computed
in log space (logsumexp over teachers) so no mixture underflows. An ensemble of one teacher is
that teacher's log_softmax exactly. The pipeline's ensemble teacher (`config.teachers`) is
distill/methods/ensemble.py.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from distill.errors import ConfigError
from distill.losses.core import upcast


def check_weights(weights: Sequence[float]) -> tuple[float, ...]:
  """The weights as floats; one line (ConfigError, exit 2) unless each is finite and >= 0 and
  they sum to a positive number."""
  ws = tuple(float(w) for w in weights)
  if not ws or any(not math.isfinite(w) or w < 0 for w in ws) or sum(ws) <= 0:
    raise ConfigError(f"teacher weights {list(ws)} must be finite, >= 0 and sum to a positive "
                      "number; give each teacher a weight such as 1.0")
  return ws


def ensemble_logprobs(teacher_logits: Sequence, weights: Sequence[float], *, temperature=1.0):
  """log sum_i (w_i / sum w) softmax(teacher_logits[i] / T): [..., V] log-probs."""
  ws = check_weights(weights)
  if len(ws) != len(teacher_logits):
    raise ValueError(f"{len(teacher_logits)} teachers but {len(ws)} weights")
  total = sum(ws)
  logs = [jax.nn.log_softmax(upcast(t) / jnp.asarray(temperature, upcast(t).dtype), axis=-1)
          for t in teacher_logits]
  if len(logs) == 1:
    return logs[0]
  stacked = jnp.stack(logs)  # [N, ..., V]
  logw = jnp.log(jnp.asarray([w / total for w in ws], stacked.dtype))
  logw = logw.reshape((-1,) + (1,) * (stacked.ndim - 1))
  # A weight of 0 adds -inf: that teacher drops out of the mixture.
  return jax.nn.logsumexp(stacked + logw, axis=0)
