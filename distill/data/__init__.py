"""Text corpus -> packed token stream (cached .npy) -> deterministic, resumable batches.

Sources (`data_cfg.name`):
  * "pydoc_topics": the embedded corpus (`distill/datasets/pydoc_topics.py`).
  * any registered TFDS name ("lm1b", "c4/en:3.1.0", ...) with a text feature.
  * "text:<glob>": the user's own UTF-8 files, one document per file. A file belongs to
    validation when `split_for_key(basename)` says so (md5 of the name mod 10 == 0), the
    same rule the pydoc builder applies to topic keys.

Packing: each document of a split is tokenized (BOS first when `data_cfg.add_bos`), followed
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

Config fields (all read with defaults, so a minimal ConfigDict works): name, data_dir
('' = <workdir>/data), seq_len, tokenizer ("byte" or a tokenizer path), transfer_fraction,
and optionally add_bos (False) and max_documents (None = all; caps huge TFDS corpora).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
from typing import Any, Sequence

import grain
import numpy as np

from distill import datasets, tokenizers as tok_lib

TEXT_PREFIX = "text:"
PYDOC = "pydoc_topics"
VALIDATION_MODULUS = 10
# Fixed so the transfer set (fraction < 1) is the same whatever the training seed.
_TRANSFER_PERMUTATION_SEED = 20240501
_CACHE_VERSION = 1


def split_for_key(key: str) -> str:
  """'validation' when md5(key) mod 10 == 0 else 'train'; `hash()` is salted per process."""
  digest = int(hashlib.md5(key.encode("utf-8")).hexdigest(), 16)
  return "validation" if digest % VALIDATION_MODULUS == 0 else "train"


# ---------------------------------------------------------------------------- config


def _cfg(data_cfg: Any, field: str, default: Any) -> Any:
  value = getattr(data_cfg, field, default)
  return default if value is None else value


def _data_dir(data_cfg: Any, workdir: str) -> str:
  return _cfg(data_cfg, "data_dir", "") or os.path.join(workdir, "data")


def _name(data_cfg: Any) -> str:
  name = _cfg(data_cfg, "name", PYDOC)
  if not isinstance(name, str) or not name.strip():
    raise ValueError(f"data.name must be a non-empty string, got {name!r}")
  return name.strip()


def _tokenizer(tokenizer: Any, data_cfg: Any) -> tok_lib.Tokenizer:
  if tokenizer is None:
    tokenizer = _cfg(data_cfg, "tokenizer", "byte")
  return tok_lib.from_config(tokenizer)


# ---------------------------------------------------------------------------- sources


def _text_files(name: str) -> list[str]:
  pattern = os.path.expanduser(name[len(TEXT_PREFIX):])
  files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not files:
    raise ValueError(f"data.name={name!r}: the glob matched no files; give a glob of "
                     "UTF-8 text files, e.g. 'text:/path/*.txt'")
  return files


def _text_files_digest(files: Sequence[str]) -> str:
  # Size and mtime stand in for content so a changed file invalidates the cache cheaply.
  h = hashlib.md5()
  for path in files:
    st = os.stat(path)
    h.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()


def _text_documents(name: str, split: str) -> list[str]:
  if split not in ("train", "validation"):
    raise ValueError(f"data.name={name!r} has splits 'train' and 'validation', not {split!r}")
  docs = []
  for path in _text_files(name):
    if split_for_key(os.path.basename(path)) == split:
      with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
      # Stray bad bytes are replaced, but NUL bytes mean a binary or compressed file that would
      # silently train the model on garbage.
      if "\0" in text:
        raise ValueError(f"data file {path} is not text (it holds NUL bytes: binary or "
                         "compressed?); remove it from the data.name glob or convert it to UTF-8")
      docs.append(text)
  return docs


def _tfds():
  # Importing our builder registers it (and the shim tfds needs). TensorFlow itself loads
  # only if a reader needs it (tfrecord datasets); array_record does not.
  from distill.datasets import pydoc_topics  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()  # our own progress lines are the console's
  return tfds


def _builder(name: str, data_dir: str):
  tfds = _tfds()
  kwargs = {"file_format": "array_record"} if name.split(":")[0] == PYDOC else {}
  try:
    return tfds.builder(name, data_dir=data_dir, **kwargs)
  except ValueError as e:  # DatasetNotFoundError and malformed names are ValueErrors.
    raise ValueError(
        f"unknown TFDS dataset {name!r}: use {PYDOC!r}, a registered TFDS name, or text "
        "files via data.name='text:/path/*.txt'") from e


def _resolve_split(builder, name: str, split: str) -> str:
  splits = list(builder.info.splits.keys())
  if split in splits or not splits:
    return split
  # Many corpora (lm1b, ...) ship 'test' but no 'validation'.
  if split == "validation" and "test" in splits:
    return "test"
  raise ValueError(f"dataset {name!r} has no split {split!r}; available: {sorted(splits)}")


def _text_feature(builder, name: str) -> str:
  features = builder.info.features
  if "text" in features:
    return "text"
  tfds = _tfds()
  for key, feature in features.items():
    if isinstance(feature, tfds.features.Text):
      return key
  raise ValueError(f"dataset {name!r} has no text feature (features: {list(features)})")


def _tfds_documents(name: str, split: str, data_dir: str, max_documents: int | None):
  builder = _builder(name, data_dir)
  datasets.prepare(builder)
  split = _resolve_split(builder, name, split)
  field = _text_feature(builder, name)
  tfds = _tfds()
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    ds = builder.as_data_source(split)  # tf.data cannot read array_record.
  else:
    ds = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  for i, example in enumerate(ds):
    if max_documents is not None and i >= max_documents:
      break
    value = example[field]
    yield value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------- packing


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


# ---------------------------------------------------------------------------- windows


class _Windows:
  """Row `i` of the stream cut into windows of seq_len + 1 tokens, as a batch element."""

  def __init__(self, stream: np.ndarray, seq_len: int, pad_id: int, what: str):
    if seq_len < 1:
      raise ValueError(f"data.seq_len must be >= 1, got {seq_len}")
    self.stream, self.seq_len, self.pad_id = stream, seq_len, pad_id
    width = seq_len + 1
    n = stream.size
    if n < width:
      raise ValueError(f"{what} has {n} tokens, fewer than seq_len + 1 = {width}; lower "
                       "data.seq_len or add data")
    # A tail with a single token has no target, so it makes no window.
    self.num_windows = n // width + (1 if n % width >= 2 else 0)

  def rows(self, ids: Sequence[int]) -> dict[str, np.ndarray]:
    width = self.seq_len + 1
    win = np.full((len(ids), width), self.pad_id, np.int32)
    real = np.zeros((len(ids), width), bool)
    for r, i in enumerate(ids):
      if i < 0:  # Padding row of a short final eval batch.
        continue
      chunk = self.stream[i * width:(i + 1) * width]
      win[r, :chunk.size] = chunk
      real[r, :chunk.size] = True
    return {"inputs": win[:, :-1], "targets": win[:, 1:],
            "mask": real[:, 1:].astype(np.float32)}

  def rows_with_ids(self, ids: Sequence[int]) -> dict[str, np.ndarray]:
    # The window id keys per-window side data such as an offline teacher cache.
    return dict(self.rows(ids), window=np.asarray(ids, np.int32))


def pad_id(tokenizer: tok_lib.Tokenizer) -> int:
  """The id written into padded positions (public: samplers pad with it too)."""
  return _pad_id(tokenizer)


def _pad_id(tokenizer: tok_lib.Tokenizer) -> int:
  # Padded positions carry mask 0, so any id works; 0 keeps them in range.
  if tokenizer.pad_id is not None:
    return tokenizer.pad_id
  return tokenizer.eos_id if tokenizer.eos_id is not None else 0


def _windows(data_cfg, tokenizer, workdir, split) -> _Windows:
  tokenizer = _tokenizer(tokenizer, data_cfg)
  stream = token_stream(data_cfg, tokenizer, workdir, split)
  pad = _pad_id(tokenizer)
  seq_len = int(_cfg(data_cfg, "seq_len", 128))
  return _Windows(stream, seq_len, pad, f"split {split!r} of data.name={_name(data_cfg)!r}")


def local_batch(batch_size: int, process_index: int, process_count: int) -> int:
  return _local_batch(batch_size, process_index, process_count)


def _local_batch(batch_size: int, process_index: int, process_count: int) -> int:
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"global batch_size={batch_size} must be a positive multiple of the "
                     f"process count {process_count}")
  return batch_size // process_count


def transfer_window_ids(num_windows: int, fraction: float) -> np.ndarray:
  """The first `fraction` of a fixed permutation of the windows, in ascending order."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"data transfer fraction must be in (0, 1], got {fraction}")
  keep = max(1, int(round(num_windows * fraction)))
  perm = np.random.default_rng(_TRANSFER_PERMUTATION_SEED).permutation(num_windows)
  return np.sort(perm[:keep])


