"""A GGUF's tokenizer metadata -> a Hugging Face tokenizer.json wrapped as `HFTokenizer`.

llama.cpp stores the vocabulary as arrays (`tokenizer.ggml.tokens`, `.scores`, `.token_type`,
`.merges`) plus a model name and, for byte-level BPE, the name of the pre-tokenizer regex it
was converted with (`tokenizer.ggml.pre`). Two models cover the supported families:

- "gpt2": byte-level BPE (SmolLM2, Llama 3, Qwen 2/3): tokens are already in GPT-2's byte
  alphabet, merges are given; the `pre` name picks the split regex llama.cpp applies.
- "llama": SentencePiece BPE (Llama 2, Mistral, Gemma): tokens with scores and `<0xNN>` byte
  tokens; the merges are the pairs of tokens whose concatenation is a token, best score first
  (how transformers converts a SentencePiece model), applied with byte fallback.

Tokens marked CONTROL, and the bos/eos/unk/pad tokens, become special tokens that match whole in
text; USER_DEFINED ones become plain added tokens. The ids equal transformers' GGUF tokenizer's
(`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, tests/test_gguf.py checks it), except for
`pre="smollm"`: llama.cpp splits off every digit before its GPT-2 regex runs (its
llama-vocab.cpp), transformers does not. This module follows llama.cpp, which changes the ids
only where whitespace precedes a digit ("\n   2": llama.cpp "\n   " + "2", transformers
"\n  " + " " + "2"; SmolLM2 encodes the pydoc corpus to 112,955 ids, transformers to 113,108).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile

from distill.data import tokenizer as tokenizers
from distill.errors import LoadError
from distill.models.gguf.reader import field_value

CONTROL, USER_DEFINED = 3, 4
_GPT2_SPLIT = None  # ByteLevel's built-in regex
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> (split regex before the byte-level step, digits one by one first)
_PRE = {
    "default": (_GPT2_SPLIT, False), "gpt-2": (_GPT2_SPLIT, False),
    "smollm": (_GPT2_SPLIT, True),
    "llama3": (_LLAMA3_SPLIT, False), "llama-v3": (_LLAMA3_SPLIT, False),
    "llama-bpe": (_LLAMA3_SPLIT, False), "smaug-bpe": (_LLAMA3_SPLIT, False),
    "qwen2": (_QWEN2_SPLIT, False), "deepseek-r1-qwen": (_QWEN2_SPLIT, False),
}


def _array(reader, key: str):
  field = reader.fields.get(key)
  return None if field is None else field_value(field)


def load(reader, meta: dict, path: str, vocab: int | None = None) -> tokenizers.HFTokenizer:
  """The tokenizer the GGUF describes, as a tokenizer.json in a temporary directory.

  With `vocab` (the embedding's rows) smaller than the token list, the tokenizer is built from
  the first `vocab` tokens only, as if the file listed no more (`dropped_tokens` says how many
  were not): the model cannot embed the rest, so text falls back to the tokens it has.
  Gemma-family files list 262,174 tokens for 262,144 rows; the extra are runs of spaces, which
  the respelling below would otherwise let shadow the in-vocabulary "▁▁" ... tokens.
  """
  model = meta.get("tokenizer.ggml.model")
  tokens = _array(reader, "tokenizer.ggml.tokens")
  if model is None or not tokens:
    raise LoadError(f"{path} has no tokenizer (no tokenizer.ggml.* metadata); use a GGUF "
                    "converted with its tokenizer, e.g. by llama.cpp's convert_hf_to_gguf.py")
  types = _array(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
  dropped = max(len(tokens) - vocab, 0) if vocab is not None else 0
  if dropped:  # as if the file listed only the tokens the embedding has
    tokens, types = tokens[:vocab], types[:vocab]
  if model == "gpt2":
    tok, alphabet = _byte_level(tokens, _array(reader, "tokenizer.ggml.merges") or [],
                                meta.get("tokenizer.ggml.pre", "default"), path)
  elif model == "llama":
    tok, alphabet = _sentencepiece(reader, meta, tokens), None
  else:
    raise LoadError(f"{path}: tokenizer model {model!r} is not supported (gpt2 byte-level BPE "
                    "and llama SentencePiece are)")
  names = {kind: _name(tokens, meta.get(f"tokenizer.ggml.{key}_token_id"))
           for kind, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"),
                             ("unk", "unknown"))}
  _add_specials(tok, tokens, types, names, alphabet)
  directory = tempfile.mkdtemp(prefix="distill_gguf_tokenizer_")
  atexit.register(shutil.rmtree, directory, True)
  file = os.path.join(directory, "tokenizer.json")
  tok.save(file)
  template = meta.get("tokenizer.chat_template")
  config = {f"{k}_token": v for k, v in names.items() if v is not None}
  config.update(tokenizer_class="PreTrainedTokenizerFast", model_max_length=1 << 30,
                add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama")))
  if template:
    config["chat_template"] = template
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2)
  out = tokenizers.HFTokenizer(file, bos_token=names["bos"], eos_token=names["eos"],
                               pad_token=names["pad"])
  out.chat_template = template or None
  out.dropped_tokens = dropped
  if dropped:
    logging.warning("[gguf] %s lists %d tokens for %d embedding rows: the %d past them are "
                    "dropped from the tokenizer (as llama.cpp reads it)", path,
                    len(tokens) + dropped, vocab, dropped)
  return out


def _name(tokens, i):
  return None if i is None or not 0 <= int(i) < len(tokens) else tokens[int(i)]


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's printable spelling of the 256 bytes (the alphabet of byte-level vocabularies)."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
  out, extra = {}, 0
  for b in range(256):
    if b in keep:
      out[b] = chr(b)
    else:
      out[b] = chr(256 + extra)
      extra += 1
  return out


def _byte_level(tokens, merges, pre: str, path: str):
  # pylint: disable-next=import-outside-toplevel
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
  if pre not in _PRE:
    raise LoadError(f"{path}: byte-level pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not "
                    f"supported; supported: {', '.join(sorted(_PRE))}")
  spelling = _bytes_to_unicode()
  alphabet = set(spelling.values())
  # A token written outside the byte alphabet (rare converter output) is respelled into it.
  vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode()): i
           for i, t in enumerate(tokens)}
  pairs = _known([tuple(m.split(" ", 1)) for m in merges], vocab)
  tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
  split, digits = _PRE[pre]
  steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
  if split is None:
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
  else:
    steps += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
  tok.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
  tok.decoder = decoders.ByteLevel()
  return tok, alphabet


def _sentencepiece(reader, meta: dict, tokens):
  # pylint: disable-next=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
  gemma = str(meta.get("general.architecture", "")).startswith("gemma")
  if gemma:  # Gemma files spell runs of spaces as spaces; its tokenizer looks up "▁▁"
    tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in tokens]
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = _array(reader, "tokenizer.ggml.merges")
  if merges:
    pairs = _known([tuple(m.split(" ", 1)) for m in merges], vocab)
  else:
    # Gemma's scores do not follow its merge order; its file order does.
    scores = ([-i for i in range(len(tokens))] if gemma else
              (_array(reader, "tokenizer.ggml.scores") or [0.0] * len(tokens))[:len(tokens)])
    pairs = _merges_from_scores(tokens, vocab, scores)
  unk = _name(tokens, meta.get("tokenizer.ggml.unknown_token_id"))
  tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True,
                             unk_token=unk if gemma else None))
  if gemma:
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    return tok
  prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(
      replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False)
  steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
  if prefix:
    steps.append(decoders.Strip(content=" ", left=1, right=0))
  tok.decoder = decoders.Sequence(steps)
  return tok


def _known(pairs, vocab: dict) -> list[tuple[str, str]]:
  """The merges whose parts and result are tokens (all of them, unless the list was cut)."""
  return [(a, b) for a, b in pairs if a in vocab and b in vocab and a + b in vocab]


def _merges_from_scores(tokens, vocab: dict, scores) -> list[tuple[str, str]]:
  """Every split of a token into two tokens, best-scored token first (SentencePiece BPE)."""
  best = {}
  for t, s in zip(tokens, scores):
    best[t] = s  # a repeated token keeps its last score, as a dict built from the list would
  merges = []
  for t, s in best.items():
    found = [(t[:i], t[i:]) for i in range(1, len(t)) if t[:i] in vocab and t[i:] in vocab]
    found.sort(key=lambda p: (vocab[p[0]], vocab[p[1]]))
    merges += [(left, right, s) for left, right in found]
  # Stable: ties keep the token order above, as transformers' converter does.
  merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
  return [(left, right) for left, right, _ in merges]


def _add_specials(tok, tokens, types, names: dict, alphabet):
  from tokenizers import AddedToken  # pylint: disable=import-outside-toplevel
  named = {n for n in names.values() if n is not None}
  special, plain = [], []
  for t, kind in zip(tokens, types):
    if kind == CONTROL or t in named:
      if alphabet is None or set(t) <= alphabet:  # outside it: a llama.cpp mislabel
        special.append(AddedToken(t, special=True, normalized=False))
    elif kind == USER_DEFINED:
      plain.append(AddedToken(t, special=False, normalized=False))
  tok.add_special_tokens(special)
  tok.add_tokens(plain)
