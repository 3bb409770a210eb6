"""A student's tokenizer as GGUF tokenizer metadata (`tokenizer.ggml.*`), as llama.cpp reads it.

`vocab(tokenizer, n_vocab)` returns a `Vocab` that `gguf_writer` adds to the file. The token
list always has exactly `n_vocab` entries (llama.cpp checks the embedding's rows against it):
ids past the tokenizer (the student's padded rows) are `[PAD<i>]` tokens of type UNUSED, the
way llama.cpp's convert_hf_to_gguf.py pads.

- Byte tokenizer (pad=0, bos=1, eos=2, byte b -> b + 3): written as a SentencePiece ("llama")
  vocabulary of byte tokens `<0xNN>` with no merges, so llama.cpp's byte fallback gives every
  byte its id b + 3. One exception: llama.cpp's SentencePiece tokenizer first turns every space
  into U+2581 ("▁"), so the space's id 35 is the token "▁" (not `<0x20>`). The one text the ids
  then differ on is a literal U+2581 in the input, which llama.cpp reads as a space.
- HF tokenizer.json with a byte-level BPE model (SmolLM2, Llama 3, Qwen 2/3, and the trimmed
  vocabularies `distill.methods.prune.vocab` rebuilds): "gpt2" vocabulary with its merges; the
  pre-tokenizer is named as llama.cpp names the regex (`tokenizer.ggml.pre`): a plain ByteLevel
  is "gpt-2", SmolLM2's individual digits + ByteLevel is "smollm", the Llama 3 and Qwen 2 split
  regexes are "llama-bpe" and "qwen2". Added tokens are CONTROL when special, else USER_DEFINED.
- SentencePiece model files: "llama" vocabulary with the model's pieces, scores and types.

BOS/EOS/PAD ids and `add_bos_token` follow the stage's tokenizer (`Tokenizer.add_bos`, the
convention the student was trained with); the chat template is written when there is one.
"""
from __future__ import annotations

import dataclasses
import json

from distill.data import tokenizer as tokenizers
from distill.errors import UsageError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # llama.cpp TokenType

# tokenizer.json pre-tokenizer regexes that llama.cpp knows, by the name it gives them.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _QWEN2_SPLIT: "qwen2"}


@dataclasses.dataclass
class Vocab:
  model: str  # "llama" (SentencePiece) | "gpt2" (byte-level BPE)
  tokens: list[str]
  types: list[int]
  scores: list[float] | None = None
  merges: list[str] | None = None
  pre: str | None = None
  add_space_prefix: bool | None = None
  bos_id: int | None = None
  eos_id: int | None = None
  pad_id: int | None = None
  unk_id: int | None = None
  add_bos: bool = False
  chat_template: str | None = None


def vocab(tok: tokenizers.Tokenizer, n_vocab: int) -> Vocab:
  """The GGUF vocabulary of `tok` for an embedding of `n_vocab` rows."""
  if tok.vocab_size > n_vocab:
    raise UsageError(f"the tokenizer has {tok.vocab_size} ids but the student's embedding only "
                     f"{n_vocab} rows; the stage is inconsistent, re-run it")
  if tok.eos_id is None:
    raise UsageError("the student's tokenizer has no EOS token; llama.cpp needs a stop token id "
                     "(train with a tokenizer that has one)")
  if isinstance(tok, tokenizers.ByteTokenizer):
    out = _byte(tok)
  elif isinstance(tok, tokenizers.HFTokenizer):
    out = _byte_level_bpe(tok)
  elif isinstance(tok, tokenizers.SentencePieceTokenizer):
    out = _sentencepiece(tok)
  else:
    raise UsageError(f"tokenizer type {type(tok).__name__} cannot be written to GGUF")
  pad = len(out.tokens)
  out.tokens += [f"[PAD{i}]" for i in range(pad, n_vocab)]
  out.types += [UNUSED] * (n_vocab - pad)
  if out.scores is not None:
    out.scores += [0.0] * (n_vocab - pad)
  out.bos_id, out.eos_id, out.pad_id = tok.bos_id, tok.eos_id, tok.pad_id
  out.add_bos = bool(tok.add_bos)
  out.chat_template = getattr(tok, "chat_template", None) or None
  return out


