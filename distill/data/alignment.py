"""Byte-offset alignment between two tokenizers reading the same text (cross-tokenizer KD).

Every token id has a *key*: the exact bytes it stands for, or, for a token that stands for no
text (BOS/EOS/PAD, control and added special tokens), a name: "<bos>", "<eos>", "<pad>" by
role, else the token's own string. `token_keys` builds that table per tokenizer:

- byte-level: id b + 3 is the byte b;
- SentencePiece: `<0xNN>` byte pieces are the byte NN, other pieces their text with "▁" as a
  space; control / unknown pieces are names;
- HF tokenizer.json: a ByteLevel decoder (GPT-2 / SmolLM2 / Qwen / Llama-3 style) maps each
  character back to its byte through the byte-to-unicode table; a Metaspace / SentencePiece-
  style decoder (Replace "▁", ByteFallback) as for SentencePiece; added tokens are names when
  special, else their text. Any other decoder cannot be aligned (one line, exit 2).

`encode_bytes` encodes a text and returns each token's byte end offset; the tokenizer must be
byte-exact (the tokens' bytes concatenate to the UTF-8 text, no normalizer rewriting it), else
one line names the problem. Positions: position p of a sequence reads tokens 0..p and predicts
token p + 1 from the byte boundary ends[p] (a BOS at p = 0 has end 0). `align` gives, for each
student position, the teacher position predicting from the same boundary (-1: none) and
whether the two next tokens have the same key (`exact`); positions sharing a boundary (around
zero-width tokens) pair from the last. `VocabMap` groups both vocabularies
by key for the loss (distill.losses.cross_tokenizer): column c is the c-th key both have.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Hashable, Sequence

import numpy as np

from distill.data import tokenizer as tokenizers
from distill.errors import ConfigError

Key = Hashable  # bytes (text) or str (a named special)
_META = "\u2581"  # SentencePiece's space


def _byte_level_table() -> dict[str, int]:
  """GPT-2's byte-to-unicode characters, inverted: character -> byte."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
               + list(range(ord("\xae"), ord("\xff") + 1)))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[chr(b)] = b
    else:
      chars[chr(256 + extra)] = b
      extra += 1
  return chars


def _metaspace_bytes(piece: str) -> bytes:
  if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
    return bytes([int(piece[3:5], 16)])
  return piece.replace(_META, " ").encode("utf-8")


def _refuse(what: str, why: str) -> ConfigError:
  return ConfigError(f"the {what} tokenizer cannot be aligned by byte offsets: {why}; give "
                     "a byte-level, SentencePiece or byte-exact tokenizer.json (ByteLevel or "
                     "Metaspace/ByteFallback decoder)")


def _hf_decoder_kind(tok: tokenizers.HFTokenizer, what: str) -> str:
  with open(tok.model_file) as f:
    dec = json.load(f).get("decoder") or {}
  kinds = [d.get("type") for d in (dec.get("decoders") or [dec])]
  if "ByteLevel" in kinds:
    return "byte_level"
  if "Metaspace" in kinds or "ByteFallback" in kinds or any(
      d.get("type") == "Replace" for d in (dec.get("decoders") or [dec])):
    return "metaspace"
  raise _refuse(what, f"its tokenizer.json decoder {kinds or None} gives no byte offsets")


def token_keys(tok: tokenizers.Tokenizer, what: str = "student") -> list[Key]:
  """The key of every id of `tok` (module doc)."""
  roles = {tok.bos_id: "<bos>", tok.eos_id: "<eos>", tok.pad_id: "<pad>"}
  roles.pop(None, None)
  if isinstance(tok, tokenizers.ByteTokenizer):
    keys: list[Key] = [bytes([i - tok.OFFSET]) if i >= tok.OFFSET else None
                       for i in range(tok.vocab_size)]
  elif isinstance(tok, tokenizers.SentencePieceTokenizer):
    sp = tok._sp  # pylint: disable=protected-access
    keys = []
    for i in range(tok.vocab_size):
      piece = sp.id_to_piece(i)
      special = sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i)
      keys.append(piece if special else _metaspace_bytes(piece))
  elif isinstance(tok, tokenizers.HFTokenizer):
    kind = _hf_decoder_kind(tok, what)
    inner = tok._tok  # pylint: disable=protected-access
    table = _byte_level_table()
    added = {i: a for i, a in inner.get_added_tokens_decoder().items()}
    keys = []
    for i in range(tok.vocab_size):
      piece = inner.id_to_token(i)
      if piece is None:
        keys.append(f"<missing {i}>")
      elif i in added:
        keys.append(piece if added[i].special else piece.encode("utf-8"))
      elif kind == "byte_level":
        if any(c not in table for c in piece):
          raise _refuse(what, f"token {i} ({piece!r}) is not byte-level text")
        keys.append(bytes(table[c] for c in piece))
      else:
        keys.append(_metaspace_bytes(piece))
  else:
    raise _refuse(what, f"{type(tok).__name__} has no token table")
  return [roles.get(i, k if k is not None else f"<special {i}>") for i, k in enumerate(keys)]


