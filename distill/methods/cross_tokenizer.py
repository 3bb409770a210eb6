"""Cross-tokenizer distillation on the live teacher: the teacher's rows for a student batch.

The student trains on windows of its own tokens. For each window, `CrossPlan.rows` spells it
back as bytes (distill.data.alignment keys), cuts it at its zero-width tokens (an EOS between
documents) into text segments, trims a segment edge that falls inside a UTF-8 character (the
window was cut there), encodes each segment with the teacher's tokenizer (the zero-width token
between segments becomes the teacher's token of the same role), and aligns the two by byte
offsets. The batch gains `teacher_inputs` [B, teacher_len], `teacher_index` [B, L] (-1: no
teacher position at that boundary, or past teacher_len) and `exact` [B, L], which
`train.objectives.cross_distill_loss` reads.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from distill.data import alignment
from distill.data import tokenizer as tokenizers


def _valid_span(raw: bytes) -> tuple[int, int]:
  """(start, end) of the longest valid UTF-8 text inside `raw` after dropping at most three
  continuation bytes at its start and an incomplete character at its end."""
  start = 0
  while start < min(3, len(raw)) and 0x80 <= raw[start] < 0xC0:
    start += 1
  for end in range(len(raw), max(start, len(raw) - 4), -1):
    try:
      raw[start:end].decode("utf-8")
      return start, end
    except UnicodeDecodeError:
      continue
  return start, start


@dataclasses.dataclass(frozen=True)
class CrossPlan:
  """Both tokenizers, their key tables and the vocabulary map the loss groups ids by."""
  teacher_tok: tokenizers.Tokenizer
  student_tok: tokenizers.Tokenizer
  teacher_keys: tuple
  student_keys: tuple
  vmap: alignment.VocabMap
  teacher_len: int

  @classmethod
  def build(cls, teacher_tok, student_tok, teacher_len: int) -> "CrossPlan":
    tk = tuple(alignment.token_keys(teacher_tok, "teacher"))
    sk = tuple(alignment.token_keys(student_tok, "student"))
    vmap = alignment.VocabMap.build(teacher_tok, student_tok, list(tk), list(sk))
    return cls(teacher_tok, student_tok, tk, sk, vmap, int(teacher_len))

  def check(self, texts) -> None:
    """One line (ConfigError) unless both tokenizers encode `texts` byte-exactly."""
    for text in texts:
      alignment.encode_bytes(self.student_tok, self.student_keys, text, "student")
      alignment.encode_bytes(self.teacher_tok, self.teacher_keys, text, "teacher")

  def _teacher_id(self, key) -> int | None:
    try:
      return self.teacher_keys.index(key)
    except ValueError:
      return None

  def row(self, window: np.ndarray):
    """(teacher ids [teacher_len], teacher_index [L], exact [L]) of one window of L + 1 ids."""
    keys = [self.student_keys[int(i)] for i in window]
    s_ends = np.cumsum([len(k) if isinstance(k, bytes) else 0 for k in keys])
    t_ids, t_ends, pos, seg = [], [], 0, []
    for k in keys + [None]:
      if isinstance(k, bytes):
        seg.append(k)
        continue
      raw = b"".join(seg)
      a, b = _valid_span(raw)
      if b > a:
        ids, ends = alignment.encode_bytes(self.teacher_tok, self.teacher_keys,
                                           raw[a:b].decode("utf-8"), "teacher")
        t_ids.extend(ids.tolist())
        t_ends.extend((ends + pos + a).tolist())
      pos += len(raw)
      seg = []
      tid = None if k is None else self._teacher_id(k)
      if tid is not None:
        t_ids.append(tid)
        t_ends.append(pos if not t_ends else max(pos, t_ends[-1]))
    index, exact = alignment.align(np.asarray(t_ids, np.int64), np.asarray(t_ends, np.int64),
                                   window, s_ends, self.teacher_keys, self.student_keys)
    index, exact = index[:-1], exact[:-1]
    past = index >= self.teacher_len
    index, exact = np.where(past, -1, index), exact & ~past
    pad = self.teacher_tok.pad_id or 0
    inputs = np.full(self.teacher_len, pad, np.int32)
    n = min(len(t_ids), self.teacher_len)
    inputs[:n] = t_ids[:n]
    return inputs, index.astype(np.int32), exact

  def rows(self, batch: dict) -> dict:
    """`batch` with teacher_inputs, teacher_index, exact (module doc)."""
    windows = np.concatenate([np.asarray(batch["inputs"]),
                              np.asarray(batch["targets"])[:, -1:]], axis=1)
    out = [self.row(w) for w in windows]
    return dict(batch, teacher_inputs=np.stack([o[0] for o in out]),
                teacher_index=np.stack([o[1] for o in out]),
                exact=np.stack([o[2] for o in out]))


class CrossIterator:
  """A train iterator whose batches carry the teacher's rows (`CrossPlan.rows`); its state is
  the wrapped iterator's, so checkpoints and resumes are unchanged."""

  def __init__(self, it, plan: CrossPlan):
    self.it, self.plan = it, plan

  def __iter__(self):
    return self

  def __next__(self):
    return self.plan.rows(next(self.it))

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)

