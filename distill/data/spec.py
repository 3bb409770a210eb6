"""`DataSpec`: what the data functions read, built from the run config's `data` section by
`distill.run.settings` (which checks every field); nothing in `distill.data` reads a config."""
from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Where documents come from and how they become token windows.

  name: 'pydoc_topics' (the embedded corpus), a TFDS name, 'text:<glob>', or a table of
    examples: 'json:<glob>', 'parquet:<glob>', 'hf_disk:<dir>' (distill/data/tables.py).
  data_dir: TFDS files and packed streams; '' = <workdir>/data.
  tokenizer: 'byte', a tokenizer path, or '' = the teacher's (then the caller passes it).
  seq_len: tokens per training window (a window holds seq_len + 1).
  add_bos: a BOS before every document when packing; None = the tokenizer's own convention
    (`Tokenizer.add_bos`, which is what the run layer sets from config.data.add_bos).
  max_documents: read at most this many documents per split (None = all).
  dev_fraction: share of the train split's windows held out as the dev split (0 = none):
    no training stage sees them (`windows.dev_window_ids`).
  columns: for tables, ((form field, the table's column), ...) for fields named otherwise
    (form fields: messages, prompt, completion, text); () = every field its own name.
  validation_name: for tables, the validation split as another table ('' = the md5 rule, or
    a save_to_disk DatasetDict's own split).
  """
  name: str
  data_dir: str
  tokenizer: str
  seq_len: int
  add_bos: bool | None
  max_documents: int | None
  dev_fraction: float
  columns: tuple
  validation_name: str

  def resolved_data_dir(self, workdir: str) -> str:
    return self.data_dir or os.path.join(workdir, "data")
