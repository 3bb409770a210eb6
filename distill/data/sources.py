"""Where documents come from: text-file globs and TFDS datasets (the embedded corpus included)."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import sys
import time
from typing import Any, Sequence

from distill.data import tokenizer as tok_lib
from distill.data.spec import DataSpec
from distill.data.splits import split_for_key

TEXT_PREFIX = "text:"
PYDOC = "pydoc_topics"


def tokenizer_for(tokenizer: Any, spec: DataSpec) -> tok_lib.Tokenizer:
  """The tokenizer given, else the spec's (a name or path)."""
  return tok_lib.from_config(spec.tokenizer if tokenizer is None else tokenizer)


def text_files(name: str) -> list[str]:
  pattern = os.path.expanduser(name[len(TEXT_PREFIX):])
  files = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
  if not files:
    raise ValueError(f"data.name={name!r}: the glob matched no files; give a glob of "
                     "UTF-8 text files, e.g. 'text:/path/*.txt'")
  return files


def text_files_digest(files: Sequence[str]) -> str:
  # Size and mtime stand in for content so a changed file invalidates the cache cheaply.
  h = hashlib.md5()
  for path in files:
    st = os.stat(path)
    h.update(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
  return h.hexdigest()


def text_documents(name: str, split: str) -> list[str]:
  if split not in ("train", "validation"):
    raise ValueError(f"data.name={name!r} has splits 'train' and 'validation', not {split!r}")
  docs = []
  for path in text_files(name):
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
  # Lazy: the builder module imports tensorflow_datasets, which batching never needs.
  from distill.data import pydoc_topics  # noqa: PLC0415  pylint: disable=unused-import
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


def tfds_documents(name: str, split: str, data_dir: str, max_documents: int | None):
  builder = _builder(name, data_dir)
  _prepare(builder)
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


def _prepare(builder) -> None:
  """`builder.download_and_prepare()` with one line of ours instead of TFDS's two banners.

  TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
  on stdout for every build; the console keeps one line per stage, on stderr with the
  training progress.
  """
  t0 = time.time()
  banner = io.StringIO()
  with contextlib.redirect_stdout(banner):
    builder.download_and_prepare()
  if not banner.getvalue():  # already prepared: TFDS said nothing, neither do we
    return
  print(f"[data] built {builder.name} in {builder.data_dir} ({time.time() - t0:.0f} s)",
        file=sys.stderr, flush=True)
