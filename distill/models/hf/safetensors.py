"""safetensors files read tensor by tensor (pread, no mmap); pickled weights refused."""
from __future__ import annotations

import glob
import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from distill.errors import LoadError

_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
_CONVERT_HINT = ("convert it once, in a trusted environment, with transformers: "
                 "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, "
                 "safe_serialization=True)")


class _File:
  """One safetensors file: header parsed and checked up front, tensors read on demand."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    try:
      with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
          raise ValueError("shorter than its 8-byte header length")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
          raise ValueError("header runs past the end of the file")
        header = json.loads(f.read(n))
      self.base = 8 + n
      header.pop("__metadata__", None)
      for name, t in header.items():
        start, end = t["data_offsets"]
        count = math.prod(t["shape"])
        if t["dtype"] not in _DTYPES:
          raise ValueError(f"tensor {name} has unsupported dtype {t['dtype']}")
        if end - start != count * np.dtype(_DTYPES[t["dtype"]]).itemsize:
          raise ValueError(f"tensor {name} size does not match its shape")
        if self.base + end > size:
          raise ValueError(f"tensor {name} runs past the end of the file (truncated download?)")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
      raise LoadError(f"{path} is truncated or corrupt ({str(e).splitlines()[0][:120]}); "
                      "re-download it") from None
    self.tensors = header

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.tensors[name]["shape"])

  def read(self, name: str) -> np.ndarray:
    t = self.tensors[name]
    start, end = t["data_offsets"]
    buf = np.empty(end - start, np.uint8)
    with open(self.path, "rb") as f:
      f.seek(self.base + start)
      if f.readinto(buf) != buf.size:
        raise LoadError(f"{self.path} is truncated (tensor {name}); re-download it")
    return buf.view(_DTYPES[t["dtype"]]).reshape(t["shape"])


def _canonical(name: str) -> str:
  """Checkpoint tensor name -> the name this module's layouts use."""
  for prefix, repl in (("model.language_model.", "model."), ("language_model.model.", "model."),
                       ("language_model.lm_head.", "lm_head."), ("transformer.", "")):
    if name.startswith(prefix):
      return repl + name[len(prefix):]
  return name


class Checkpoint:
  """All safetensors files of a directory (sharded with an index or not), by canonical name."""

  def __init__(self, path: str):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
      try:
        with open(index) as f:
          names = sorted(set(json.load(f)["weight_map"].values()))
      except (ValueError, KeyError, TypeError) as e:
        raise LoadError(f"{index} is corrupt ({e}); re-download it") from None
      missing = [n for n in names if not os.path.exists(os.path.join(path, n))]
      if missing:
        raise LoadError(f"{path}: shard(s) {', '.join(missing)} named by "
                        "model.safetensors.index.json are missing; download them")
      files = [os.path.join(path, n) for n in names]
    else:
      files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
      pickles = sorted(os.path.basename(p) for p in os.listdir(path)
                       if p.endswith(_PICKLES) or ".bin." in p)
      if pickles:
        raise LoadError(f"{path} holds only pickled weights ({', '.join(pickles[:3])}), which "
                        f"distill refuses to load because unpickling runs code; "
                        f"{_CONVERT_HINT}")
      raise LoadError(f"{path} has no *.safetensors weights; download model.safetensors "
                      "(or its shards and model.safetensors.index.json)")
    self.where: dict[str, tuple[_File, str]] = {}
    for file in map(_File, files):
      for name in file.tensors:
        self.where.setdefault(_canonical(name), (file, name))
    self._last: tuple[str, np.ndarray] | None = None

  def __contains__(self, name: str) -> bool:
    return name in self.where

  def read(self, name: str) -> np.ndarray:
    if name not in self.where:
      raise LoadError(f"checkpoint lacks tensor {name!r}; is config.json from the same model?")
    # GPT-2's fused c_attn feeds three params: keep the last tensor instead of re-reading it.
    if self._last is None or self._last[0] != name:
      self._last = None  # drop the previous tensor before reading the next
      file, real = self.where[name]
      self._last = (name, file.read(real))
    return self._last[1]