def _byte(tok: tokenizers.ByteTokenizer) -> Vocab:
  specials = ["<pad>", "<s>", "</s>"]
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2) and tok.OFFSET == len(specials)
  tokens = specials + ["\u2581" if b == 0x20 else f"<0x{b:02X}>" for b in range(256)]
  types = [CONTROL] * len(specials) + [NORMAL if b == 0x20 else BYTE for b in range(256)]
  return Vocab("llama", tokens, types, scores=[0.0] * len(tokens), add_space_prefix=False)


def _byte_level_bpe(tok: tokenizers.HFTokenizer) -> Vocab:
  path = tok.model_file
  with open(path) as f:
    spec = json.load(f)
  model = spec.get("model") or {}
  if model.get("type") != "BPE" or model.get("byte_fallback"):
    raise UsageError(f"{path}: only byte-level BPE tokenizers (SmolLM2, Llama 3, Qwen) are "
                     f"written to GGUF, not {model.get('type')!r}"
                     f"{' with byte fallback' if model.get('byte_fallback') else ''}")
  if spec.get("normalizer"):
    raise UsageError(f"{path}: a tokenizer with a normalizer has no llama.cpp equivalent")
  pre = _pre_name(spec.get("pre_tokenizer"), path)
  ids = dict(model["vocab"])
  added = {a["content"]: a for a in spec.get("added_tokens", [])}
  for a in added.values():
    ids[a["content"]] = a["id"]
  tokens = [None] * tok.vocab_size
  for t, i in ids.items():
    if 0 <= i < len(tokens):
      tokens[i] = t
  holes = [i for i, t in enumerate(tokens) if t is None]
  if holes:
    raise UsageError(f"{path}: ids {holes[:5]} have no token; the tokenizer is corrupt")
  types = [(CONTROL if added[t].get("special") else USER_DEFINED) if t in added else NORMAL
           for t in tokens]
  merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
  if not merges:
    raise UsageError(f"{path}: a BPE tokenizer without merges cannot be written to GGUF "
                     "(llama.cpp requires tokenizer.ggml.merges)")
  return Vocab("gpt2", tokens, types, merges=merges, pre=pre)


def _pre_name(pre: dict | None, path: str) -> str:
  """llama.cpp's name for a tokenizer.json pre-tokenizer (see the module doc)."""
  steps = (pre or {}).get("pretokenizers", [pre]) if (pre or {}).get("type") == "Sequence" \
      else [pre or {}]
  kinds = [s.get("type") for s in steps]
  if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
    return "gpt-2"
  if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and \
      steps[1].get("use_regex", True):
    return "smollm"
  if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
    regex = (steps[0].get("pattern") or {}).get("Regex")
    if regex in _SPLITS:
      return _SPLITS[regex]
  raise UsageError(f"{path}: pre-tokenizer {kinds} has no llama.cpp equivalent known here "
                   "(ByteLevel, Digits+ByteLevel, the Llama 3 and Qwen 2 splits are)")


def _sentencepiece(tok: tokenizers.SentencePieceTokenizer) -> Vocab:
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel
  sp = spm.SentencePieceProcessor(model_file=tok.model_file)
  n = sp.get_piece_size()
  tokens = [sp.id_to_piece(i) for i in range(n)]
  types = [UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else
           BYTE if sp.is_byte(i) else UNUSED if sp.is_unused(i) else NORMAL for i in range(n)]
  out = Vocab("llama", tokens, types, scores=[float(sp.get_score(i)) for i in range(n)],
              add_space_prefix=True)
  out.unk_id = next((i for i in range(n) if sp.is_unknown(i)), None)
  return out


def add_to(writer, v: Vocab) -> None:
  """The vocabulary's keys on a `gguf.GGUFWriter`."""
  writer.add_tokenizer_model(v.model)
  if v.pre:
    writer.add_tokenizer_pre(v.pre)
  writer.add_token_list(v.tokens)
  writer.add_token_types(v.types)
  if v.scores is not None:
    writer.add_token_scores(v.scores)
  if v.merges:
    writer.add_token_merges(v.merges)
  if v.add_space_prefix is not None:
    writer.add_add_space_prefix(v.add_space_prefix)
  for add, value in ((writer.add_bos_token_id, v.bos_id), (writer.add_eos_token_id, v.eos_id),
                     (writer.add_pad_token_id, v.pad_id), (writer.add_unk_token_id, v.unk_id)):
    if value is not None:
      add(int(value))
  writer.add_add_bos_token(v.add_bos)
  writer.add_add_eos_token(False)
  if v.chat_template:
    writer.add_chat_template(v.chat_template)
