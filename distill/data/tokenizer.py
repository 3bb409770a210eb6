"""Tokenizers behind one small interface: byte-level, SentencePiece, HF tokenizer.json.

Every tokenizer exposes `vocab_size`, `pad_id`, `bos_id`, `eos_id` (the last three may be
None for SentencePiece / HF models that lack the token), `encode`, `decode`, `save` and a
`fingerprint` that changes whenever the token ids a text maps to could change (the data
cache is keyed by it).

`add_bos` is the model's start-of-sequence convention, one value from data to device: whether
a BOS precedes every document it trains on and every prompt it is given
(`encode_prompt`). Byte tokenizers default to no BOS; SentencePiece models to a BOS (the
Llama/Gemma convention); HF tokenizers follow `add_bos_token` in tokenizer_config.json, else
whether their post-processor adds one. A saved descriptor records the value the model was
trained with (absent = no BOS), and the run's `data.add_bos` can override the default.

`save(directory)` writes a descriptor `distill_tokenizer.json` and, for SentencePiece and
HF, a copy of the model file next to it (`tokenizer.model` / `tokenizer.json`, the names
those ecosystems expect). `load(path)` reads a descriptor, a directory holding one, a bare
HF `tokenizer.json` or a bare SentencePiece `.model` file.

The byte tokenizer needs no files: pad=0, bos=1, eos=2, byte b -> b + 3 (vocab 259). Its
descriptor is all an app needs to reproduce it on device.
"""
from __future__ import annotations

import abc
import copy
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Iterable

import numpy as np

from distill.errors import ConfigError, LoadError

DESCRIPTOR_NAME = "distill_tokenizer.json"
_SP_FILE = "tokenizer.model"
_HF_FILE = "tokenizer.json"


class Tokenizer(abc.ABC):
  """The interface data, evaluation and export code rely on."""

  add_bos: bool = False  # the start-of-sequence convention (module doc)
  # Tokens a loader removed because the model's embedding has no row for them (`fit_vocab`).
  dropped_tokens: int = 0

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    ...

  @property
  @abc.abstractmethod
  def pad_id(self) -> int | None:
    ...

  @property
  @abc.abstractmethod
  def bos_id(self) -> int | None:
    ...

  @property
  @abc.abstractmethod
  def eos_id(self) -> int | None:
    ...

  @abc.abstractmethod
  def _encode(self, text: str) -> list[int]:
    """Ids for `text` without any special tokens."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int]) -> str:
    ...

  @abc.abstractmethod
  def descriptor(self) -> dict[str, Any]:
    """JSON-able description; with the model file (if any) it rebuilds the tokenizer."""

  def _model_path(self) -> str | None:
    return None

  @property
  def model_file(self) -> str | None:
    """The model file behind the tokenizer (tokenizer.json / .model); None for byte-level."""
    return self._model_path()

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    ids = self._encode(text)
    if add_bos:
      ids.insert(0, _require(self.bos_id, "bos", self))
    if add_eos:
      ids.append(_require(self.eos_id, "eos", self))
    return ids

  def encode_prompt(self, text: str) -> list[int]:
    """Ids of a prompt as the model was trained to see it (BOS first iff `add_bos`)."""
    return self.encode(text, add_bos=self.add_bos)

  def with_add_bos(self, add_bos: bool) -> "Tokenizer":
    """The same tokenizer with the given start-of-sequence convention."""
    if add_bos and self.bos_id is None:
      raise ValueError(f"{type(self).__name__} has no BOS token, so sequences cannot start "
                       "with one: set --config.data.add_bos=False")
    out = copy.copy(self)
    out.add_bos = bool(add_bos)
    return out

  def _convention(self) -> dict[str, Any]:
    # Only when set, so descriptors (and fingerprints) of BOS-less tokenizers stay as they were.
    return {"add_bos": True} if self.add_bos else {}

  @property
  def fingerprint(self) -> str:
    """Short stable hash of the descriptor and the model file's bytes."""
    h = hashlib.md5(json.dumps(self.descriptor(), sort_keys=True).encode())
    path = self._model_path()
    if path is not None:
      with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:16]

  def save(self, directory: str) -> str:
    """Writes the descriptor (and model file) into `directory`; returns the descriptor path."""
    os.makedirs(directory, exist_ok=True)
    desc = self.descriptor()
    src = self._model_path()
    if src is not None:
      dst = os.path.join(directory, desc["file"])
      if not (os.path.exists(dst) and os.path.samefile(src, dst)):
        shutil.copyfile(src, dst)
    path = os.path.join(directory, DESCRIPTOR_NAME)
    with open(path, "w") as f:
      json.dump(desc, f, indent=2, sort_keys=True)
    template = getattr(self, "chat_template", None)
    if template:  # where transformers (and HFTokenizer below) look for it
      with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": template}, f, indent=2)
    return path


