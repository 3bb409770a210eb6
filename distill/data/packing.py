"""Documents -> one packed int32 token stream per split, cached as .npy under the data dir."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from distill.data import tokenizer as tok_lib
from distill.data.sources import (TEXT_PREFIX, text_documents, text_files, text_files_digest,
                                  tfds_documents, tokenizer_for)
from distill.data.spec import DataSpec

_CACHE_VERSION = 1


def _cache_path(spec: DataSpec, workdir: str, split: str, tokenizer: tok_lib.Tokenizer) -> str:
  name = spec.name
  key = {
      "v": _CACHE_VERSION, "name": name, "split": split, "tokenizer": tokenizer.fingerprint,
      "add_bos": bos_first(spec, tokenizer), "max_documents": spec.max_documents,
  }
  if name.startswith(TEXT_PREFIX):
    key["files"] = text_files_digest(text_files(name))
  digest = hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
  return os.path.join(spec.resolved_data_dir(workdir), "packed", slug, f"{split}-{digest}.npy")


def bos_first(spec: DataSpec, tokenizer: tok_lib.Tokenizer) -> bool:
  """Whether documents start with BOS: the spec's explicit choice, else the tokenizer's."""
  if spec.add_bos and tokenizer.bos_id is None:
    raise ValueError(f"data.add_bos=true but the tokenizer ({type(tokenizer).__name__}) has no "
                     "BOS token: set --config.data.add_bos=auto or false, or name a bos_token "
                     "in its tokenizer_config.json")
  return tokenizer.add_bos if spec.add_bos is None else bool(spec.add_bos)


def pack(docs, tokenizer: tok_lib.Tokenizer, add_bos: bool) -> tuple[np.ndarray, int]:
  """(stream, number of documents that had any text)."""
  eos = tokenizer.eos_id
  if eos is None:
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no EOS token, which packing "
                     "needs between documents")
  parts, count = [], 0
  for text in docs:
    if not text.strip():
      continue  # An empty file would only add a lone EOS.
    parts.append(np.asarray(tokenizer.encode(text, add_bos=add_bos) + [eos], np.int32))
    count += 1
  return (np.concatenate(parts) if parts else np.zeros((0,), np.int32)), count


def token_stream(spec: DataSpec, tokenizer: Any, workdir: str, split: str) -> np.ndarray:
  """The packed int32 stream of `split`, built once and then memory-mapped from .npy."""
  tokenizer = tokenizer_for(tokenizer, spec)
  path = _cache_path(spec, workdir, split, tokenizer)
  if not os.path.exists(path):
    name = spec.name
    if name.startswith(TEXT_PREFIX):
      docs = text_documents(name, split)
    else:
      docs = tfds_documents(name, split, spec.resolved_data_dir(workdir), spec.max_documents)
    stream, count = pack(docs, tokenizer, bos_first(spec, tokenizer))
    if count == 0:
      raise ValueError(f"split {split!r} of data.name={name!r} has no non-empty document; "
                       "add text (for 'text:' globs a file goes to validation when "
                       "md5(file name) % 10 == 0)")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
      np.save(f, stream)
    # Atomic, so processes sharing a filesystem never read a half-written stream.
    os.replace(tmp, path)
    with open(path[:-len(".npy")] + ".json", "w") as f:
      json.dump({"name": name, "split": split, "documents": count, "tokens": int(stream.size),
                 "tokenizer": tokenizer.descriptor()}, f, indent=2)
  return np.load(path, mmap_mode="r")