def make_train_iterator(data_cfg: Any, tokenizer: Any, workdir: str, *, batch_size: int,
                        seed: int, fraction: float | None = None, process_index: int = 0,
                        process_count: int = 1,
                        with_window_ids: bool = False) -> grain.DatasetIterator:
  """Endless, checkpointable iterator of this process's rows of each global batch.

  Yields {"inputs": int32 [b, T], "targets": int32 [b, T], "mask": float32 [b, T]},
  b = batch_size // process_count. `fraction=None` reads `data_cfg.transfer_fraction`
  (1.0 if unset). `get_state()` is a JSON-able dict; `set_state` resumes exactly.
  """
  local = _local_batch(batch_size, process_index, process_count)
  if fraction is None:
    fraction = float(_cfg(data_cfg, "transfer_fraction", 1.0))
  windows = _windows(data_cfg, tokenizer, workdir, "train")
  ids = transfer_window_ids(windows.num_windows, fraction).tolist()
  lo = process_index * local

  rows = windows.rows_with_ids if with_window_ids else windows.rows
  return batched(ids, rows, batch_size, seed, lo, local)


def batched(ids, rows, batch_size: int, seed: int, lo: int, local: int) -> grain.DatasetIterator:
  """ids -> shuffle(seed) -> repeat -> global batches -> this process's rows via `rows`."""

  def gather(global_ids: np.ndarray) -> dict[str, np.ndarray]:
    return rows(global_ids[lo:lo + local].tolist())

  ds = (grain.MapDataset.source(ids)
        .shuffle(seed=int(seed) % 2**32)
        .repeat(None)
        .batch(batch_size, drop_remainder=True)  # Endless; avoids a length overflow.
        .map(gather))
  # A small buffer: rows are cheap to gather, and memory should not scale with batch x 500.
  options = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
  return iter(ds.to_iter_dataset(options))