def _require(value: int | None, what: str, tok: Tokenizer) -> int:
  if value is None:
    raise ValueError(f"{type(tok).__name__} has no {what} token; cannot add it")
  return value


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes shifted past three special ids: pad=0, bos=1, eos=2, byte b -> b + 3."""

  OFFSET = 3

  @property
  def vocab_size(self) -> int:
    return 256 + self.OFFSET

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def bos_id(self) -> int:
    return 1

  @property
  def eos_id(self) -> int:
    return 2

  def _encode(self, text: str) -> list[int]:
    # numpy keeps encoding a 500 KB corpus in milliseconds instead of a Python loop.
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return (raw.astype(np.int32) + self.OFFSET).tolist()

  def decode(self, ids: Iterable[int]) -> str:
    arr = np.asarray(list(ids), dtype=np.int64)
    arr = arr[(arr >= self.OFFSET) & (arr < self.vocab_size)]
    # Windows cut mid-character must still print, hence "replace".
    return (arr - self.OFFSET).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def descriptor(self) -> dict[str, Any]:
    return {"type": "byte", "vocab_size": self.vocab_size, "pad_id": 0, "bos_id": 1,
            "eos_id": 2, "byte_offset": self.OFFSET, **self._convention()}


class SentencePieceTokenizer(Tokenizer):
  """A `sentencepiece.SentencePieceProcessor` model file."""

  def __init__(self, model_file: str):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self._path = os.path.abspath(model_file)
    self._sp = spm.SentencePieceProcessor(model_file=self._path)
    self.add_bos = self.bos_id is not None  # the Llama / Gemma convention

  @staticmethod
  def _opt(i: int) -> int | None:
    # SentencePiece reports an absent special token as -1.
    return None if i < 0 else int(i)

  @property
  def vocab_size(self) -> int:
    return int(self._sp.get_piece_size())

  @property
  def pad_id(self) -> int | None:
    return self._opt(self._sp.pad_id())

  @property
  def bos_id(self) -> int | None:
    return self._opt(self._sp.bos_id())

  @property
  def eos_id(self) -> int | None:
    return self._opt(self._sp.eos_id())

  def _encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text, out_type=int))

  def decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids if 0 <= int(i) < self.vocab_size]
    return self._sp.decode(ids)

  def descriptor(self) -> dict[str, Any]:
    return {"type": "sentencepiece", "file": _SP_FILE, "vocab_size": self.vocab_size,
            "pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id,
            **self._convention()}

  def _model_path(self) -> str:
    return self._path


# Names used by common HF models, tried in order when no explicit token is given.
_HF_GUESSES = {
    "bos": ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>", "[CLS]"),
    "eos": ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "[SEP]"),
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>"),
}


class HFTokenizer(Tokenizer):
  """A Hugging Face `tokenizer.json` (fast tokenizers library).

  tokenizer.json does not say which token is BOS/EOS/PAD; they come from, in order: the
  constructor arguments, a `tokenizer_config.json` next to the file, common token names.
  """

  def __init__(self, tokenizer_file: str, *, bos_token: str | None = None,
               eos_token: str | None = None, pad_token: str | None = None):
    import tokenizers  # pylint: disable=g-import-not-at-top
    self._path = os.path.abspath(tokenizer_file)
    self._tok = tokenizers.Tokenizer.from_file(self._path)
    cfg = _read_hf_config(os.path.dirname(self._path))
    self.chat_template = cfg.get("chat_template") or None
    given = {"bos": bos_token, "eos": eos_token, "pad": pad_token}
    self._ids = {}
    for kind, explicit in given.items():
      name = explicit or _token_content(cfg.get(f"{kind}_token"))
      names = (name,) if name else _HF_GUESSES[kind]
      self._ids[kind] = next(
          (i for i in (self._tok.token_to_id(n) for n in names) if i is not None), None)
    flag = cfg.get("add_bos_token")
    self.add_bos = self.bos_id is not None and (
        bool(flag) if isinstance(flag, bool) else _post_processor_adds(self._path, self.bos_id))

  @property
  def vocab_size(self) -> int:
    return int(self._tok.get_vocab_size(with_added_tokens=True))

  @property
  def pad_id(self) -> int | None:
    return self._ids["pad"]

  @property
  def bos_id(self) -> int | None:
    return self._ids["bos"]

  @property
  def eos_id(self) -> int | None:
    return self._ids["eos"]

  def _encode(self, text: str) -> list[int]:
    # Specials are added by `encode` from our own ids, not by the HF post-processor.
    return list(self._tok.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def _token(self, kind: str) -> str | None:
    i = self._ids[kind]
    return None if i is None else self._tok.id_to_token(i)

  def descriptor(self) -> dict[str, Any]:
    return {"type": "hf", "file": _HF_FILE, "vocab_size": self.vocab_size,
            "pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id,
            "bos_token": self._token("bos"), "eos_token": self._token("eos"),
            "pad_token": self._token("pad"), **self._convention()}

  def _model_path(self) -> str:
    return self._path


def _read_hf_config(directory: str) -> dict[str, Any]:
  path = os.path.join(directory, "tokenizer_config.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _post_processor_adds(path: str, bos_id: int) -> bool:
  """Whether tokenizer.json's post-processor puts `bos_id` before a single sequence."""
  with open(path) as f:
    proc = json.load(f).get("post_processor") or {}
  procs = proc.get("processors", [proc]) if proc.get("type") == "Sequence" else [proc]
  for p in procs:
    if p.get("type") == "TemplateProcessing":
      first = (p.get("single") or [{}])[0]
      name = first.get("SpecialToken", {}).get("id")
      if name is not None:
        return bos_id in (p.get("special_tokens", {}).get(name, {}).get("ids") or [])
    if p.get("type") in ("BertProcessing", "RobertaProcessing"):
      return True
  return False


