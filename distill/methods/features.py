"""Feature distillation in the step: hidden states matched through learned projections.

  --config.distill.hidden.layers='auto' | '0:1,1:3' (student block:teacher block) | '' (off)
  --config.distill.hidden.weight=1.0 --config.distill.hidden.kind=mse|cosine

The objective adds weight x the mean over pairs of `losses.hidden_state_loss` between the
residual stream after student block i (projected [D_s -> D_t]) and after teacher block j.
The projections train beside the student under `params[objectives.FEATURES]` and are dropped
from the params a stage returns, so they never reach a saved stage or an export.

'auto' pairs every student block with its source: the teacher block pruning kept for it
(`--config.student.init=prune`), else evenly spaced teacher blocks. A pruned student's
projection starts as the selection of the teacher channels it kept, so the feature loss of
the pruned init is the error of the dropped channels only.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np

from distill.train import objectives
from distill.errors import ConfigError


def pairs(spec: str, n_student: int, n_teacher: int, source_layers=None) -> tuple:
  """((student block, teacher block), ...) from a layers spec."""
  if not spec:
    return ()
  if spec == "auto":
    if source_layers is not None:
      return tuple((i, int(j)) for i, j in enumerate(source_layers))
    return tuple((i, round((i + 1) * n_teacher / n_student) - 1) for i in range(n_student))
  out = []
  for item in spec.split(","):
    try:
      i, j = (int(v) for v in item.split(":"))
    except ValueError:
      raise ConfigError(f"--config.distill.hidden.layers={spec!r}: write 'auto' or "
                        "'student:teacher' block pairs such as '0:1,1:3'") from None
    if not (0 <= i < n_student and 0 <= j < n_teacher):
      raise ConfigError(f"--config.distill.hidden.layers={spec!r}: pair {item} is outside the "
                        f"student's {n_student} / teacher's {n_teacher} blocks")
    out.append((i, j))
  return tuple(out)


def projection(d_s: int, d_t: int, channels=None, key=None) -> np.ndarray:
  """[D_s, D_t] start: the kept channels' selection, the identity, or small random."""
  if channels is not None:
    p = np.zeros((d_s, d_t), np.float32)
    p[np.arange(d_s), np.asarray(channels)] = 1.0
    return p
  if d_s == d_t:
    return np.eye(d_s, dtype=np.float32)
  key = jax.random.key(0) if key is None else key
  return np.asarray(jax.random.normal(key, (d_s, d_t)) / np.sqrt(d_s), np.float32)


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """Hidden-state / attention transfer: block pairs ('' off, 'auto', or '0:1,1:3'), the
  weight of the feature loss, its kind ('mse' | 'cosine'), the attention-map weight."""
  layers: str
  weight: float
  kind: str
  attention_weight: float


def setup(h: FeatureSpec, student, teacher, loss_cfg, init, plan=None):
  """(loss config with the pairs, student init with projections); unchanged when off."""
  if not h.layers or not (h.weight or h.attention_weight):
    return loss_cfg, init
  ps = pairs(h.layers, student.cfg.n_layers, teacher.cfg.n_layers,
             None if plan is None else plan.layers)
  loss_cfg = dataclasses.replace(loss_cfg, hidden_pairs=ps, hidden_weight=float(h.weight),
                                 hidden_kind=h.kind, attention_weight=float(h.attention_weight))
  channels = None if plan is None else plan.channels
  projs = {f"proj_{n}": projection(student.cfg.d_model, teacher.cfg.d_model, channels,
                                   jax.random.key(n)) for n in range(len(ps))}
  base = init or student.init

  def with_features(key):
    return dict(base(key), **{objectives.FEATURES: jax.tree.map(jax.numpy.asarray, projs)})
  return loss_cfg, with_features
