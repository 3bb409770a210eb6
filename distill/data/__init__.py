"""Text corpus -> packed token stream (cached .npy) -> deterministic, resumable batches.

Sources (`DataSpec.name`):
  * "pydoc_topics": the embedded corpus (`distill/data/pydoc_topics.py`).
  * any registered TFDS name ("lm1b", "c4/en:3.1.0", ...) with a text feature.
  * "text:<glob>": the user's own UTF-8 files, one document per file. A file belongs to
    validation when `split_for_key(basename)` says so (md5 of the name mod 10 == 0), the
    same rule the pydoc builder applies to topic keys.
  * "json:<glob>", "parquet:<glob>", "hf_disk:<dir>": tables of examples read with the
    `datasets` library (distill/data/tables.py: the row forms text, prompt + completion,
    messages, prompt-only); one example per row, never packed, with a loss mask on the
    completion / assistant turns only (distill/data/examples.py: rendering, truncation,
    splits). `prompts` lists a split's prompts and references.

Packing: each document of a split is tokenized (BOS first when `DataSpec.add_bos`), followed
by EOS, and all of them are concatenated in a fixed order (TFDS's stored order, file paths
sorted for `text:`) into one int32 stream saved as .npy under
`<data_dir>/packed/`, keyed by dataset, split, tokenizer fingerprint and options. Once that
file exists, batching reads numpy only: TensorFlow is imported lazily, and only to build.

Windows: the stream is cut into non-overlapping windows of seq_len + 1 tokens; the last,
shorter one is padded with pad ids (if it holds at least two real tokens). A row is
`inputs = w[:-1]`, `targets = w[1:]`, `mask = 1.0` where the target is a real token.

Training order: window ids -> grain `shuffle(seed)` -> `repeat(None)` (a new permutation
every epoch) -> global batches of window ids -> process `p` gathers rows
`[p * b, (p + 1) * b)` of each, so the processes' rows together are the one-process batch.
The iterator's state is grain's `{"next_index": n}`.

Packed windows and table rows are both a `windows.RowSource`, so everything below (the
transfer set, the dev split, eval batches, the teacher cache by row id) treats them alike.

Every function takes a `DataSpec` (distill/data/spec.py), built and checked from the run
config by `distill.run.settings`. Modules: spec, splits (the md5 split rule), sources (text
globs, TFDS), packing (the cached stream), windows (rows, batching), tokenizer, pydoc_topics
(the embedded corpus's TFDS builder), tables and examples, chat (chat templates).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import grain
import numpy as np

from distill.data import tokenizer as tok_lib
from distill.data.examples import Prompt, example_rows, prompt_lengths, prompts
from distill.data.packing import pack, token_stream
from distill.data.sources import TEXT_PREFIX, text_files, tokenizer_for
from distill.data.spec import DataSpec
from distill.data.splits import split_for_key
from distill.data.tables import is_table
from distill.data.windows import (RowSource, Windows, batched, dev_window_ids, eval_rows,
                                  local_batch, pad_id, transfer_window_ids)

__all__ = ["DataSpec", "TEXT_PREFIX", "HELDOUT_DOCS", "Prompt", "batched", "dev_batches",
           "dev_window_ids", "eval_batches", "heldout_texts", "is_table", "local_batch", "make_train_iterator", "pad_id", "prepare", "prompt_lengths", "prompts",
           "split_for_key", "text_eval_batches",
           "token_stream", "train_windows", "transfer_window_ids"]


def prepare(spec: DataSpec, workdir: str, tokenizer: Any = None) -> None:
  """Builds the TFDS dataset (if needed) and the packed train/validation streams, or a
  table's train/validation example rows.

  When both streams are cached already, this touches neither TFDS nor TensorFlow.
  """
  tokenizer = tokenizer_for(tokenizer, spec)
  for split in ("train", "validation"):
    if is_table(spec.name):
      example_rows(spec, tokenizer, workdir, split)
    else:
      token_stream(spec, tokenizer, workdir, split)


def _windows(spec: DataSpec, tokenizer, workdir, split) -> RowSource:
  tokenizer = tokenizer_for(tokenizer, spec)
  if is_table(spec.name):
    return example_rows(spec, tokenizer, workdir, split)
  stream = token_stream(spec, tokenizer, workdir, split)
  return Windows(stream, spec.seq_len, pad_id(tokenizer),
                 f"split {split!r} of data.name={spec.name!r}")


def make_train_iterator(spec: DataSpec, tokenizer: Any, workdir: str, *, batch_size: int,
                        seed: int, fraction: float = 1.0, process_index: int = 0,
                        process_count: int = 1,
                        with_window_ids: bool = False) -> grain.DatasetIterator:
  """Endless, checkpointable iterator of this process's rows of each global batch.

  Yields {"inputs": int32 [b, T], "targets": int32 [b, T], "mask": float32 [b, T]},
  b = batch_size // process_count, over the first `fraction` of the train windows (the
  transfer set; never the dev split). `get_state()` is a JSON-able dict; `set_state` resumes
  exactly.
  """
  local = local_batch(batch_size, process_index, process_count)
  windows = _windows(spec, tokenizer, workdir, "train")
  ids = transfer_window_ids(windows.num_windows, fraction, spec.dev_fraction).tolist()
  lo = process_index * local
  rows = windows.rows_with_ids if with_window_ids else windows.rows
  return batched(ids, rows, batch_size, seed, lo, local)


def train_windows(spec: DataSpec, tokenizer: Any, workdir: str, fraction: float) -> tuple:
  """(window ids of the transfer set, a `rows_with_ids(ids)` function) for offline passes."""
  windows = _windows(spec, tokenizer, workdir, "train")
  return (transfer_window_ids(windows.num_windows, fraction, spec.dev_fraction),
          windows.rows_with_ids)


def dev_batches(spec: DataSpec, tokenizer: Any, workdir: str, *, batch_size: int,
                max_batches: int | None = None, process_index: int = 0,
                process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """The dev split's windows (`spec.dev_fraction` of the train split, held out of training)
  as eval batches; [] when there is no dev split."""
  if not spec.dev_fraction:
    return []
  windows = _windows(spec, tokenizer, workdir, "train")
  return eval_rows(windows, batch_size, max_batches, process_index, process_count,
                   ids=dev_window_ids(windows.num_windows, spec.dev_fraction))


def eval_batches(spec: DataSpec, tokenizer: Any, workdir: str, *, split: str = "validation",
                 batch_size: int, max_batches: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """All windows of `split` in stream order; the last batch is padded with mask-0 rows."""
  windows = _windows(spec, tokenizer, workdir, split)
  return eval_rows(windows, batch_size, max_batches, process_index, process_count)


# The project's own documentation, frozen as shipped text: a second domain (Markdown prose
# about ML tooling) no config trains on, to check a student generalises beyond its corpus.
HELDOUT_DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "heldout_docs.md")


def heldout_texts(spec: str) -> list[str]:
  """'docs' (the shipped held-out text) or 'text:/glob/*.txt' -> list of documents."""
  files = [HELDOUT_DOCS] if spec == "docs" else text_files(spec)
  out = []
  for path in files:
    with open(path, encoding="utf-8", errors="replace") as f:
      out.append(f.read())
  return out


def text_eval_batches(texts: Sequence[str], tokenizer: Any, *, seq_len: int, batch_size: int,
                      process_index: int = 0, process_count: int = 1
                      ) -> list[dict[str, np.ndarray]]:
  """Eval batches (as `eval_batches`) of the given documents, packed like a split."""
  tokenizer = tok_lib.from_config(tokenizer)
  stream, _ = pack(texts, tokenizer, False)
  windows = Windows(stream, seq_len, pad_id(tokenizer), "the held-out eval text")
  return eval_rows(windows, batch_size, None, process_index, process_count)
