"""Reading a GGUF file: the `gguf` package's reader with one clear line per broken file, its
metadata as a dict, field values as Python values. `gguf` is an optional dependency
(requirements-real.txt), imported only when a GGUF is read."""
from __future__ import annotations

import os
import re

from distill.errors import LoadError

_INSTALL = "pip install 'gguf>=0.14'"


def gguf_module():
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise LoadError(f"reading GGUF files needs the gguf package; {_INSTALL}") from None
  return gguf


def open_reader(path: str):
  """`gguf.GGUFReader` over `path`, or a LoadError naming what is wrong with the file."""
  gguf = gguf_module()
  if not os.path.isfile(path):
    raise LoadError(f"GGUF file {path!r} does not exist; give 'gguf:/path/to/model.gguf'")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # pylint: disable=broad-except
    m = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", str(e))
    if m:
      raise LoadError(f"{path}: unknown quant type {m.group(1)} (newer than the gguf package?); "
                      f"upgrade it ({_INSTALL} -U) or re-quantize the model to Q8_0/Q4_K/"
                      "F16 with llama.cpp") from None
    raise LoadError(f"{path} is truncated or corrupt ({_first_line(e)}); re-download it"
                    ) from None
  size = os.path.getsize(path)
  for t in reader.tensors:  # the reader maps the file lazily: check every range up front
    if t.data_offset + t.n_bytes > size:
      raise LoadError(f"{path} is truncated (tensor {t.name} runs past the end of the file); "
                      "re-download it")
  return reader


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:120]


def metadata(reader) -> dict:
  """Scalar and short-array metadata by key; the tokenizer's long arrays are read on demand."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "scores",
                                                           "token_type")):
      continue
    try:
      out[key] = field_value(field)
    except Exception:  # pylint: disable=broad-except
      continue  # a key we cannot decode is one we do not need
  return out


def field_value(field):
  """A metadata field as Python (str, int, float, bool or a list of them).

  Decoded from the reader's parts rather than `ReaderField.contents()`, which older gguf
  releases (0.14) lack: a string is its bytes part, a scalar its one-element part, an array
  one part each.
  """
  kind = int(field.types[0]) if field.types else -1
  string, array, boolean = 8, 9, 7  # GGUFValueType ids, fixed by the file format
  inner = int(field.types[-1]) if kind == array else kind

  def one(part):
    if inner == string:
      return bytes(part).decode("utf-8")
    value = part.tolist()[0]
    return bool(value) if inner == boolean else value
  if kind == array:
    return [one(field.parts[i]) for i in field.data]
  return one(field.parts[field.data[0]])


# ---------------------------------------------------------------------------------------------
# metadata -> config.json dict
