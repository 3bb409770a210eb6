"""A teacher ensemble as one teacher (`config.teachers`): the weighted mixture of its members.

`EnsembleTeacher` stands wherever the pipeline takes a teacher model: the online distillation
loss, the teacher cache, evaluation (KL to the teacher, top-1 agreement) and the teacher-scored
sample metrics. Its params are the tuple of its members' params, its `apply` returns the
log-probabilities of P_ens = sum_i w_i softmax(z_i) / sum_i w_i (`losses.ensemble_logprobs`,
at T = 1), marked `normalized` as the trimmed-vocabulary teacher's rows are. The distillation
temperature then applies to log P_ens as to any teacher's logits: the target at T is
softmax(log P_ens / T), the tempered mixture, which is also what a top-k cache of P_ens gives
(the cache stores T = 1 log-probs), so online and cached targets agree. With T = 1 that is the
plain average of the members' probabilities.

All members share one vocabulary (the pipeline refuses others, one line). An ensemble of one
teacher never reaches this class: the pipeline uses that teacher as it is, so it trains exactly
as the ordinary single-teacher run.
"""
from __future__ import annotations

from distill import losses
from distill.errors import ConfigError

# How caches name an ensemble teacher (`distill.run.settings.teacher_source`): a cache written
# for one ensemble (or for a single teacher) is refused by a run of another.
SOURCE_PREFIX = "ensemble:"


class EnsembleTeacher:
  """Members (LMs of one vocabulary) and their weights, as one read-only teacher model."""

  normalized = True

  def __init__(self, members, weights, names=None):
    self.members = tuple(members)
    self.weights = losses.check_weights(weights)
    self.names = tuple(names or (f"teacher_{i}" for i in range(len(self.members))))
    if len(self.weights) != len(self.members) or len(self.members) < 2:
      raise ValueError(f"an ensemble needs >= 2 members and one weight each; got "
                       f"{len(self.members)} members, {len(self.weights)} weights")
    vocabs = {m.cfg.vocab_size for m in self.members}
    if len(vocabs) != 1:
      raise ConfigError(f"config.teachers: the teachers' vocabularies differ "
                        f"({', '.join(f'{n}: {m.cfg.vocab_size}' for n, m in zip(self.names, self.members))}); "
                        "an ensemble needs one vocabulary: use teachers of one tokenizer")
    # Shape fields the pipeline reads off a teacher (vocab, context, dtype): the first
    # member's, with the shortest context of all.
    self.cfg = self.members[0].cfg.replace(max_len=min(m.cfg.max_len for m in self.members))
    self._key = (self.members, self.weights)

  def __eq__(self, other):
    return isinstance(other, EnsembleTeacher) and other._key == self._key

  def __hash__(self):
    return hash(self._key)

  def abstract_params(self):
    return tuple(m.abstract_params() for m in self.members)

  def logical_axes(self):
    return tuple(m.logical_axes() for m in self.members)

  def hidden(self, params, ids, positions=None):
    """Each member's final hidden states (a tuple, one [B, T, D_i] per member)."""
    return tuple(m.hidden(p, ids, positions) for m, p in zip(self.members, params))

  def member_logits(self, params, hidden):
    return [m.logits_from_hidden(p, h) for m, p, h in zip(self.members, params, hidden)]

  def logits_from_hidden(self, params, hidden):
    """log P_ens [B, T, V] (normalized: see the module docstring)."""
    return losses.ensemble_logprobs(self.member_logits(params, hidden), self.weights)

  def apply(self, params, ids, positions=None):
    return self.logits_from_hidden(params, self.hidden(params, ids, positions))


def is_ensemble(view) -> bool:
  return isinstance(view, EnsembleTeacher)
