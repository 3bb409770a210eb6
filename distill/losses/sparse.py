"""Sparse (top-k) teacher targets: top-k extraction and the two tail rules."""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

from distill.losses.core import (check_kind, combine, masked_mean, per_token_from_logprobs,
                                 t2, upcast, cross_entropy, softcap)

TAIL_RULES = ("renormalize", "tail_bucket")

# Floor on the teacher's rest-bucket mass in the "tail_bucket" rule. A cached
# top-k can hold all of the fp32 mass, so 1 - sum(p_k) is rounding noise that
# may be 0 or negative; reverse-direction divergences would then be +inf.
TAIL_FLOOR = 1e-10


def topk_targets(teacher_logits, k: int, *, normalized: bool = False):
  """Teacher top-k at T = 1: (ids [..., K] int32, log-probs [..., K] fp32).

  `normalized`: the input already holds log-probs that may sum to < 1 (a teacher seen through
  a trimmed vocabulary): they are kept as they are, so the missing mass stays in the tail.
  """
  logits = upcast(teacher_logits)
  values, ids = grouped_top_k(logits, k)
  if normalized:
    return ids.astype(jnp.int32), values
  # Top-k of the logits, then the normaliser: never materialises log-softmax over [..., V].
  return ids.astype(jnp.int32), values - jax.nn.logsumexp(logits, axis=-1, keepdims=True)


def grouped_top_k(x, k: int, group: int = 64):
  """`lax.top_k(x, k)` over the last axis, exact, in two small sorts instead of one over V.

  The vocab is cut into groups of `group` ids; every one of the k largest values sits in a
  group whose maximum is among the k largest group maxima (each such group's maximum is
  itself one of the k largest values), so the k best groups hold the answer. XLA:CPU sorts a
  whole row for top_k: on a 49k vocab this halves the cost (ties may come out in another
  order than lax.top_k's).
  """
  v = x.shape[-1]
  if v % group or k * group >= v:  # no saving: one sort over the row
    return lax.top_k(x, k)
  lead = x.shape[:-1]
  xg = x.reshape(-1, v // group, group)
  _, gid = lax.top_k(xg.max(-1), k)  # [X, k] best groups
  cand = jnp.take_along_axis(xg, gid[..., None], axis=1).reshape(-1, k * group)
  values, i = lax.top_k(cand, k)
  ids = jnp.take_along_axis(gid, i // group, axis=1) * group + i % group
  return values.reshape(lead + (k,)), ids.reshape(lead + (k,))


def _sparse_logprobs(student_logits, ids, teacher_logprobs, temperature, tail):
  """Teacher and student log-probs over the outcomes a tail rule compares."""
  if tail not in TAIL_RULES:
    raise ValueError(f"Unknown tail rule {tail!r}; valid rules: {TAIL_RULES}.")
  s = upcast(student_logits)
  lp = upcast(teacher_logprobs)
  dtype = jnp.promote_types(s.dtype, lp.dtype)
  s, lp = s.astype(dtype), lp.astype(dtype)
  temp = jnp.asarray(temperature, dtype)
  ids = jnp.asarray(ids).astype(jnp.int32)
  vocab, k = s.shape[-1], ids.shape[-1]

  if tail == "renormalize" or k >= vocab:
    # With K = V there is no rest bucket, so both rules are the dense one.
    zs = jnp.take_along_axis(s, ids, axis=-1)
    zt = lp
  else:
    # Compress both sides to K + 1 outcomes at T = 1, in log space. The student's rest is
    # 1 - (its mass on the K ids): one logsumexp over V in all, no [..., V] membership mask
    # and no second pass over the vocabulary (on a 49k vocab those passes, not the matmuls,
    # were most of the step). Same floor as the teacher side where the rest underflows.
    lse = jax.nn.logsumexp(s, axis=-1, keepdims=True)
    top = jnp.take_along_axis(s, ids, axis=-1) - lse
    covered_s = jax.nn.logsumexp(top, axis=-1, keepdims=True)
    rest = jnp.log(jnp.maximum(-jnp.expm1(covered_s), TAIL_FLOOR))
    zs = jnp.concatenate([top, rest], axis=-1)
    covered = jax.nn.logsumexp(lp, axis=-1, keepdims=True)
    # -expm1 keeps the tail accurate when covered mass is close to 1.
    t_rest = jnp.log(jnp.maximum(-jnp.expm1(covered), TAIL_FLOOR))
    zt = jnp.concatenate([lp, t_rest], axis=-1)
  logq = jax.nn.log_softmax(zs / temp, axis=-1)
  logp = jax.nn.log_softmax(zt / temp, axis=-1)
  return logp, logq


def sparse_divergence(kind, student_logits, teacher_topk_ids,
                      teacher_topk_logprobs, *, mask=None, temperature=1.0,
                      beta=0.5, skew=0.1, scale_by_t2=False,
                      tail="renormalize"):
  """Divergence against a sparse teacher given by its top-k at T = 1.

  student_logits [..., V]; teacher_topk_ids [..., K] (distinct ids) and
  teacher_topk_logprobs [..., K] (teacher log-probs at T = 1).

  Tail rules (what happens to the teacher mass outside its top-k):
    "renormalize": P and Q are both restricted to the K ids and renormalised:
      P = softmax(logprobs / T), Q = softmax(student_logits[ids] / T).
      The tail is ignored; nothing pushes student mass off non-top-k tokens.
    "tail_bucket": both sides become distributions over K + 1 outcomes, the
      K ids plus one "rest" bucket, first at T = 1: the student's rest is the
      exact mass of its full softmax outside the ids (computed by logsumexp),
      the teacher's rest is max(1 - sum exp(logprobs), TAIL_FLOOR). The
      temperature is then applied to those K + 1 log-probs as if they were
      logits (softmax(log p / T)), identically on both sides, so the rest
      bucket is tempered like one pseudo-token. With K = V (no rest bucket)
      it equals the dense divergence at every T. Equal inputs give 0 as long
      as the teacher's rest mass is above fp32 noise (~1e-7); below that the
      cache cannot say how small it was and TAIL_FLOOR stands in for it.
  """
  check_kind(kind)
  logp, logq = _sparse_logprobs(student_logits, teacher_topk_ids,
                                teacher_topk_logprobs, temperature, tail)
  per_token = per_token_from_logprobs(kind, logp, logq, beta=beta, skew=skew)
  value = masked_mean(per_token, mask)
  if scale_by_t2:
    value = value * t2(temperature, value.dtype)
  return value


def sparse_distill_objective(student_logits, teacher_topk_ids,
                             teacher_topk_logprobs, labels, *, mask=None,
                             kind="forward_kl", alpha=0.0, temperature=1.0,
                             beta=0.5, skew=0.1, scale_by_t2=True,
                             tail="renormalize", student_softcap=None):
  """`distill_objective` with a sparse (top-k) teacher.

  See `sparse_divergence` for the tail rules.
  """
  s = softcap(upcast(student_logits), student_softcap)
  div = sparse_divergence(kind, s, teacher_topk_ids, teacher_topk_logprobs,
                          mask=mask, temperature=temperature, beta=beta,
                          skew=skew, scale_by_t2=scale_by_t2, tail=tail)
  ce = cross_entropy(s, labels, mask=mask)
  return combine(div, ce, alpha)
