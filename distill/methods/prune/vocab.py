"""Vocabulary trimming: keep the K most frequent ids of the transfer set, and what text needs.

Kept always (`required_ids`): the specials something uses -- BOS/EOS/PAD/UNK, the added tokens
the chat template writes, the added tokens the data contain -- and the tokens that let any text
still encode: the 256 byte-level characters (GPT-2/Llama-3/SmolLM-style ByteLevel BPE), else
the 256 `<0xNN>` tokens of byte-fallback BPE (Llama/Gemma SentencePiece) with the characters
its normalizer and decoder write ("▁"), else every single-character token (then text outside
the teacher's own alphabet maps to its unk, as it did for the teacher). Reserved specials
nothing emits (Gemma's thousands of `<unusedN>`, markers of other modalities) are dropped like
any rare token, so a Gemma-family vocabulary trims to K = 512. K counts all kept tokens.

The student's ids are the kept teacher ids in ascending order. For an HF tokenizer.json BPE
the trimmed tokenizer is rebuilt: the kept vocab with new ids and the merges whose parts and
result are all kept. A frequent token is added together with the parts its merge needs
(recursively), so every kept token is reachable and `decode(encode(text)) == text` holds for
any text the teacher's tokenizer round-trips. The trimmed tokenizer segments some words into
more pieces than the teacher's did; those sequences are still valid teacher input through
`Trim.teacher_ids`, which is how a teacher scores the student's token stream.

Shape letters: V teacher vocab, U student (kept) vocab, ... any token layout.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from distill import losses
from distill.data import tokenizer as tokenizers
from distill.errors import ConfigError


@dataclasses.dataclass
class Trim:
  kept: np.ndarray  # [U'] teacher ids the student's tokenizer can produce, ascending
  rows: np.ndarray  # [U] teacher embedding rows of the student: kept, then padding rows
  tokenizer: tokenizers.Tokenizer
  teacher_vocab: int

  def teacher_to_student(self) -> np.ndarray:
    """[V] int32: the student id of each teacher id, -1 where dropped."""
    out = np.full((self.teacher_vocab,), -1, np.int32)
    out[self.kept] = np.arange(self.kept.size, dtype=np.int32)
    return out

  def teacher_ids(self, student_ids):
    """Student token ids -> the same tokens' teacher ids (works on numpy and traced arrays)."""
    return jnp.asarray(self.kept, jnp.int32)[student_ids]


def _hf_json(tok) -> dict:
  with open(tok._model_path()) as f:  # pylint: disable=protected-access
    return json.load(f)


def _byte_level(j: dict) -> bool:
  def has(node):
    if isinstance(node, dict):
      return node.get("type") == "ByteLevel" or any(has(v) for v in node.values())
    if isinstance(node, list):
      return any(has(v) for v in node)
    return False
  return has(j.get("pre_tokenizer")) or has(j.get("decoder"))


def _byte_level_alphabet() -> set[str]:
  # GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n.
  keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
          list(range(ord("®"), ord("ÿ") + 1)))
  out, n = [], 0
  for b in range(256):
    if b in keep:
      out.append(chr(b))
    else:
      out.append(chr(256 + n))
      n += 1
  return set(out)


def _written(node) -> set[str]:
  """The strings a tokenizer.json component writes or looks for (Replace pattern and content,
  Metaspace replacement, Prepend), e.g. Gemma's and Llama's "▁"."""
  if isinstance(node, list):
    return set().union(*map(_written, node))
  if not isinstance(node, dict):
    return set()
  out = {v for k, v in node.items()
         if k in ("content", "String", "replacement", "prepend") and isinstance(v, str)}
  return out.union(*map(_written, node.values()))


def _used_specials(tok, j: dict, counts: np.ndarray | None) -> set[int]:
  """The added tokens something emits: BOS/EOS/PAD/UNK, the ones the chat template writes, the
  ones the data contain (`counts` > 0). Reserved ones (Gemma's `<unusedN>`, markers of other
  modalities) that nothing emits are not among them."""
  ids = {i for i in (tok.bos_id, tok.eos_id, tok.pad_id) if i is not None}
  unk = j["model"].get("unk_token")
  if unk in j["model"]["vocab"]:
    ids.add(j["model"]["vocab"][unk])
  template = getattr(tok, "chat_template", None) or ""
  for a in j.get("added_tokens", []):
    seen = counts is not None and a["id"] < counts.size and counts[a["id"]] > 0
    if (template and a["content"] in template) or seen:
      ids.add(a["id"])
  return ids


