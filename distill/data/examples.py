"""Table rows -> one example per row, right-padded to seq_len + 1 tokens, with its loss mask.

An example is never packed with another: each is its own row, padded after its end, so under
causal attention no position attends across examples and a row's logits are those of the
example alone. A row is `inputs = w[:-1]`, `targets = w[1:]`, `mask` = 1 where the target
is a trained token:

  text                 BOS (when `add_bos`) + text + EOS; every token trained
  prompt + completion  BOS (when `add_bos`) + prompt + completion + EOS; completion and EOS
                       trained
  conversations        the chat template's rendering, nothing added (the template writes its
                       own specials); the assistant turns' text trained (`chat.spans`)
  prompt-only          not a training row (counted; `prompts` lists them)

The pieces (prompt, completion, turns and the text between them) are tokenized apart and
concatenated, so a trained span starts on a token boundary.

Truncation: an example longer than seq_len + 1 tokens is cut to seq_len + 1 (the completion
loses its end, counted as `truncated`). A prompt that leaves no trained target inside the
window is an error naming how many rows and the first: raise data.seq_len or shorten them.

Splits: with `DataSpec.validation_name` the validation split is that table and the train
split all of `name`; a save_to_disk DatasetDict brings its own 'train' / 'validation' (else
'test'); otherwise a row is validation when `split_for_key` of its JSON says so (the md5 rule
of text files and the embedded corpus). Rows are cached as .npy (tokens [N, T+1] int32,
trained [N, T+1] uint8) under `<data_dir>/examples/`, keyed by the table's files, the
tokenizer (its chat template included), the split rule and seq_len.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any

import numpy as np

from distill.data import chat
from distill.data import tables
from distill.data import tokenizer as tok_lib
from distill.data.packing import bos_first
from distill.data.sources import text_files_digest
from distill.data.spec import DataSpec
from distill.data.splits import split_for_key
from distill.data.windows import RowSource, pad_id

_CACHE_VERSION = 1
_SPLIT_ALIASES = {"validation": ("validation", "test")}


def split_records(spec: DataSpec, split: str, cache_dir: str) -> tuple[list, str]:
  """(the split's Records, what they are called in messages)."""
  if split not in ("train", "validation"):
    raise ValueError(f"data.name={spec.name!r} has splits 'train' and 'validation', not "
                     f"{split!r}")
  name = spec.validation_name if (spec.validation_name and split == "validation") else spec.name
  what = f"split {split!r} of data.name={name!r}"
  loaded = tables.read(name, cache_dir)
  by_rule = not spec.validation_name and set(loaded) == {"train"}
  if spec.validation_name or by_rule:
    ds = loaded["train"]
  else:
    found = next((s for s in _SPLIT_ALIASES.get(split, (split,)) if s in loaded), None)
    if found is None:
      raise ValueError(f"data.name={name!r} has splits {sorted(loaded)} but no {split!r}; "
                       "save one, or give --config.data.validation_name")
    ds = loaded[found]
  form = tables.form_of(ds.column_names, spec.columns, what)
  out = []
  for i, row in enumerate(ds):
    if by_rule and split_for_key(json.dumps(row, sort_keys=True, default=str)) != split:
      continue
    out.append(tables.record(row, i, form, spec.columns, what))
    if spec.max_documents is not None and len(out) >= spec.max_documents:
      break
  if not out:
    raise ValueError(f"{what} has no rows; add rows or give the validation split as a file "
                     "(--config.data.validation_name=json:/path/dev.jsonl); without one a row "
                     "goes to validation when md5(its JSON) % 10 == 0")
  return out, what


def _template(tok, what: str) -> None:
  if chat.template_of(tok) is None:
    raise ValueError(f"{what} holds conversations but the tokenizer ({type(tok).__name__}) has "
                     "no chat template; use a tokenizer whose tokenizer_config.json has a "
                     "chat_template (an instruct teacher's: --config.data.tokenizer=''), or give "
                     "the rows as plain-string prompt/completion")


def segments(rec: tables.Record, tok, add_bos: bool) -> tuple[list[tuple[str, bool]], bool, bool]:
  """(text pieces with whether each is trained, BOS first, EOS last (trained))."""
  if rec.messages is not None:
    full, spans = chat.spans(tok, rec.messages, rec.first_trained)
    pieces, at = [], 0
    for start, end in spans:
      pieces += [(full[at:start], False), (full[start:end], True)]
      at = end
    return pieces + [(full[at:], False)], False, False
  if rec.text is not None:
    return [(rec.text, True)], add_bos, True
  return [(rec.prompt, False), (rec.completion or "", True)], add_bos, rec.completion is not None


def encode(rec: tables.Record, tok, add_bos: bool) -> tuple[np.ndarray, np.ndarray]:
  """(token ids, whether each token is trained) of one record, before truncation."""
  pieces, bos, eos = segments(rec, tok, add_bos)
  ids, trained = ([tok.bos_id], [False]) if bos else ([], [])
  for text, on in pieces:
    if text:
      part = tok.encode(text)
      ids += part
      trained += [on] * len(part)
  if eos:
    ids.append(tok.eos_id)
    trained.append(True)
  return np.asarray(ids, np.int32), np.asarray(trained, bool)


class ExampleRows(RowSource):
  """Rows of one split's examples (the `Windows` interface: `num_windows`, `rows`)."""

  def __init__(self, tokens: np.ndarray, trained: np.ndarray, pad: int):
    self.tokens, self.trained, self.pad_id = tokens, trained, pad
    self.num_windows, width = tokens.shape
    self.seq_len = width - 1

  def rows(self, ids) -> dict[str, np.ndarray]:
    ids = np.asarray(list(ids), np.int64)
    real = ids >= 0  # -1: a padding row of a short final eval batch
    tokens = np.full((ids.size, self.seq_len + 1), self.pad_id, np.int32)
    trained = np.zeros((ids.size, self.seq_len + 1), np.float32)
    tokens[real] = self.tokens[ids[real]]
    trained[real] = self.trained[ids[real]]
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": trained[:, 1:]}


def build(records, tok, *, seq_len: int, add_bos: bool, what: str
          ) -> tuple[np.ndarray, np.ndarray, dict]:
  """(tokens [N, T+1], trained [N, T+1], counts) of the records that train something."""
  if any(r.messages is not None for r in records):
    _template(tok, what)
  if tok.eos_id is None and any(r.messages is None for r in records):
    raise ValueError(f"tokenizer {type(tok).__name__} has no EOS token, which ends every "
                     f"example of {what}")
  width, pad = seq_len + 1, pad_id(tok)
  keep = [r for r in records if not r.prompt_only]
  if not keep:
    raise ValueError(f"{what} has only prompt-only rows ({len(records)}): training and the "
                     "evaluation CE need completions; give prompt + completion or messages rows")
  tokens = np.full((len(keep), width), pad, np.int32)
  trained = np.zeros((len(keep), width), np.uint8)
  truncated, too_long = 0, []
  for r, rec in enumerate(keep):
    ids, on = encode(rec, tok, add_bos)
    if not on[1:width].any():
      too_long.append((rec.index, int(np.argmax(on)) if on.any() else ids.size))
      continue
    truncated += ids.size > width
    tokens[r, :min(ids.size, width)] = ids[:width]
    trained[r, :min(ids.size, width)] = on[:width]
  if too_long:
    index, n = too_long[0]
    raise ValueError(f"{len(too_long)} row(s) of {what} have a prompt that fills the context "
                     f"(row {index}: {n} tokens before its completion, data.seq_len={seq_len}); "
                     "raise --config.data.seq_len or shorten or drop those prompts")
  return tokens, trained, {"rows": len(keep), "prompt_only": len(records) - len(keep),
                           "truncated": int(truncated),
                           "trained_tokens": int(trained[:, 1:].sum())}


def _cache_key(spec: DataSpec, tok, split: str, add_bos: bool) -> str:
  names = [spec.name] + ([spec.validation_name] if spec.validation_name else [])
  key = {"v": _CACHE_VERSION, "names": names, "split": split, "tokenizer": tok.fingerprint,
         "template": hashlib.md5((chat.template_of(tok) or "").encode()).hexdigest(),
         "add_bos": add_bos, "seq_len": spec.seq_len, "columns": list(spec.columns),
         "max_documents": spec.max_documents,
         "files": [text_files_digest(tables.table_files(n)) for n in names]}
  return hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def example_rows(spec: DataSpec, tokenizer: Any, workdir: str, split: str) -> ExampleRows:
  """The split's rows, built once and then memory-mapped from .npy."""
  tok = tok_lib.from_config(tokenizer)
  add_bos = bos_first(spec, tok)
  root = spec.resolved_data_dir(workdir)
  slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name)[:80]
  base = os.path.join(root, "examples", slug, f"{split}-{_cache_key(spec, tok, split, add_bos)}")
  if not os.path.exists(base + ".json"):
    records, what = split_records(spec, split, os.path.join(root, "hf_datasets"))
    tokens, trained, counts = build(records, tok, seq_len=spec.seq_len, add_bos=add_bos,
                                    what=what)
    os.makedirs(os.path.dirname(base), exist_ok=True)
    for suffix, array in ((".tokens.npy", tokens), (".trained.npy", trained)):
      tmp = f"{base}{suffix}.tmp{os.getpid()}"
      with open(tmp, "wb") as f:
        np.save(f, array)
      os.replace(tmp, base + suffix)  # atomic: processes sharing a disk never read half
    tmp = f"{base}.json.tmp{os.getpid()}"
    with open(tmp, "w") as f:  # written last: the cache is complete when it exists
      json.dump(dict(counts, name=spec.name, split=split, tokenizer=tok.descriptor()), f,
                indent=2)
    os.replace(tmp, base + ".json")
  return ExampleRows(np.load(base + ".tokens.npy", mmap_mode="r"),
                     np.load(base + ".trained.npy", mmap_mode="r"), pad_id(tok))


