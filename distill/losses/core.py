"""Dense soft-target divergences and CE on logits [..., V]: masked, fp32 inside.

The shared helpers (dtype promotion, masked means, soft-caps, logits from hidden states) live
here; the chunked, sparse and hidden-state forms build on them.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp

KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl",
         "skew_reverse_kl")


def _compute_dtype(x) -> jnp.dtype:
  # At least fp32; keeps float64 so gradient checks in x64 mode are exact.
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def upcast(x):
  """`x` as an array of at least float32 (float64 stays float64)."""
  x = jnp.asarray(x)
  return x.astype(_compute_dtype(x))


def check_kind(kind: str) -> None:
  """ValueError naming the valid kinds unless `kind` is one of KINDS."""
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


def per_token_from_logprobs(kind, logp, logq, *, beta, skew):
  """Per-token divergence from teacher (logp) and student (logq) log-probs."""
  check_kind(kind)
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


def masked_sum_and_count(values, mask):
  """(sum(values * mask), sum(mask)); masked values cannot leak NaN/inf."""
  if mask is None:
    return jnp.sum(values), jnp.asarray(values.size, values.dtype)
  mask = jnp.broadcast_to(jnp.asarray(mask).astype(values.dtype), values.shape)
  return jnp.sum(jnp.where(mask != 0, values * mask, 0.0)), jnp.sum(mask)


def safe_div(total, count):
  """total / count, and 0 (not NaN) where count is 0: the divisor becomes a placeholder 1."""
  return total / jnp.where(count != 0, count, 1.0)


def masked_mean(values, mask):
  """sum(values * mask) / sum(mask); 0 for an all-zero mask; mask None means all ones."""
  return safe_div(*masked_sum_and_count(values, mask))


def t2(temperature, dtype):
  """T^2 in `dtype` (the Hinton scaling that keeps soft-target gradients T-independent)."""
  t = jnp.asarray(temperature, dtype)
  return t * t


def divergence_per_token(kind, student_logits, teacher_logits, *,
                         temperature=1.0, beta=0.5, skew=0.1):
  """Per-token divergence [...] between logits [..., V] (no mask, no T^2)."""
  check_kind(kind)
  s = upcast(student_logits)
  t = upcast(teacher_logits)
  dtype = jnp.promote_types(s.dtype, t.dtype)
  temp = jnp.asarray(temperature, dtype)
  logq = jax.nn.log_softmax(s.astype(dtype) / temp, axis=-1)
  logp = jax.nn.log_softmax(t.astype(dtype) / temp, axis=-1)
  return per_token_from_logprobs(kind, logp, logq, beta=beta, skew=skew)


def divergence(kind, student_logits, teacher_logits, *, mask=None,
               temperature=1.0, beta=0.5, skew=0.1, scale_by_t2=False):
  """Masked mean over tokens of the per-token divergence; fp32 scalar."""
  per_token = divergence_per_token(kind, student_logits, teacher_logits,
                                   temperature=temperature, beta=beta,
                                   skew=skew)
  value = masked_mean(per_token, mask)
  if scale_by_t2:
    value = value * t2(temperature, value.dtype)
  return value


def ce_per_token(logits, labels):
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
  logits = upcast(logits)
  if normalized:
    labels = jnp.clip(jnp.asarray(labels).astype(jnp.int32), 0, logits.shape[-1] - 1)
    return masked_mean(-jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0], mask)
  return masked_mean(ce_per_token(logits, labels), mask)


def combine(div, ce, alpha):
  """(1 - alpha) * div + alpha * ce -> (loss, {divergence, ce, loss})."""
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
  s = softcap(upcast(student_logits), student_softcap)
  t = softcap(upcast(teacher_logits), teacher_softcap)
  div = divergence(kind, s, t, mask=mask, temperature=temperature, beta=beta,
                   skew=skew, scale_by_t2=scale_by_t2)
  ce = cross_entropy(s, labels, mask=mask)
  return combine(div, ce, alpha)