def required_ids(tok, counts: np.ndarray | None = None) -> np.ndarray:
  """Ids no trim may drop: the used specials (`_used_specials`; with `counts`, the data's too),
  and what lets any text encode: the `<0xNN>` byte fallbacks with the characters the
  normalizer and decoder write (SentencePiece's "▁"), the byte-level alphabet, else every
  single-character token."""
  if isinstance(tok, tokenizers.ByteTokenizer):
    return np.arange(tok.vocab_size)  # every id is a byte or a special
  if not isinstance(tok, tokenizers.HFTokenizer):
    raise ConfigError(f"--vocab trimming supports the byte tokenizer and HF tokenizer.json BPE, "
                      f"not {type(tok).__name__}; leave --vocab unset")
  j = _hf_json(tok)
  model = j["model"]
  if model.get("type") != "BPE":
    raise ConfigError(f"--vocab trimming supports HF BPE tokenizers, not {model.get('type')}; "
                      "leave --vocab unset")
  vocab = model["vocab"]
  ids = _used_specials(tok, j, counts)
  fallback = {f"<0x{b:02X}>" for b in range(256)}
  if _byte_level(j):
    ids |= {vocab[s] for s in _byte_level_alphabet() if s in vocab}
  elif model.get("byte_fallback") and fallback <= set(vocab):
    written = set().union(*(_written(j.get(k)) for k in ("normalizer", "pre_tokenizer",
                                                            "decoder")))
    ids |= {vocab[s] for s in fallback | written if s in vocab}
  else:
    ids |= {vocab[s] for s in fallback if s in vocab}
    ids |= {i for s, i in vocab.items() if len(s) == 1}
  return np.asarray(sorted(ids), np.int64)


def check_k(tok, k: int, counts: np.ndarray | None = None) -> None:
  n = required_ids(tok, counts).size
  if k < n:
    raise ConfigError(f"--vocab={k} is smaller than the {n} special and byte-fallback tokens "
                      f"that must stay; give --vocab >= {n}")


def count_ids(window_ids, rows, vocab: int, chunk: int = 256) -> np.ndarray:
  """[V] token counts over the transfer windows (`data.train_windows`)."""
  counts = np.zeros((vocab,), np.int64)
  for s in range(0, len(window_ids), chunk):
    b = rows(list(window_ids[s:s + chunk]))
    counts += np.bincount(b["inputs"][b["mask"] > 0].reshape(-1), minlength=vocab)[:vocab]
  return counts


def select(tok, counts: np.ndarray, k: int) -> np.ndarray:
  """Kept teacher ids: required ones, then the most frequent with their merge parts, <= k."""
  check_k(tok, k, counts)
  kept = set(required_ids(tok, counts).tolist())
  parents = {}
  if isinstance(tok, tokenizers.HFTokenizer):
    model = _hf_json(tok)["model"]
    vocab = model["vocab"]
    for a, b in tokenizers.bpe_merges(model):
      r = vocab.get(tokenizers.bpe_joined(model, a, b))
      if r is not None and r not in parents and a in vocab and b in vocab:
        parents[r] = (vocab[a], vocab[b])

  def closure(i, acc):
    if i in kept or i in acc:
      return
    acc.add(i)
    for part in parents.get(i, ()):
      closure(part, acc)

  order = np.lexsort((np.arange(counts.size), -counts))  # frequent first, ties by id
  for i in order:
    if counts[i] <= 0 or len(kept) >= k:
      break
    need = set()
    closure(int(i), need)
    if len(kept) + len(need) <= k:
      kept |= need
  return np.asarray(sorted(kept), np.int64)


def _remap_ids(node, new_id):
  """Post-processor special-token ids (TemplateProcessing `ids`, Roberta/Bert `sep`/`cls`)."""
  if isinstance(node, dict):
    out = {}
    for key, v in node.items():
      if key == "ids" and isinstance(v, list):
        out[key] = [new_id[i] for i in v]
      elif key in ("sep", "cls") and isinstance(v, list) and len(v) == 2:
        out[key] = [v[0], new_id[v[1]]]
      else:
        out[key] = _remap_ids(v, new_id)
    return out
  if isinstance(node, list):
    return [_remap_ids(v, new_id) for v in node]
  return node


