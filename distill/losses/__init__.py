"""Soft-target distillation losses: pure, masked, fp32 functions.

Modules: core (dense divergences, CE, shared helpers), chunked (fused, one block of positions
at a time), cross_tokenizer (teacher and student with different vocabularies), ensemble (several
teachers' weighted average), sparse (top-k teacher targets, tail rules), schedule (alpha/T), hidden (hidden-state
and attention-map losses).

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

# The definitions live in one module per concern; this module is the public API (__all__).
from distill.losses.chunked import chunked_distill_objective
from distill.losses.core import (
    KINDS, ce_per_token, check_kind, combine, cross_entropy, distill_objective, divergence,
    divergence_per_token, logits_from_hidden, masked_mean, masked_sum_and_count,
    per_token_from_logprobs, safe_div, softcap, t2, upcast)
from distill.losses.cross_tokenizer import (
    cross_tokenizer_objective, cross_tokenizer_per_token, group_logits, uld_per_token)
from distill.losses.ensemble import check_weights, ensemble_logprobs
from distill.losses.hidden import HIDDEN_KINDS, attention_map_loss, hidden_state_loss
from distill.losses.schedule import SCHEDULES, schedule
from distill.losses.sparse import (
    TAIL_FLOOR, TAIL_RULES, grouped_top_k, sparse_distill_objective, sparse_divergence,
    topk_targets)

__all__ = [
    # core: dense divergences and CE
    "KINDS", "cross_entropy", "distill_objective", "divergence", "divergence_per_token",
    "logits_from_hidden", "softcap",
    # core: the shared building blocks the other loss modules use
    "ce_per_token", "check_kind", "combine", "masked_mean", "masked_sum_and_count",
    "per_token_from_logprobs", "safe_div", "t2", "upcast",
    # chunked, hidden, schedule, sparse
    "chunked_distill_objective",
    "cross_tokenizer_objective", "cross_tokenizer_per_token", "group_logits", "uld_per_token",
    "check_weights", "ensemble_logprobs",
    "HIDDEN_KINDS", "attention_map_loss", "hidden_state_loss",
    "SCHEDULES", "schedule",
    "TAIL_FLOOR", "TAIL_RULES", "grouped_top_k", "sparse_distill_objective",
    "sparse_divergence", "topk_targets",
]