def _token_content(tok: Any) -> str | None:
  # tokenizer_config.json stores a special token as a string or as {"content": ...}.
  if isinstance(tok, dict):
    return tok.get("content")
  return tok if isinstance(tok, str) else None


def _from_descriptor(desc: dict[str, Any], directory: str) -> Tokenizer:
  kind = desc.get("type")
  if kind == "byte":
    tok = ByteTokenizer()
  elif kind == "sentencepiece":
    tok = SentencePieceTokenizer(os.path.join(directory, desc["file"]))
  elif kind == "hf":
    tok = HFTokenizer(os.path.join(directory, desc["file"]), bos_token=desc.get("bos_token"),
                      eos_token=desc.get("eos_token"), pad_token=desc.get("pad_token"))
  else:
    raise ValueError(f"unknown tokenizer type {kind!r} in descriptor under {directory}")
  # What the model was trained with, not the file's default (absent: no BOS).
  return tok.with_add_bos(bool(desc.get("add_bos", False)))


def load(path: str) -> Tokenizer:
  """Loads a tokenizer from a descriptor, a directory, an HF tokenizer.json or an SP .model."""
  if os.path.isdir(path):
    for name in (DESCRIPTOR_NAME, _HF_FILE, _SP_FILE):
      if os.path.exists(os.path.join(path, name)):
        return load(os.path.join(path, name))
    raise ValueError(f"no tokenizer in {path}: expected {DESCRIPTOR_NAME}, {_HF_FILE} or "
                     f"{_SP_FILE}")
  if not os.path.exists(path):
    raise ValueError(f"tokenizer file {path} does not exist")
  if path.endswith(".json"):
    with open(path) as f:
      data = json.load(f)
    # A distill descriptor names its type; anything else is an HF tokenizer.json.
    if isinstance(data, dict) and data.get("type") in ("byte", "sentencepiece", "hf"):
      return _from_descriptor(data, os.path.dirname(os.path.abspath(path)))
    return HFTokenizer(path)
  return SentencePieceTokenizer(path)


