"""Chunked fused form: logits of one block of positions at a time, never [B, T, V] whole."""

from __future__ import annotations

import functools

import jax
from jax import lax
import jax.numpy as jnp

from distill.losses.core import (check_kind, ce_per_token, combine, masked_sum_and_count,
                                 safe_div, t2, divergence_per_token, logits_from_hidden)


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
  check_kind(kind)
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
    ce = ce_per_token(s, lab)
    div_sum, _ = masked_sum_and_count(div.astype(acc_dtype), m)
    ce_sum, _ = masked_sum_and_count(ce.astype(acc_dtype), m)
    return div_sum, ce_sum

  temp = jnp.asarray(temperature, acc_dtype)

  def body(carry, x):
    div_sum, ce_sum = chunk_sums(student_unembed, teacher_unembed, temp, *x)
    return (carry[0] + div_sum, carry[1] + ce_sum), None

  zero = jnp.zeros((), acc_dtype)
  (div_sum, ce_sum), _ = lax.scan(body, (zero, zero), xs)
  count = jnp.sum(mask)
  div = safe_div(div_sum, count)
  if scale_by_t2:
    div = div * t2(temperature, acc_dtype)
  ce = safe_div(ce_sum, count)
  return combine(div, ce, alpha)
