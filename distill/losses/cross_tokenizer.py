"""The cross-tokenizer soft-target loss: teacher and student with different vocabularies.

Inputs besides the two models' logits are the alignment of distill.data.alignment, per student
position: `teacher_index` (the teacher position predicting from the same byte boundary, -1:
none) and `exact` (the two next tokens are the same bytes), and the vocabulary map as two
tables over the C keys both vocabularies have (`teacher_cols` [C, Dt], `student_cols` [C, Ds]:
the ids with key c, -1 padding). With P_T = softmax(teacher / T), Q_T = softmax(student / T):

- at an aligned position whose next tokens coincide (`exact`): the configured divergence
  (`kind`) between P and Q grouped by key and renormalized over the shared keys,
  P'(c) = sum_{t in c} P(t) / sum_{c'} sum_{t in c'} P(t), likewise Q'; a group of one id is a
  gather, so with identical tokenizers (the identity map) this IS the ordinary divergence;
- at an aligned position whose next tokens differ: `uld_weight` x ULD(P, Q), the universal
  logit distillation distance of Boizard et al. (2024): both probability vectors sorted in
  decreasing order, the shorter padded with zeros, sum_k |p_(k) - q_(k)| (the L1 /
  Wasserstein-1 distance between the sorted vectors; it needs no correspondence of ids);
- at an unaligned position (inside a teacher token): no soft term.

divergence = (sum over exact positions of D + sum over ULD positions of uld_weight x ULD) /
(number of aligned positions), x T^2 when `scale_by_t2`; loss = (1 - alpha) x divergence +
alpha x CE(student, labels) over every unmasked position (positions without a teacher target
learn from the labels only, so a byte student wants alpha > 0).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from distill.losses.core import (
    combine, cross_entropy, masked_mean, per_token_from_logprobs, softcap, t2, upcast)


def group_logits(x, cols):
  """[..., V] scaled logits -> [..., C]: log sum_{id in column c} exp(x[id])."""
  cols = jnp.asarray(cols)
  if cols.shape[1] == 1:
    return jnp.take(x, cols[:, 0], axis=-1)
  vals = jnp.take(x, jnp.maximum(cols, 0), axis=-1)  # [..., C, D]
  vals = jnp.where(cols >= 0, vals, -jnp.inf)
  return jax.nn.logsumexp(vals, axis=-1)


def uld_per_token(logp, logq):
  """sum_k |p_(k) - q_(k)| over both distributions sorted decreasingly, zero-padded."""
  n = max(logp.shape[-1], logq.shape[-1])

  def sorted_probs(logx):
    x = jnp.exp(logx)
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])
    return -jnp.sort(-x, axis=-1)

  return jnp.sum(jnp.abs(sorted_probs(logp) - sorted_probs(logq)), axis=-1)


def cross_tokenizer_per_token(student_logits, teacher_logits, teacher_index, exact,
                              teacher_cols, student_cols, *, kind="forward_kl",
                              temperature=1.0, beta=0.5, skew=0.1, uld_weight=1.0):
  """(per-token soft term [B, S], its weight [B, S]: 1 where aligned) without mask or T^2.

  `teacher_logits` [B, Tt, Vt] are the teacher's over its own positions.
  """
  s = upcast(student_logits)
  t = upcast(teacher_logits)
  dtype = jnp.promote_types(s.dtype, t.dtype)
  temp = jnp.asarray(temperature, dtype)
  idx = jnp.asarray(teacher_index)
  t = jnp.take_along_axis(t.astype(dtype), jnp.maximum(idx, 0)[..., None], axis=1)
  s_scaled, t_scaled = s.astype(dtype) / temp, t / temp
  logp = jax.nn.log_softmax(group_logits(t_scaled, teacher_cols), axis=-1)
  logq = jax.nn.log_softmax(group_logits(s_scaled, student_cols), axis=-1)
  d = per_token_from_logprobs(kind, logp, logq, beta=beta, skew=skew)
  u = uld_per_token(jax.nn.log_softmax(t_scaled, axis=-1),
                    jax.nn.log_softmax(s_scaled, axis=-1))
  exact = jnp.asarray(exact, bool)
  per_token = jnp.where(exact, d, jnp.asarray(uld_weight, dtype) * u)
  return per_token, (idx >= 0).astype(dtype)


def cross_tokenizer_objective(student_logits, teacher_logits, labels, teacher_index, exact,
                              teacher_cols, student_cols, *, mask=None, kind="forward_kl",
                              alpha=0.0, temperature=1.0, beta=0.5, skew=0.1, uld_weight=1.0,
                              scale_by_t2=True, student_softcap=None, teacher_softcap=None):
  """(1 - alpha) x cross-tokenizer divergence + alpha x CE -> (loss, metrics) (module doc)."""
  s = softcap(upcast(student_logits), student_softcap)
  t = softcap(upcast(teacher_logits), teacher_softcap)
  per_token, aligned = cross_tokenizer_per_token(
      s, t, teacher_index, exact, teacher_cols, student_cols, kind=kind,
      temperature=temperature, beta=beta, skew=skew, uld_weight=uld_weight)
  weight = aligned if mask is None else jnp.asarray(mask).astype(aligned.dtype) * aligned
  div = masked_mean(per_token, weight)
  if scale_by_t2:
    div = div * t2(temperature, div.dtype)
  ce = cross_entropy(s, labels, mask=mask)
  loss, metrics = combine(div, ce, alpha)
  metrics["aligned_fraction"] = masked_mean(aligned, mask)
  metrics["exact_fraction"] = masked_mean(jnp.asarray(exact, weight.dtype), mask)
  return loss, metrics
