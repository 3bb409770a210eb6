"""Hugging Face checkpoints (`config.json` + `*.safetensors`) -> the project's transformer.

Families: llama (Llama 2/3, Mistral), qwen2, qwen3, gemma, gemma2, gemma3 (text, including
the language model inside a multimodal `gemma3` checkpoint) and gpt2. Each maps onto
`ModelConfig` switches; no family has its own forward code.

Loading never holds the model whole on one device nor twice on the host: each tensor is read
on its own (`pread` from the file, no mmap, so page cache never counts as resident memory),
reshaped/transposed on the host into the project's layout, cast to the target dtype and put
straight into its shards with `jax.make_array_from_callback`. Peak host memory is about the
loaded model plus a couple of its largest tensor (`bench/hf_load_memory.py` measures it).

Only safetensors are read: pickled weights (`.bin`, `.pt`, `.pth`) are refused because
unpickling runs code. HF's q/k projections use the half-split rotary layout, the same as
`ops.rope`, so they load without permutation (the parity tests check it).

Public: `load(path, mesh, dtype)` -> (LM, params, tokenizer), `load_teacher(path, mesh, dtype)`,
`model_config(hf_config)`, `load_tokenizer(path)`, `align_vocab(...)`; `distill.load("hf:...")`
wraps `load` in a Model.
"""
from __future__ import annotations

import os

import jax.numpy as jnp

from distill.models import sharding
# One module per concern (config, safetensors, params, tokenizer, vocab); this package is
# their public face.
from distill.models.hf.config import FAMILIES, model_config, read_config
from distill.models.hf.params import Layout, default_mesh, flatten, layout, load_params
from distill.models.hf.safetensors import Checkpoint
from distill.models.hf.tokenizer import load_tokenizer
from distill.models.hf.vocab import VocabMismatchError, align_vocab, same_tokenizer
from distill.models.transformer import LM

__all__ = ["FAMILIES", "Checkpoint", "Layout", "VocabMismatchError", "align_vocab",
           "default_mesh", "flatten", "layout", "load", "load_params", "load_teacher",
           "load_tokenizer", "model_config", "read_config", "same_tokenizer"]


def load(path: str, mesh, dtype: str = "bfloat16", *, with_tokenizer: bool = True):
  """(LM, params sharded over `mesh` in `dtype`, tokenizer or None)."""
  path = os.path.abspath(os.path.expanduser(path))
  hf = read_config(path)
  ckpt = Checkpoint(path)  # first: refusing pickles beats complaining about their config
  cfg = model_config(hf, jnp.dtype(dtype).name)
  tok = load_tokenizer(path, hf, vocab=cfg.vocab_size) if with_tokenizer else None
  lm = LM(cfg)
  params = load_params(ckpt, lm, "gpt2" if hf["model_type"] == "gpt2" else "llama",
                       sharding.param_shardings(lm, mesh))
  return lm, params, tok


def load_teacher(path: str, mesh, dtype: str = "bfloat16"):
  """For `config.teacher.checkpoint = "hf:/path"`: (LM, params in `dtype` on `mesh`, tokenizer)."""
  return load(path, mesh, dtype)
