"""Documents -> one packed int32 token stream per split, cached as .npy under the data dir."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

from distill.data import tokenizer as tok_lib
from distill.data.sources import (TEXT_PREFIX, _cfg, _data_dir, _name, _text_documents,
                                  _text_files, _text_files_digest, _tfds_documents, _tokenizer)

_CACHE_VERSION = 1


def _cache_path(data_cfg: Any, workdir: str, split: str, tokenizer: tok_lib.Tokenizer) -> str:
  name = _name(data_cfg)
  key = {
      "v": _CACHE_VERSION, "name": name, "split": split, "tokenizer": tokenizer.fingerprint,
      "add_bos": bool(_cfg(data_cfg, "add_bos", False)),
      "max_documents": _cfg(data_cfg, "max_documents", None),
  }
  if name.startswith(TEXT_PREFIX):
    key["files"] = _text_files_digest(_text_files(name))
  digest = hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
  return os.path.join(_data_dir(data_cfg, workdir), "packed", slug, f"{split}-{digest}.npy")


def _pack(docs, tokenizer: tok_lib.Tokenizer, add_bos: bool) -> tuple[np.ndarray, int]:
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


def token_stream(data_cfg: Any, tokenizer: Any, workdir: str, split: str) -> np.ndarray:
  """The packed int32 stream of `split`, built once and then memory-mapped from .npy."""
  tokenizer = _tokenizer(tokenizer, data_cfg)
  path = _cache_path(data_cfg, workdir, split, tokenizer)
  if not os.path.exists(path):
    name = _name(data_cfg)
    if name.startswith(TEXT_PREFIX):
      docs = _text_documents(name, split)
    else:
      max_docs = _cfg(data_cfg, "max_documents", None)
      docs = _tfds_documents(name, split, _data_dir(data_cfg, workdir), max_docs)
    stream, count = _pack(docs, tokenizer, bool(_cfg(data_cfg, "add_bos", False)))
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


def prepare(data_cfg: Any, workdir: str, tokenizer: Any = None) -> None:
  """Builds the TFDS dataset (if needed) and the packed train/validation streams.

  When both streams are cached already, this touches neither TFDS nor TensorFlow.
  """
  tokenizer = _tokenizer(tokenizer, data_cfg)
  for split in ("train", "validation"):
    token_stream(data_cfg, tokenizer, workdir, split)
