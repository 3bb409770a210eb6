"""Rows of JSONL / Parquet files and `datasets` save_to_disk directories, as `Record`s.

  json:<glob>      JSON Lines files (or JSON files holding one array of rows)
  parquet:<glob>   Parquet files
  hf_disk:<dir>    a directory written by `datasets.Dataset.save_to_disk` (a DatasetDict's
                   'train' and 'validation' (else 'test') splits are its splits)

Read with the Hugging Face `datasets` library: Arrow tables, memory-mapped; local files only
(the JSON/Parquet builders convert once into `<data_dir>/hf_datasets`). A table's columns
name its form, the ones TRL documents (the first that fits wins):

  messages               conversational language modeling: every assistant turn is trained
  prompt + completion    prompt-completion; both strings (standard) or both lists of
                         {role, content} messages (conversational): the completion is trained
  prompt                 prompt-only (on-policy / SeqKD prompts): nothing is trained
  text                   language modeling: every token is trained

`DataSpec.columns` maps these names to a table's own. A row with an empty completion column
(null) is a prompt-only row of a prompt-completion table.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Any, Sequence

FORMATS = {"json:": "json", "parquet:": "parquet", "hf_disk:": None}
FIELDS = ("messages", "prompt", "completion", "text")


def is_table(name: str) -> bool:
  return name.startswith(tuple(FORMATS))


def _prefix(name: str) -> str:
  return next(p for p in FORMATS if name.startswith(p))


def table_files(name: str) -> list[str]:
  """The files a table name reads (every file of a save_to_disk directory)."""
  prefix = _prefix(name)
  where = os.path.expanduser(name[len(prefix):])
  if FORMATS[prefix] is None:
    files = sorted(p for p in glob.glob(os.path.join(where, "**", "*"), recursive=True)
                   if os.path.isfile(p))
    if not os.path.isfile(os.path.join(where, "dataset_info.json")) and not os.path.isfile(
        os.path.join(where, "dataset_dict.json")):
      raise ValueError(f"data.name={name!r}: {where} is not a `datasets` save_to_disk "
                       "directory (no dataset_info.json or dataset_dict.json); write it with "
                       "Dataset.save_to_disk or use 'json:' / 'parquet:' files")
    return files
  files = sorted(p for p in glob.glob(where, recursive=True) if os.path.isfile(p))
  if not files:
    raise ValueError(f"data.name={name!r}: the glob matched no files; give a glob of "
                     f"{FORMATS[prefix]} files, e.g. '{prefix}/path/*."
                     f"{'jsonl' if prefix == 'json:' else 'parquet'}'")
  return files


@dataclasses.dataclass(frozen=True)
class Record:
  """One row, in its form's fields.

  index: the row's number in its table (0-based), for messages about it.
  text: a language-modeling row. prompt/completion: a standard row (completion None:
  prompt-only). messages: a conversational row, the whole conversation; its assistant turns
  from `first_trained` on are trained (len(messages): a prompt-only conversation).
  """
  index: int
  text: str | None = None
  prompt: str | None = None
  completion: str | None = None
  messages: tuple | None = None
  first_trained: int = 0

  @property
  def prompt_only(self) -> bool:
    if self.messages is not None:
      return self.first_trained >= len(self.messages)
    return self.text is None and self.completion is None


def _quiet(datasets) -> None:
  datasets.disable_progress_bars()
  datasets.logging.set_verbosity_error()


def read(name: str, cache_dir: str) -> dict[str, Any]:
  """{split: datasets.Dataset}: 'train' only for files; a DatasetDict's own splits."""
  import datasets  # pylint: disable=import-outside-toplevel
  _quiet(datasets)
  prefix = _prefix(name)
  files = table_files(name)
  if FORMATS[prefix] is None:
    loaded = datasets.load_from_disk(os.path.expanduser(name[len(prefix):]))
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
  try:
    return {"train": datasets.load_dataset(FORMATS[prefix], data_files=files, split="train",
                                           cache_dir=cache_dir)}
  except Exception as e:  # pylint: disable=broad-except
    if prefix == "json:":
      _find_bad_json_line(files)
    raise ValueError(f"data.name={name!r}: `datasets` could not read the files "
                     f"({_first_line(e)}); check that they are valid {FORMATS[prefix]}") from e


