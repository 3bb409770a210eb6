"""Validation metrics for teacher, student and baseline on the same batches.

Per model: cross-entropy (nats/token), bits/byte, perplexity, KL(teacher || model) at T=1,
top-1 agreement with the teacher; and `gap_closed` across models.
"""
from __future__ import annotations

import functools
import math
import os

import jax
import numpy as np

from distill import losses
from distill.models import sharding
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


def _ce_sums(params, batch, *, lm: LM):
  mask = batch["mask"]
  n = mask.sum()
  return {"ce": losses.cross_entropy(lm.apply(params, batch["inputs"]), batch["targets"],
                                     mask=mask) * n, "n": n}


@functools.lru_cache(maxsize=8)
def _compiled_ce(lm: LM):
  # No in_shardings: the params come as the training loop holds them (finalized ones too).
  return jax.jit(functools.partial(_ce_sums, lm=lm))


def mean_ce(lm: LM, params, batches, mesh) -> float:
  """Mean next-token cross-entropy (nats/token) of `lm` over `batches` (per-process numpy
  dicts): the dev-split loss that best-checkpoint selection compares."""
  fn = _compiled_ce(lm)
  ce = n = 0.0
  for b in batches:
    out = jax.device_get(fn(params, sharding.global_batch(b, mesh)))
    ce, n = ce + float(out["ce"]), n + float(out["n"])
  return ce / max(n, 1.0)


def ce_metrics(lm: LM, params, batches, mesh, *, n_bytes: int) -> dict:
  """CE, bits/byte and perplexity of `lm` alone (no teacher on the same ids: cross-tokenizer
  runs); KL and agreement are nan."""
  fn = _compiled_ce(lm)
  tot = {"ce": 0.0, "kl": float("nan"), "agree": float("nan"), "n": 0.0}
  for b in batches:
    out = jax.device_get(fn(params, sharding.global_batch(b, mesh)))
    tot["ce"], tot["n"] = tot["ce"] + float(out["ce"]), tot["n"] + float(out["n"])
  return _metrics(tot, n_bytes)


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
  return _metrics(tot, n_bytes)


# Teacher targets kept per position for evaluation: exact (K = V) for small vocabularies;
# for real ones the top-K plus one tail bucket (KL over that coarsening is a lower bound of the
# full KL, and the same quantity the top-k distillation loss optimises).
EVAL_TOP_K = 64
EXACT_VOCAB = 1024


def _teacher_pass(t_params, batch, *, teacher: LM, k: int):
  logits = teacher.apply(t_params, batch["inputs"])
  normalized = getattr(teacher, "normalized", False)  # prune.trimmed.TrimmedTeacher
  ids, logprobs = losses.topk_targets(logits, k, normalized=normalized)
  mask = batch["mask"]
  n = mask.sum()
  ce = losses.cross_entropy(logits, batch["targets"], mask=mask, normalized=normalized)
  return ids, logprobs, {"ce": ce * n,
                         "kl": jax.numpy.zeros(()), "agree": n, "n": n}


def _model_pass(params, batch, t_ids, t_logprobs, *, lm: LM):
  logits = lm.apply(params, batch["inputs"])
  mask = batch["mask"]
  n = mask.sum()
  kl = losses.sparse_divergence("forward_kl", logits, t_ids, t_logprobs, mask=mask,
                                tail="tail_bucket")
  return {"ce": losses.cross_entropy(logits, batch["targets"], mask=mask) * n, "kl": kl * n,
          "agree": ((logits.argmax(-1) == t_ids[..., 0]) * mask).sum(), "n": n}


def teacher_targets(teacher: LM, teacher_params, batches, mesh, cache_file: str | None = None,
                    key: str = ""):
  """(per-batch [(ids, log-probs)] of this process's rows, teacher sums), run once.

  With `cache_file`, the result is kept on disk (keyed by `key`: teacher, tokenizer, shapes),
  so a re-run, a resumed run or a later evaluation never runs a big teacher over the
  evaluation text again.
  """
  if cache_file and os.path.exists(cache_file):
    with np.load(cache_file) as z:
      if str(z["key"]) == key and int(z["batches"]) == len(batches):
        per = [(z[f"ids{i}"], z[f"lp{i}"]) for i in range(len(batches))]
        return per, {k: float(z[f"sum_{k}"]) for k in ("ce", "kl", "agree", "n")}
  k = teacher.cfg.vocab_size if teacher.cfg.vocab_size <= EXACT_VOCAB else EVAL_TOP_K
  fn = jax.jit(functools.partial(_teacher_pass, teacher=teacher, k=k),
               in_shardings=(sharding.param_shardings(teacher, mesh),
                             sharding.batch_sharding(mesh)),
               out_shardings=sharding.replicated(mesh))
  tot = {"ce": 0.0, "kl": 0.0, "agree": 0.0, "n": 0.0}
  per = []
  rows = slice(jax.process_index() * len(batches[0]["inputs"]),
               (jax.process_index() + 1) * len(batches[0]["inputs"])) if batches else None
  for b in batches:
    ids, lp, sums = jax.device_get(fn(teacher_params, sharding.global_batch(b, mesh)))
    per.append((np.asarray(ids[rows]), np.asarray(lp[rows])))
    for name in tot:
      tot[name] += float(sums[name])
  if cache_file:  # one file per process: each holds its own rows
    os.makedirs(os.path.dirname(cache_file), exist_ok=True)
    tmp = cache_file + ".tmp.npz"
    arrays = {f"ids{i}": a for i, (a, _) in enumerate(per)}
    arrays.update({f"lp{i}": b for i, (_, b) in enumerate(per)})
    np.savez(tmp, key=key, batches=len(batches), **arrays,
             **{f"sum_{k}": v for k, v in tot.items()})
    os.replace(tmp, cache_file)
  return per, tot


def evaluate_all(models: dict, teacher: LM, teacher_params, batches, mesh, *, n_bytes: int,
                 cache_file: str | None = None, key: str = "") -> dict:
  """{"teacher": metrics, name: metrics, ...} for `models` = {name: (lm, params)}.

  The teacher runs once over `batches` (or not at all when `cache_file` holds its targets);
  KL and agreement of every model are taken against those stored targets.
  """
  targets, t_tot = teacher_targets(teacher, teacher_params, batches, mesh, cache_file, key)
  out = {"teacher": _metrics(t_tot, n_bytes)}
  for name, (lm, params) in models.items():
    fn = _compiled_model_pass(lm, mesh)
    tot = {"ce": 0.0, "kl": 0.0, "agree": 0.0, "n": 0.0}
    for b, (ids, lp) in zip(batches, targets):
      res = jax.device_get(fn(params, sharding.global_batch(
          dict(b, t_ids=ids, t_lp=lp), mesh)))
      for k in tot:
        tot[k] += float(res[k])
    out[name] = _metrics(tot, n_bytes)
  return out


@functools.lru_cache(maxsize=8)
def _compiled_model_pass(lm: LM, mesh):
  def fn(params, batch):
    return _model_pass(params, batch, batch["t_ids"], batch["t_lp"], lm=lm)
  return jax.jit(fn, in_shardings=(sharding.param_shardings(lm, mesh),
                                   sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


def _metrics(tot: dict, n_bytes: int) -> dict:
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
