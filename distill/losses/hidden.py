"""Feature losses: hidden states through a learned projection, attention maps."""

from __future__ import annotations

from jax import lax
import jax.numpy as jnp

from distill.losses.core import masked_mean, upcast

HIDDEN_KINDS = ("mse", "cosine")


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
  h = upcast(student_hidden)
  w = upcast(projection)
  dtype = jnp.promote_types(h.dtype, w.dtype)
  proj = jnp.einsum("...S,ST->...T", h.astype(dtype), w.astype(dtype),
                    precision=lax.Precision.HIGHEST)
  t = upcast(teacher_hidden).astype(dtype)
  if kind == "mse":
    per_token = jnp.mean(jnp.square(proj - t), axis=-1)
  else:
    eps = jnp.asarray(1e-8, dtype)
    dot = jnp.sum(proj * t, axis=-1)
    norms2 = jnp.sum(proj * proj, axis=-1) * jnp.sum(t * t, axis=-1)
    # Clamp before the sqrt: its gradient at 0 is infinite.
    per_token = 1.0 - dot / jnp.sqrt(jnp.maximum(norms2, eps * eps))
  return masked_mean(per_token, mask)


def attention_map_loss(student_maps, teacher_maps, *, mask=None):
  """Masked mean over query positions of KL(teacher || student) between attention
  distributions [..., T, S] (rows sum to 1; causal zeros on both sides count as 0 log 0 = 0).
  Attention transfer as in MiniLM, on head-averaged maps when head counts differ."""
  p = upcast(teacher_maps)
  q = upcast(student_maps).astype(p.dtype)
  tiny = jnp.finfo(p.dtype).tiny
  per_query = jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.maximum(p, tiny)) -
                                            jnp.log(jnp.maximum(q, tiny))), 0.0), axis=-1)
  return masked_mean(per_query, mask)