def train_windows(data_cfg: Any, tokenizer: Any, workdir: str, fraction: float) -> tuple:
  """(window ids of the transfer set, a `rows_with_ids(ids)` function) for offline passes."""
  windows = _windows(data_cfg, tokenizer, workdir, "train")
  return transfer_window_ids(windows.num_windows, fraction), windows.rows_with_ids


def eval_batches(data_cfg: Any, tokenizer: Any, workdir: str, *, split: str = "validation",
                 batch_size: int, max_batches: int | None = None, process_index: int = 0,
                 process_count: int = 1) -> list[dict[str, np.ndarray]]:
  """All windows of `split` in stream order; the last batch is padded with mask-0 rows."""
  windows = _windows(data_cfg, tokenizer, workdir, split)
  return _eval_rows(windows, batch_size, max_batches, process_index, process_count)


def _eval_rows(windows: _Windows, batch_size: int, max_batches: int | None, process_index: int,
               process_count: int) -> list[dict[str, np.ndarray]]:
  local = _local_batch(batch_size, process_index, process_count)
  n = windows.num_windows
  num = -(-n // batch_size)
  if max_batches is not None:
    num = min(num, int(max_batches))
  out = []
  for b in range(num):
    start = b * batch_size + process_index * local
    ids = [i if i < n else -1 for i in range(start, start + local)]
    out.append(windows.rows(ids))
  return out


# The project's own documentation, frozen as shipped text: a second domain (Markdown prose
# about ML tooling) no config trains on, to check a student generalises beyond its corpus.
HELDOUT_DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets",
                            "heldout_docs.md")


def heldout_texts(spec: str) -> list[str]:
  """'docs' (the shipped held-out text) or 'text:/glob/*.txt' -> list of documents."""
  files = [HELDOUT_DOCS] if spec == "docs" else _text_files(spec)
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
  stream, _ = _pack(texts, tokenizer, False)
  windows = _Windows(stream, seq_len, _pad_id(tokenizer), "the held-out eval text")
  return _eval_rows(windows, batch_size, None, process_index, process_count)