def _trimmed_hf(tok, kept: np.ndarray, directory: str) -> tokenizers.HFTokenizer:
  j = _hf_json(tok)
  model = j["model"]
  new_id = {int(t): s for s, t in enumerate(kept.tolist())}
  vocab = {s: new_id[i] for s, i in model["vocab"].items() if i in new_id}
  strings = set(vocab)
  merges = [m for m, (a, b) in zip(model["merges"], tokenizers.bpe_merges(model))
            if a in strings and b in strings and tokenizers.bpe_joined(model, a, b) in strings]
  model = dict(model, vocab=vocab, merges=merges)
  added = [dict(a, id=new_id[a["id"]]) for a in j.get("added_tokens", []) if a["id"] in new_id]
  j = dict(j, model=model, added_tokens=added,
           post_processor=_remap_ids(j.get("post_processor"), new_id))
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "tokenizer.json")
  with open(path, "w") as f:
    json.dump(j, f, ensure_ascii=False)
  out = tokenizers.HFTokenizer(path, bos_token=tok._token("bos"),  # pylint: disable=protected-access
                               eos_token=tok._token("eos"), pad_token=tok._token("pad"))  # pylint: disable=protected-access
  out.chat_template = getattr(tok, "chat_template", None)  # same specials, same template
  return out.with_add_bos(tok.add_bos)  # and the same start-of-sequence convention


def trim(tok, counts: np.ndarray, k: int, workdir: str, model_vocab: int | None = None,
         multiple: int = 8) -> Trim:
  """The kept ids, the student's embedding rows and its tokenizer (written under `workdir`).

  Embedding rows past the kept ids (padding to a multiple of `multiple`) copy the teacher's
  own padding rows, else its least frequent dropped rows: no text maps to them, and the
  teacher trained them to score low, which a zero row (logit 0) would not.
  """
  kept = select(tok, counts, k)
  model_vocab = model_vocab or counts.size
  size = -(-kept.size // multiple) * multiple
  dropped = np.setdiff1d(np.arange(model_vocab), kept)
  pad_rows = dropped[dropped >= tok.vocab_size]
  rest = dropped[dropped < tok.vocab_size]
  rest = rest[np.lexsort((rest, counts[rest]))]  # least frequent first
  filler = np.concatenate([pad_rows, rest])[:size - kept.size]
  if isinstance(tok, tokenizers.ByteTokenizer):
    new_tok = tok  # every byte id is required: nothing to rebuild
  else:
    new_tok = _trimmed_hf(tok, kept, os.path.join(workdir, "trimmed_tokenizer"))
  return Trim(kept=kept, rows=np.concatenate([kept, filler]).astype(np.int64),
              tokenizer=new_tok, teacher_vocab=model_vocab)


def trim_params(params, cfg, t: Trim):
  """Embedding (and unembedding) rows of the kept ids; returns (params, config)."""
  host = jax.device_get(params)
  out = dict(host, embed=np.asarray(host["embed"])[t.rows])
  if "unembed" in host:
    out["unembed"] = np.asarray(host["unembed"])[:, t.rows]
  return out, cfg.replace(vocab_size=int(t.rows.size))


def student_targets(teacher_logits, kept):
  """Teacher log-probs at T = 1 on the kept ids [U'] (`Trim.kept`), in student id space:
  (ids [..., U'], log-probs [..., U']) for `losses.sparse_distill_objective`. The mass on
  dropped ids is the missing tail: renormalized away or put in the tail bucket, the same
  rules as top-k targets.
  """
  logp = jax.nn.log_softmax(teacher_logits.astype(jnp.float32), axis=-1)
  kept = jnp.asarray(kept, jnp.int32)
  lp = jnp.take(logp, kept, axis=-1)
  ids = jnp.broadcast_to(jnp.arange(kept.size, dtype=jnp.int32), lp.shape)
  return ids, lp


def distill_loss(params, batch, teacher_params, step, *, student, teacher, cfg, kept):
  """`train.distill_loss` for a trimmed-vocab student: batches hold student ids.

  The teacher reads the same tokens by their teacher ids (`kept[ids]`); its distribution on
  the kept ids is the target, the mass on dropped ids the tail (`cfg.tail`: renormalize or
  tail_bucket). `kept` [U'] as in `Trim.kept`.
  """
  alpha, temperature = cfg.at(step)
  t_logits = jax.lax.stop_gradient(
      teacher.apply(teacher_params, jnp.asarray(kept, jnp.int32)[batch["inputs"]]))
  ids, lp = student_targets(t_logits, kept)
  loss, metrics = losses.sparse_distill_objective(
      student.apply(params, batch["inputs"]), ids, lp, batch["targets"], mask=batch["mask"],
      kind=cfg.kind, alpha=alpha, temperature=temperature, beta=cfg.beta, skew=cfg.skew,
      scale_by_t2=cfg.scale_by_t2, tail=cfg.tail)
  return loss, dict(metrics, alpha=alpha, temperature=temperature)