def prompt_lengths(mask):
  """[B] tokens before each row's first trained token, from a batch's mask [B, T] (numpy or
  jax): a table example's prompt length (a row without trained tokens gives 1)."""
  return (mask > 0).argmax(-1) + 1


@dataclasses.dataclass(frozen=True)
class Prompt:
  """A held-out prompt as the model sees it (`ids`, its text `rendered`) and the reference
  answer (None for prompt-only rows): the input of task metrics, on-policy and SeqKD."""
  index: int
  ids: tuple
  rendered: str
  reference: str | None


def prompts(spec: DataSpec, tokenizer: Any, workdir: str, split: str) -> list[Prompt]:
  """Every row of `split` as a Prompt: the text before its last trained turn or completion."""
  tok = tok_lib.from_config(tokenizer)
  add_bos = bos_first(spec, tok)
  records, what = split_records(spec, split, os.path.join(spec.resolved_data_dir(workdir),
                                                          "hf_datasets"))
  out = []
  for rec in records:
    if rec.messages is not None:
      _template(tok, what)
      last = max([i for i, m in enumerate(rec.messages)
                  if m["role"] == chat.ASSISTANT and i >= rec.first_trained], default=None)
      head = rec.messages if last is None else rec.messages[:last]
      text = chat.render(tok, head, add_generation_prompt=True)
      ids = tok.encode(text)
      ref = None if last is None else rec.messages[last]["content"]
    else:
      text = rec.prompt if rec.text is None else ""
      ids = tok.encode(text, add_bos=add_bos)
      ref = rec.completion if rec.text is None else rec.text
    out.append(Prompt(rec.index, tuple(ids), text, ref))
  return out
