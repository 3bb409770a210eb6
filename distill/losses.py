"""Soft-target distillation losses: pure, masked, fp32 functions.

Definitions follow DESIGN.md ("The soft-target losses"). With
P = softmax(teacher / T) and Q = softmax(student / T) over the last axis:

  forward_kl        KL(P || Q)
  reverse_kl        KL(Q || P)
  jsd (beta)        M = beta P + (1 - beta) Q;
                    beta KL(P||M) + (1 - beta) KL(Q||M)
  tvd               1/2 sum |P - Q|
  skew_forward_kl   KL(P || skew P + (1 - skew) Q)
  skew_reverse_kl   KL(Q || skew Q + (1 - skew) P)

Every reduction is a masked mean over tokens: sum(value * mask) / sum(mask),
with an all-zero mask giving 0 and zero (finite) gradients.

Shape letters: B batch, T length, D hidden width, V vocab, K top-k, C chunk.
Leading dimensions written `...` are any token layout (usually [B, T]).

Math runs in float32 at least: bf16 inputs are upcast before anything else,
float64 inputs (x64 tests) stay float64.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp

KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl",
         "skew_reverse_kl")
TAIL_RULES = ("renormalize", "tail_bucket")
SCHEDULES = ("constant", "linear", "cosine")
HIDDEN_KINDS = ("mse", "cosine")

# Floor on the teacher's rest-bucket mass in the "tail_bucket" rule. A cached
# top-k can hold all of the fp32 mass, so 1 - sum(p_k) is rounding noise that
# may be 0 or negative; reverse-direction divergences would then be +inf.
TAIL_FLOOR = 1e-10


def _compute_dtype(x) -> jnp.dtype:
  # At least fp32; keeps float64 so gradient checks in x64 mode are exact.
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _upcast(x):
  x = jnp.asarray(x)
  return x.astype(_compute_dtype(x))


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"Unknown divergence kind {kind!r}; valid kinds: {KINDS}.")


def softcap(logits, cap: float | None):
  """c * tanh(x / c) (Gemma-style logit soft-capping); identity when None."""
  if cap is None:
    return logits
  return cap * jnp.tanh(logits / cap)


def logits_from_hidden(hidden, unembed, *, cap: float | None = None):
  """'...D,DV->...V' with fp32 accumulation, then optional soft-cap.

  Operands keep their dtype (bf16 stays bf16 so TPUs/GPUs use their native
  matmul) but accumulate in fp32; fp32 operands ask for full fp32 precision
  because default TPU/GPU precision would round them to bf16/TF32, which
  noticeably moves small divergences.
  """
  dtype = jnp.promote_types(hidden.dtype, unembed.dtype)
  out_dtype = jnp.promote_types(dtype, jnp.float32)
  precision = (lax.Precision.HIGHEST if jnp.finfo(dtype).bits >= 32
               else lax.Precision.DEFAULT)
  logits = jnp.einsum("...D,DV->...V", hidden.astype(dtype),
                      unembed.astype(dtype), precision=precision,
                      preferred_element_type=out_dtype)
  return softcap(logits, cap)


# ---------------------------------------------------------------------------
# Divergences on normalised log-probabilities.
# ---------------------------------------------------------------------------


def _kl(loga, logb):
  """KL(A||B) over the last axis from log-probs; 0 * log 0 = 0.

  The double `where` keeps both the value and the gradient finite where A has
  no mass (log A = -inf), including where B has none either.
  """
  has_mass = loga > -jnp.inf
  diff = jnp.where(has_mass, loga - jnp.where(has_mass, logb, 0.0), 0.0)
  return jnp.sum(jnp.exp(loga) * diff, axis=-1)


def _log_mix(w, loga, logb):
  """log(w A + (1 - w) B) via logaddexp, so it never underflows to log 0."""
  w = jnp.asarray(w, loga.dtype)
  return jnp.logaddexp(jnp.log(w) + loga, jnp.log1p(-w) + logb)


def _per_token_from_logprobs(kind, logp, logq, *, beta, skew):
  """Per-token divergence from teacher (logp) and student (logq) log-probs."""
  _check_kind(kind)
  if kind == "forward_kl":
    return _kl(logp, logq)
  if kind == "reverse_kl":
    return _kl(logq, logp)
  if kind == "jsd":
    logm = _log_mix(beta, logp, logq)
    beta = jnp.asarray(beta, logp.dtype)
    return beta * _kl(logp, logm) + (1.0 - beta) * _kl(logq, logm)
  if kind == "tvd":
    return 0.5 * jnp.sum(jnp.abs(jnp.exp(logp) - jnp.exp(logq)), axis=-1)
  if kind == "skew_forward_kl":
    return _kl(logp, _log_mix(skew, logp, logq))
  # skew_reverse_kl
  return _kl(logq, _log_mix(skew, logq, logp))


def _masked_sum_and_count(values, mask):
  """(sum(values * mask), sum(mask)); masked values cannot leak NaN/inf."""
  if mask is None:
    return jnp.sum(values), jnp.asarray(values.size, values.dtype)
  mask = jnp.broadcast_to(jnp.asarray(mask).astype(values.dtype), values.shape)
  return jnp.sum(jnp.where(mask != 0, values * mask, 0.0)), jnp.sum(mask)


def _safe_div(total, count):
  # Dividing by a placeholder 1 when nothing is unmasked returns 0, not NaN.
  return total / jnp.where(count != 0, count, 1.0)


def _masked_mean(values, mask):
  return _safe_div(*_masked_sum_and_count(values, mask))


def _t2(temperature, dtype):
  t = jnp.asarray(temperature, dtype)
  return t * t


def divergence_per_token(kind, student_logits, teacher_logits, *,
                         temperature=1.0, beta=0.5, skew=0.1):
  """Per-token divergence [...] between logits [..., V] (no mask, no T^2)."""
  _check_kind(kind)
  s = _upcast(student_logits)
  t = _upcast(teacher_logits)
  dtype = jnp.promote_types(s.dtype, t.dtype)
  temp = jnp.asarray(temperature, dtype)
  logq = jax.nn.log_softmax(s.astype(dtype) / temp, axis=-1)
  logp = jax.nn.log_softmax(t.astype(dtype) / temp, axis=-1)
  return _per_token_from_logprobs(kind, logp, logq, beta=beta, skew=skew)


def divergence(kind, student_logits, teacher_logits, *, mask=None,
               temperature=1.0, beta=0.5, skew=0.1, scale_by_t2=False):
  """Masked mean over tokens of the per-token divergence; fp32 scalar."""
  per_token = divergence_per_token(kind, student_logits, teacher_logits,
                                   temperature=temperature, beta=beta,
                                   skew=skew)
  value = _masked_mean(per_token, mask)
  if scale_by_t2:
    value = value * _t2(temperature, value.dtype)
  return value


def _ce_per_token(logits, labels):
  """-log softmax(logits)[label]; labels are clipped, so mask bad ones out."""
  labels = jnp.clip(jnp.asarray(labels).astype(jnp.int32), 0,
                    logits.shape[-1] - 1)
  picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - picked


def cross_entropy(logits, labels, *, mask=None, normalized: bool = False):
  """Masked mean CE in nats of integer `labels` [...] under `logits` [..., V].

  Labels are aligned with logits (label[t] is the target of logits[t]); the
  caller does the next-token shift. `normalized`: `logits` are log-probs already (see
  `topk_targets`), so CE is -logits[label].
  """
  logits = _upcast(logits)
  if normalized:
    labels = jnp.clip(jnp.asarray(labels).astype(jnp.int32), 0, logits.shape[-1] - 1)
    return _masked_mean(-jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0], mask)
  return _masked_mean(_ce_per_token(logits, labels), mask)


def _combine(div, ce, alpha):
  alpha = jnp.asarray(alpha, div.dtype)
  loss = (1.0 - alpha) * div + alpha * ce
  return loss, {"divergence": div, "ce": ce, "loss": loss}


def distill_objective(student_logits, teacher_logits, labels, *, mask=None,
                      kind="forward_kl", alpha=0.0, temperature=1.0, beta=0.5,
                      skew=0.1, scale_by_t2=True, student_softcap=None,
                      teacher_softcap=None):
  """(1 - alpha) * divergence + alpha * CE(student, labels) -> (loss, metrics).

  alpha and temperature may be traced scalars (schedules). Soft-caps apply to
  the logits before temperature; CE uses the soft-capped student at T = 1.
  """
  s = softcap(_upcast(student_logits), student_softcap)
  t = softcap(_upcast(teacher_logits), teacher_softcap)
  div = divergence(kind, s, t, mask=mask, temperature=temperature, beta=beta,
                   skew=skew, scale_by_t2=scale_by_t2)
  ce = cross_entropy(s, labels, mask=mask)
  return _combine(div, ce, alpha)


# ---------------------------------------------------------------------------
# Chunked form: logits of one block of positions at a time.
# ---------------------------------------------------------------------------


def chunked_distill_objective(student_hidden, student_unembed, teacher_hidden,
                              teacher_unembed, labels, *, mask=None,
                              chunk_size, kind="forward_kl", alpha=0.0,
                              temperature=1.0, beta=0.5, skew=0.1,
                              scale_by_t2=True, student_softcap=None,
                              teacher_softcap=None):
  """`distill_objective` on logits = hidden @ unembed, never holding [B,T,V].

  student_hidden [B,T,D_s] and teacher_hidden [B,T,D_t] are final-normed;
  unembeds are [D_s,V] / [D_t,V]. Positions are processed `chunk_size` at a
  time under `jax.checkpoint`, so forward and backward hold [B,C,V] logits
  only (recomputing the two chunk matmuls in the backward pass). Chunks run
  along T, not over flattened B*T, so batch sharding is left untouched.
  Same value and gradients as the dense form.
  """
  _check_kind(kind)
  b, t_len = student_hidden.shape[:2]
  if teacher_hidden.shape[:2] != (b, t_len):
    raise ValueError("student_hidden and teacher_hidden disagree on [B, T]: "
                     f"{student_hidden.shape} vs {teacher_hidden.shape}")
  if chunk_size <= 0:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  c = min(int(chunk_size), t_len)
  n = -(-t_len // c)
  pad = n * c - t_len

  acc_dtype = jnp.promote_types(
      jnp.promote_types(student_hidden.dtype, student_unembed.dtype),
      jnp.float32)
  mask = (jnp.ones((b, t_len), acc_dtype) if mask is None
          else jnp.broadcast_to(jnp.asarray(mask).astype(acc_dtype),
                                (b, t_len)))
  labels = jnp.asarray(labels).astype(jnp.int32)

  def to_chunks(x):
    # [B,T,...] -> [N,B,C,...]; padded positions carry mask 0.
    x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = x.reshape((b, n, c) + x.shape[2:])
    return jnp.moveaxis(x, 1, 0)

  xs = tuple(map(to_chunks, (student_hidden, teacher_hidden, labels, mask)))

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk_sums(w_s, w_t, temp, h_s, h_t, lab, m):
    s = logits_from_hidden(h_s, w_s, cap=student_softcap)
    t = logits_from_hidden(h_t, w_t, cap=teacher_softcap)
    div = divergence_per_token(kind, s, t, temperature=temp, beta=beta,
                               skew=skew)
    ce = _ce_per_token(s, lab)
    div_sum, _ = _masked_sum_and_count(div.astype(acc_dtype), m)
    ce_sum, _ = _masked_sum_and_count(ce.astype(acc_dtype), m)
    return div_sum, ce_sum

  temp = jnp.asarray(temperature, acc_dtype)

  def body(carry, x):
    div_sum, ce_sum = chunk_sums(student_unembed, teacher_unembed, temp, *x)
    return (carry[0] + div_sum, carry[1] + ce_sum), None

  zero = jnp.zeros((), acc_dtype)
  (div_sum, ce_sum), _ = lax.scan(body, (zero, zero), xs)
  count = jnp.sum(mask)
  div = _safe_div(div_sum, count)
  if scale_by_t2:
    div = div * _t2(temperature, acc_dtype)
  ce = _safe_div(ce_sum, count)
  return _combine(div, ce, alpha)


# ---------------------------------------------------------------------------
# Sparse (top-k) teacher targets.
# ---------------------------------------------------------------------------


def topk_targets(teacher_logits, k: int, *, normalized: bool = False):
  """Teacher top-k at T = 1: (ids [..., K] int32, log-probs [..., K] fp32).

  `normalized`: the input already holds log-probs that may sum to < 1 (a teacher seen through
  a trimmed vocabulary): they are kept as they are, so the missing mass stays in the tail.
  """
  logits = _upcast(teacher_logits)
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
  s = _upcast(student_logits)
  lp = _upcast(teacher_logprobs)
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
  _check_kind(kind)
  logp, logq = _sparse_logprobs(student_logits, teacher_topk_ids,
                                teacher_topk_logprobs, temperature, tail)
  per_token = _per_token_from_logprobs(kind, logp, logq, beta=beta, skew=skew)
  value = _masked_mean(per_token, mask)
  if scale_by_t2:
    value = value * _t2(temperature, value.dtype)
  return value


def sparse_distill_objective(student_logits, teacher_topk_ids,
                             teacher_topk_logprobs, labels, *, mask=None,
                             kind="forward_kl", alpha=0.0, temperature=1.0,
                             beta=0.5, skew=0.1, scale_by_t2=True,
                             tail="renormalize", student_softcap=None):
  """`distill_objective` with a sparse (top-k) teacher.

  See `sparse_divergence` for the tail rules.
  """
  s = softcap(_upcast(student_logits), student_softcap)
  div = sparse_divergence(kind, s, teacher_topk_ids, teacher_topk_logprobs,
                          mask=mask, temperature=temperature, beta=beta,
                          skew=skew, scale_by_t2=scale_by_t2, tail=tail)
  ce = cross_entropy(s, labels, mask=mask)
  return _combine(div, ce, alpha)


# ---------------------------------------------------------------------------
# Schedules and hidden-state distillation.
# ---------------------------------------------------------------------------


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


def hidden_state_loss(student_hidden, teacher_hidden, projection, *,
                      mask=None, kind="mse"):
  """Masked mean over tokens of a distance between projected hidden states.

  student_hidden [..., D_s] is mapped by projection [D_s, D_t] into the
  teacher's space. "mse": mean over D_t of squared error per token;
  "cosine": 1 - cosine similarity per token.
  """
  if kind not in HIDDEN_KINDS:
    raise ValueError(f"Unknown hidden-state loss {kind!r}; valid kinds: "
                     f"{HIDDEN_KINDS}.")
  h = _upcast(student_hidden)
  w = _upcast(projection)
  dtype = jnp.promote_types(h.dtype, w.dtype)
  proj = jnp.einsum("...S,ST->...T", h.astype(dtype), w.astype(dtype),
                    precision=lax.Precision.HIGHEST)
  t = _upcast(teacher_hidden).astype(dtype)
  if kind == "mse":
    per_token = jnp.mean(jnp.square(proj - t), axis=-1)
  else:
    eps = jnp.asarray(1e-8, dtype)
    dot = jnp.sum(proj * t, axis=-1)
    norms2 = jnp.sum(proj * proj, axis=-1) * jnp.sum(t * t, axis=-1)
    # Clamp before the sqrt: its gradient at 0 is infinite.
    per_token = 1.0 - dot / jnp.sqrt(jnp.maximum(norms2, eps * eps))
  return _masked_mean(per_token, mask)


def attention_map_loss(student_maps, teacher_maps, *, mask=None):
  """Masked mean over query positions of KL(teacher || student) between attention
  distributions [..., T, S] (rows sum to 1; causal zeros on both sides count as 0 log 0 = 0).
  Attention transfer as in MiniLM, on head-averaged maps when head counts differ."""
  p = _upcast(teacher_maps)
  q = _upcast(student_maps).astype(p.dtype)
  tiny = jnp.finfo(p.dtype).tiny
  per_query = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, tiny)) -
                                            jnp.log(jnp.maximum(q, tiny))), 0.0), axis=-1)
  return _masked_mean(per_query, mask)