def check_fits(tok: Tokenizer, vocab: int, what: str) -> None:
  """One line when `tok` can produce ids the model (`vocab` embedding rows) cannot embed:
  such ids read past the embedding (NaN in JAX) instead of failing."""
  if tok.vocab_size > vocab:
    raise ConfigError(f"the tokenizer has {tok.vocab_size} tokens but {what} embeds only "
                      f"{vocab}: ids >= {vocab} cannot be read; use the model's own tokenizer "
                      "(a loader drops the tokens its embedding lacks)")


def bpe_merges(model: dict[str, Any]) -> list[tuple[str, str]]:
  """A tokenizer.json BPE model's merges as pairs (written "a b" in older files, [a, b] in
  newer ones)."""
  return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]


def bpe_joined(model: dict[str, Any], a: str, b: str) -> str:
  """The token a BPE merge of `a` and `b` makes (`continuing_subword_prefix` dropped from b)."""
  prefix = model.get("continuing_subword_prefix") or ""
  return a + (b[len(prefix):] if prefix and b.startswith(prefix) else b)


def drop_ids(j: dict[str, Any], vocab: int) -> dict[str, Any]:
  """A tokenizer.json dict without the ids >= `vocab`: model entries, the BPE merges that use or
  make them, added tokens. Text those tokens covered falls back to the tokens that remain (the
  pieces they merged from, else byte fallback), as when the file never had them."""
  model = dict(j["model"])
  kind = model.get("type")
  if kind == "Unigram":
    model["vocab"] = model["vocab"][:vocab]  # ids are positions
  elif isinstance(model.get("vocab"), dict):
    model["vocab"] = {s: i for s, i in model["vocab"].items() if i < vocab}
  else:
    raise ValueError(f"cannot drop ids from a {kind} tokenizer.json model")
  if kind == "BPE":
    kept = set(model["vocab"])
    model["merges"] = [m for m, (a, b) in zip(model["merges"], bpe_merges(model))
                       if a in kept and b in kept and bpe_joined(model, a, b) in kept]
  added = [a for a in j.get("added_tokens", []) if a["id"] < vocab]
  return dict(j, model=model, added_tokens=added)


def fit_vocab(tok: Tokenizer, vocab: int, directory: str) -> Tokenizer:
  """`tok` restricted to ids < `vocab` (the model's embedding rows), written under `directory`;
  `tok` itself when it already fits. Sets `dropped_tokens`. What llama.cpp does with a GGUF
  whose token list outruns its embedding: the model's vocabulary is the embedding's."""
  if tok.vocab_size <= vocab:
    return tok
  if not isinstance(tok, HFTokenizer):
    raise LoadError(f"the {type(tok).__name__} lists {tok.vocab_size} tokens but the model "
                    f"embeds only {vocab}; give the model's tokenizer.json instead")
  with open(tok._model_path()) as f:  # pylint: disable=protected-access
    j = drop_ids(json.load(f), vocab)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, _HF_FILE)
  with open(path, "w") as f:
    json.dump(j, f, ensure_ascii=False)
  config = _read_hf_config(os.path.dirname(tok._model_path()))  # pylint: disable=protected-access
  if config:
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
      json.dump(config, f, indent=2)
  names = {f"{k}_token": tok._token(k) for k in ("bos", "eos", "pad")  # pylint: disable=protected-access
           if tok._ids[k] is not None and tok._ids[k] < vocab}  # pylint: disable=protected-access
  out = HFTokenizer(path, **names)
  out.chat_template = getattr(tok, "chat_template", None)
  out = out.with_add_bos(tok.add_bos and out.bos_id is not None)
  out.dropped_tokens = tok.vocab_size - out.vocab_size
  logging.warning("[tokenizer] %d tokens (ids >= %d) have no embedding row and were dropped "
                  "from the tokenizer; text they covered encodes to the tokens that remain",
                  out.dropped_tokens, vocab)
  return out


def from_config(cfg: Any) -> Tokenizer:
  """`"byte"`, or a path accepted by `load`; a Tokenizer passes through unchanged."""
  if isinstance(cfg, Tokenizer):
    return cfg
  if not isinstance(cfg, str) or not cfg:
    raise ValueError(f"tokenizer must be 'byte' or a path to a tokenizer, got {cfg!r}")
  if cfg == "byte":
    return ByteTokenizer()
  return load(cfg)