def _first_line(e: Exception) -> str:
  text = str(e).strip() or type(e).__name__
  return text.splitlines()[0]


def _find_bad_json_line(files: Sequence[str]) -> None:
  """Raises for the first line that is not JSON (only after `datasets` failed to read)."""
  for path in files:
    with open(path, encoding="utf-8", errors="replace") as f:
      head = f.read(1).lstrip()
      f.seek(0)
      if head == "[":  # one JSON array, not JSON Lines
        continue
      for lineno, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          row = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{lineno}: not JSON ({e.msg}); each line of a JSONL file "
                           "must be one JSON object, e.g. {\"prompt\": ..., \"completion\": ...}"
                           ) from None
        if not isinstance(row, dict):
          raise ValueError(f"{path}:{lineno}: a JSON {type(row).__name__}, not an object; each "
                           "line of a JSONL file must be one JSON object") from None


def _mapping(columns: Sequence[tuple[str, str]]) -> dict[str, str]:
  out = {f: f for f in FIELDS}
  out.update({k: v for k, v in columns if v})
  return out


def form_of(column_names: Sequence[str], columns: Sequence[tuple[str, str]], what: str) -> str:
  """The table's form: 'messages', 'prompt_completion', 'prompt' or 'text'."""
  have, m = set(column_names), _mapping(columns)
  if m["messages"] in have:
    return "messages"
  if m["prompt"] in have:
    return "prompt_completion" if m["completion"] in have else "prompt"
  if m["text"] in have:
    return "text"
  raise ValueError(f"{what} has columns {sorted(have)}, none of the forms 'text', 'prompt' "
                   "(+ 'completion') or 'messages'; name yours with e.g. "
                   "--config.data.columns.prompt=question --config.data.columns.completion=answer")


def _messages(value: Any, index: int, what: str) -> tuple:
  if not isinstance(value, (list, tuple)) or not value:
    raise ValueError(f"row {index} of {what}: expected a non-empty list of {{role, content}} "
                     f"messages, got {type(value).__name__}")
  out = []
  for m in value:
    if not (isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)):
      raise ValueError(f"row {index} of {what}: a message is not a {{role, content}} dict of "
                       f"strings: {str(m)[:80]}")
    out.append({"role": m["role"], "content": m["content"]})
  return tuple(out)


def _string(value: Any, field: str, index: int, what: str) -> str:
  if not isinstance(value, str):
    raise ValueError(f"row {index} of {what}: column {field!r} is {type(value).__name__}, "
                     "not a string")
  return value


def record(row: dict, index: int, form: str, columns, what: str) -> Record:
  """One table row -> Record (checked)."""
  m = _mapping(columns)
  if form == "text":
    return Record(index, text=_string(row[m["text"]], m["text"], index, what))
  if form == "messages":
    msgs = _messages(row[m["messages"]], index, what)
    if not any(x["role"] == "assistant" for x in msgs):
      raise ValueError(f"row {index} of {what}: `messages` has no assistant turn, so nothing "
                       "in it is trained; add the assistant's answer, or give prompt-only rows "
                       "as a 'prompt' column")
    return Record(index, messages=msgs)
  prompt = row[m["prompt"]]
  completion = row.get(m["completion"]) if form == "prompt_completion" else None
  if isinstance(prompt, (list, tuple)):  # conversational
    msgs = _messages(prompt, index, what)
    if completion is None:
      return Record(index, messages=msgs, first_trained=len(msgs))
    return Record(index, messages=msgs + _messages(completion, index, what),
                  first_trained=len(msgs))
  return Record(index, prompt=_string(prompt, m["prompt"], index, what),
                completion=None if completion is None else _string(
                    completion, m["completion"], index, what))
