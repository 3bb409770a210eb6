"""Vocabulary alignment between checkpoints of one tokenizer family."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from distill.models import sharding
from distill.data import tokenizer as tokenizers
from distill.models.hf.params import default_mesh
from distill.models.transformer import LM


class VocabMismatchError(ValueError):
  """Two models whose tokenizers differ: distillation over shared ids would be meaningless."""


def same_tokenizer(a: tokenizers.Tokenizer, b: tokenizers.Tokenizer) -> bool:
  """True when both map the shared ids to the same strings (same file, or same pieces)."""
  if a.fingerprint == b.fingerprint:
    return True
  if type(a) is not type(b) or a.vocab_size != b.vocab_size:
    return False
  if (a.bos_id, a.eos_id) != (b.bos_id, b.eos_id):
    return False
  return all(a.decode([i]) == b.decode([i]) for i in range(a.vocab_size))


def align_vocab(lm: LM, params: dict, vocab_size: int, *, tokenizer=None, other_tokenizer=None,
                mesh=None):
  """Resize `lm`'s embedding (and unembedding) to `vocab_size` rows; returns (LM, params).

  Checkpoints of one tokenizer family often pad their embeddings differently (Qwen2.5: 151936
  rows for small models, 152064 for 7B+, over 151665 real tokens). Distilling between them
  needs one vocab axis: the rows beyond the tokenizer are padding no text ever maps to, so
  they are dropped (shrinking) or added (growing; embedding rows zero, unembedding columns
  zero, i.e. logit 0 -- mask ids >= tokenizer.vocab_size in the loss when that matters).

  With `tokenizer` and `other_tokenizer` given, they must be the same tokenizer
  (`same_tokenizer`) and `vocab_size` must cover every real id, else `VocabMismatchError`:
  different tokenizers give different meanings to the same id and cannot be aligned.
  """
  cfg = lm.cfg
  if tokenizer is not None and other_tokenizer is not None:
    if not same_tokenizer(tokenizer, other_tokenizer):
      raise VocabMismatchError(
          f"teacher and student tokenizers differ ({type(tokenizer).__name__} "
          f"{tokenizer.vocab_size} ids vs {type(other_tokenizer).__name__} "
          f"{other_tokenizer.vocab_size} ids); distill with the teacher's tokenizer "
          "(config.data.tokenizer = the teacher's tokenizer.json)")
  if tokenizer is not None and vocab_size < tokenizer.vocab_size:
    raise VocabMismatchError(f"vocab_size {vocab_size} would cut real tokens "
                             f"(tokenizer has {tokenizer.vocab_size})")
  if vocab_size == cfg.vocab_size:
    return lm, params
  new = LM(cfg.replace(vocab_size=vocab_size))
  shard = sharding.param_shardings(new, mesh or default_mesh())

  def resize(x, axis, target_sharding):
    # Whole-matrix reshuffle in one jit: stays sharded, never gathered on one device.
    def fn(x):
      if x.shape[axis] >= vocab_size:
        return jax.lax.slice_in_dim(x, 0, vocab_size, axis=axis)
      pad = [(0, 0)] * x.ndim
      pad[axis] = (0, vocab_size - x.shape[axis])
      return jnp.pad(x, pad)
    return jax.jit(fn, out_shardings=target_sharding)(x)

  out = dict(params)
  out["embed"] = resize(params["embed"], 0, shard["embed"])
  if not cfg.tie_embeddings:
    out["unembed"] = resize(params["unembed"], 1, shard["unembed"])
  return new, out
