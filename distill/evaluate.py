"""Validation metrics for teacher, student and baseline on the same batches.

Per model: cross-entropy (nats/token), bits/byte, perplexity, KL(teacher || model) at T=1,
top-1 agreement with the teacher; and `gap_closed` across models.
"""
from __future__ import annotations

import functools
import math

import jax
import numpy as np

from distill import losses, sharding
from distill.models.transformer import LM


def _sums(params, teacher_params, batch, *, lm: LM, teacher: LM):
  logits = lm.apply(params, batch["inputs"])
  t_logits = teacher.apply(teacher_params, batch["inputs"])
  mask = batch["mask"]
  n = mask.sum()
  ce = losses.cross_entropy(logits, batch["targets"], mask=mask) * n
  kl = losses.divergence("forward_kl", logits, t_logits, mask=mask) * n
  agree = ((logits.argmax(-1) == t_logits.argmax(-1)) * mask).sum()
  return {"ce": ce, "kl": kl, "agree": agree, "n": n}


def target_bytes(batches, tokenizer) -> int:
  """UTF-8 bytes of the masked target text, the denominator of bits/byte."""
  total = 0
  for b in batches:
    for row, m in zip(np.asarray(b["targets"]), np.asarray(b["mask"])):
      total += len(tokenizer.decode([int(t) for t in row[m > 0]]).encode("utf-8"))
  return total


@functools.lru_cache(maxsize=8)
def _compiled(lm: LM, teacher: LM, mesh):
  # Cached so the student and the baseline (same LM) share one compilation.
  return jax.jit(functools.partial(_sums, lm=lm, teacher=teacher),
                 in_shardings=(sharding.param_shardings(lm, mesh),
                               sharding.param_shardings(teacher, mesh),
                               sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def evaluate(lm: LM, params, teacher: LM, teacher_params, batches, mesh, *, n_bytes: int):
  """Metrics of `lm` on `batches` (list of per-process numpy dicts), relative to the teacher."""
  fn = _compiled(lm, teacher, mesh)
  tot = {"ce": 0.0, "kl": 0.0, "agree": 0.0, "n": 0.0}
  for b in batches:
    out = jax.device_get(fn(params, teacher_params, sharding.global_batch(b, mesh)))
    for k in tot:
      tot[k] += float(out[k])
  n = max(tot["n"], 1.0)
  ce = tot["ce"] / n
  return {
      "val_ce": ce,
      "val_ppl": math.exp(min(ce, 50.0)),
      "bits_per_byte": tot["ce"] / math.log(2) / max(n_bytes, 1),
      "kl_to_teacher": tot["kl"] / n,
      "top1_agreement": tot["agree"] / n,
      "tokens": int(tot["n"]),
  }


def gap_closed(ce_teacher: float, ce_student: float, ce_baseline: float) -> float:
  """(CE_baseline - CE_student) / (CE_baseline - CE_teacher); nan when the teacher is no better."""
  denom = ce_baseline - ce_teacher
  return (ce_baseline - ce_student) / denom if denom > 0 else float("nan")
