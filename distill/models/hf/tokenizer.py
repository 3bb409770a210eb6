"""The checkpoint's tokenizer: tokenizer.json / tokenizer.model, BOS/EOS, chat template."""
from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

from distill.data import tokenizer as tokenizers
from distill.errors import LoadError
from distill.models.hf.config import read_config


def load_tokenizer(path: str, hf: dict | None = None,
                   vocab: int | None = None) -> tokenizers.Tokenizer:
  """tokenizer.json, tokenizer.model or distill's descriptor, with BOS/EOS and `chat_template`.

  With `vocab` (the model's embedding rows) below the tokenizer's size, the tokens past it are
  dropped (`tokenizers.fit_vocab`, a copy in a temporary directory): the model cannot embed them.

  BOS/EOS come from tokenizer_config.json when it names them, else from the ids in
  generation_config.json / config.json. `tok.chat_template` is the Jinja template string from
  chat_template.jinja or tokenizer_config.json (None when the model has none).
  """
  hf = hf if hf is not None else read_config(path)
  tok_cfg = _json_or_empty(os.path.join(path, "tokenizer_config.json"))
  gen = _json_or_empty(os.path.join(path, "generation_config.json"))
  json_file, sp_file = os.path.join(path, "tokenizer.json"), os.path.join(path, "tokenizer.model")
  try:
    if os.path.exists(json_file):
      names = {}
      raw = None
      for kind in ("bos", "eos", "pad"):
        if tok_cfg.get(f"{kind}_token"):
          continue  # HFTokenizer reads it from tokenizer_config.json itself
        i = _first_id(gen.get(f"{kind}_token_id", hf.get(f"{kind}_token_id")))
        if i is not None:
          if raw is None:
            import tokenizers as hf_tokenizers  # pylint: disable=import-outside-toplevel
            raw = hf_tokenizers.Tokenizer.from_file(json_file)
          names[f"{kind}_token"] = raw.id_to_token(i)
      tok = tokenizers.HFTokenizer(json_file, **names)
    elif os.path.exists(sp_file):
      tok = tokenizers.SentencePieceTokenizer(sp_file)
    elif os.path.exists(os.path.join(path, tokenizers.DESCRIPTOR_NAME)):
      tok = tokenizers.load(path)  # written by distill.to_hf (e.g. the byte tokenizer)
    else:
      raise LoadError(f"{path} has no tokenizer.json or tokenizer.model; download the model's "
                      "tokenizer files next to config.json")
  except LoadError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise LoadError(f"tokenizer in {path} is unreadable ({str(e).splitlines()[0][:120]}); "
                    "re-download tokenizer.json / tokenizer.model") from None
  template = tok_cfg.get("chat_template")
  jinja = os.path.join(path, "chat_template.jinja")
  if os.path.exists(jinja):
    with open(jinja) as f:
      template = f.read()
  tok.chat_template = template
  if vocab is not None and tok.vocab_size > vocab:
    directory = tempfile.mkdtemp(prefix="distill_hf_tokenizer_")
    atexit.register(shutil.rmtree, directory, True)
    tok = tokenizers.fit_vocab(tok, vocab, directory)
  return tok


def _json_or_empty(file: str) -> dict:
  if not os.path.exists(file):
    return {}
  try:
    with open(file) as f:
      data = json.load(f)
    return data if isinstance(data, dict) else {}
  except ValueError as e:
    raise LoadError(f"{file} is corrupt ({e}); re-download it") from None


def _first_id(value) -> int | None:
  if isinstance(value, list):
    value = value[0] if value else None
  return None if value is None else int(value)
