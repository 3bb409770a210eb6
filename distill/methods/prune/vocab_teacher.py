"""A trimmed-vocabulary student inside the pipeline (`--config.student.vocab=K`).

Everything downstream of the trim speaks the student's ids: the data are tokenized with the
trimmed tokenizer (`vocab.trim`), and the teacher is seen through `TrimmedTeacher`, which reads
those tokens by their teacher ids (`kept[ids]`) and returns its log-probabilities over the
full teacher vocabulary, gathered at the kept ids. The probability the teacher puts on dropped
ids is therefore *missing* from the returned rows (they sum to <= 1): a top-k target taken
from them (`normalized=True`) leaves that mass in the tail bucket, which is the issue's rule
for dropped ids, and the teacher's cross-entropy of a label is exactly -log p_teacher(label).

Teacher, student and baseline are then scored on one token stream (the student's), so the
gap closed compares like with like. The teacher keeps its own tokenizer for its samples.

Shape letters: B batch, T length, V teacher vocab, U student vocab (padded).
"""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from distill import data
from distill.data import tokenizer as tokenizers
from distill.models.transformer import LM
from distill.methods.prune import vocab as vocab_lib

# Log-probability of the student's padding rows: no text maps to them, exp() of it is 0 in
# fp32, and it stays finite so 0 * log 0 never turns into NaN in a divergence.
PAD_LOGPROB = -1e4


class TrimmedTeacher:
  """The teacher as a model of the student's vocabulary: `apply(params, ids [B, T])` ->
  log-probs [B, T, U] normalized over the teacher's full vocabulary (`normalized = True`).
  Parameters, shardings and hidden states are the wrapped teacher's."""

  normalized = True

  def __init__(self, lm: LM, trim: vocab_lib.Trim):
    self.lm, self.trim = lm, trim
    self.cfg = lm.cfg.replace(vocab_size=int(trim.rows.size))
    self._rows = np.asarray(trim.rows, np.int32)
    self._pad = np.arange(trim.rows.size) >= trim.kept.size
    self._key = (lm, self._rows.tobytes())

  def __eq__(self, other):
    return isinstance(other, TrimmedTeacher) and other._key == self._key

  def __hash__(self):
    return hash(self._key)

  def abstract_params(self):
    return self.lm.abstract_params()

  def logical_axes(self):
    return self.lm.logical_axes()

  def teacher_ids(self, ids):
    # Padding ids (>= kept) never occur in text; map them to some row so the gather is defined.
    return jnp.asarray(self._rows)[ids]

  def hidden(self, params, ids, positions=None):
    """The teacher's final hidden states [B, T, D] of the student-id sequence `ids`."""
    return self.lm.hidden(params, self.teacher_ids(ids), positions)

  def logits_from_hidden(self, params, h):
    """Log-probs [B, T, U], normalized over the full teacher vocabulary (see the class)."""
    logits = self.lm.logits_from_hidden(params, h).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)  # over V: dropped ids keep their share
    out = jnp.take(logp, jnp.asarray(self._rows), axis=-1)  # [B, T, U]
    return jnp.where(jnp.asarray(self._pad), PAD_LOGPROB, out)

  def apply(self, params, ids, positions=None):
    return self.logits_from_hidden(params, self.hidden(params, ids, positions))


def make_trim(teacher: LM, tokenizer, data_cfg, workdir: str, k: int,
              fraction: float) -> vocab_lib.Trim:
  """Count the transfer set's ids (teacher tokenization) and trim to `k` tokens; the trimmed
  tokenizer is written to `<workdir>/trimmed_tokenizer` (deterministic: a resumed run gets the
  same ids)."""
  tokenizers.check_fits(tokenizer, teacher.cfg.vocab_size, "the teacher")
  vocab_lib.check_k(tokenizer, k)
  ids, rows = data.train_windows(data_cfg, tokenizer, workdir, fraction)
  counts = vocab_lib.count_ids(ids, rows, teacher.cfg.vocab_size)
  t = vocab_lib.trim(tokenizer, counts, k, workdir, model_vocab=teacher.cfg.vocab_size)
  covered = counts[t.kept].sum() / max(counts.sum(), 1)
  logging.info("[vocab] kept %d of %d ids (%d rows with padding): %.2f%% of the transfer set's "
               "tokens", t.kept.size, teacher.cfg.vocab_size, t.rows.size, 100 * covered)
  return t