def encode_bytes(tok: tokenizers.Tokenizer, keys: Sequence[Key], text: str,
                 what: str = "student") -> tuple[np.ndarray, np.ndarray]:
  """(ids, byte end offset of each token) for `text`; one line unless byte-exact."""
  ids = np.asarray(tok.encode(text), np.int64)
  pieces = [keys[i] for i in ids]
  named = [k for k in pieces if not isinstance(k, bytes)]
  if named:
    raise ConfigError(f"the {what} tokenizer cannot spell the data byte for byte: it encodes it "
                      f"to {named[0]!r}, a token that stands for no bytes (unknown or special), "
                      "so positions cannot be aligned; use a tokenizer with byte fallback (or "
                      "'byte'), or remove special-token strings from the data")
  raw = text.encode("utf-8")
  if b"".join(pieces) != raw:
    raise ConfigError(f"the {what} tokenizer is not byte-exact on the data (its tokens spell "
                      f"{b''.join(pieces)[:40]!r}... for {raw[:40]!r}...: a normalizer rewrites "
                      "the text), so positions cannot be aligned by byte offsets; use a "
                      "tokenizer without a normalizer")
  ends = np.cumsum([len(p) for p in pieces], dtype=np.int64)
  return ids, ends


def _rank_from_last(ends: np.ndarray) -> np.ndarray:
  """For each position, how many later positions share its boundary (ends non-decreasing)."""
  last = np.searchsorted(ends, ends, side="right") - 1
  return last - np.arange(len(ends))


def align(teacher_ids, teacher_ends, student_ids, student_ends, teacher_keys, student_keys):
  """(teacher_index [n_s], exact [n_s]) for one sequence pair (module doc).

  Only positions with a next token count (the last is -1). Zero-width tokens (an EOS between
  documents) give several positions one boundary; they pair from the last: the position that
  has read the EOS with the teacher's that has, the one before it with the one before it.
  """
  t_ends = np.asarray(teacher_ends)[:-1]
  s_ends = np.asarray(student_ends)[:-1]
  index = np.full(len(student_ends), -1, np.int64)
  exact = np.zeros(len(student_ends), bool)
  if len(t_ends) == 0 or len(s_ends) == 0:
    return index, exact
  j = np.searchsorted(t_ends, s_ends, side="right") - 1 - _rank_from_last(s_ends)
  hit = (j >= 0) & (t_ends[np.maximum(j, 0)] == s_ends)
  index[:-1] = np.where(hit, j, -1)
  t_next = np.asarray(teacher_ids)[np.maximum(index[:-1], 0) + 1]
  s_next = np.asarray(student_ids)[1:]
  exact[:-1] = hit & np.array([teacher_keys[a] == student_keys[b]
                               for a, b in zip(t_next, s_next)], bool)
  return index, exact


@dataclasses.dataclass(frozen=True)
class VocabMap:
  """The keys both vocabularies have, as columns: teacher[c] / student[c] list the ids with key
  c (-1 pads a row). `identity` when both tokenizers are the same one: column c is id c."""
  teacher: np.ndarray  # [C, Dt] int32
  student: np.ndarray  # [C, Ds] int32
  identity: bool = False

  @property
  def size(self) -> int:
    return int(self.teacher.shape[0])

  @classmethod
  def build(cls, teacher_tok, student_tok, teacher_keys=None, student_keys=None) -> "VocabMap":
    if teacher_tok.fingerprint == student_tok.fingerprint:
      ids = np.arange(teacher_tok.vocab_size, dtype=np.int32)[:, None]
      return cls(ids, ids, identity=True)
    tk = teacher_keys or token_keys(teacher_tok, "teacher")
    sk = student_keys or token_keys(student_tok, "student")
    groups_t, groups_s = _groups(tk), _groups(sk)
    shared = [k for k in groups_s if k in groups_t]
    if not shared:
      raise ConfigError("the teacher's and the student's tokenizers share no token: nothing "
                        "can be distilled exactly; use tokenizers over the same bytes")
    return cls(_pad([groups_t[k] for k in shared]), _pad([groups_s[k] for k in shared]))


def _groups(keys: Sequence[Key]) -> dict[Key, list[int]]:
  out: dict[Key, list[int]] = {}
  for i, k in enumerate(keys):
    out.setdefault(k, []).append(i)
  return out


def _pad(rows: list[list[int]]) -> np.ndarray:
  out = np.full((len(rows), max(len(r) for r in rows)), -1, np.int32)
  for c, r in enumerate(rows):
    out[c, :len(r)] = r
  return out
