"""GGUF files (llama.cpp, ollama) -> the project's transformer, through the HF loader.

  lm, params, tok = gguf.load("SmolLM2-135M-Instruct.Q4_1.gguf", mesh, "float32")
  distill.load("gguf:/path/model.gguf")          # api.Model
  config.teacher.checkpoint = "gguf:/path/model.gguf"

A GGUF holds what an HF directory holds, under llama.cpp's names: the config as metadata keys
(`llama.embedding_length`, ...), the tokenizer as metadata arrays, and the weights, often
quantized. This module turns the metadata into the config.json dict `hf.model_config` reads
and presents the weights as a `Checkpoint` that answers HF names, so `hf.load_params` places
them exactly as it places safetensors: one tensor read (`pread`, no mmap), dequantized with
the `gguf` package's reference `gguf.quants.dequantize`, cast and put into its shards, then
dropped. The tokenizer is rebuilt as a tokenizer.json (`tokenizer`).

Modules: reader (the file and its metadata), weights (config + Checkpoint), tokenizer.

What llama.cpp's converter changed and is undone here:
- Llama (and Mistral, which it writes as llama): Q and K rows permuted per head from HF's
  half-split rotary layout to the interleaved one its kernels use -> permuted back.
- Gemma 1/2/3: every RMSNorm weight stored as 1 + w (its kernels multiply by the stored value);
  HF's and our Gemma norms compute (1 + w) -> 1 is subtracted.
- GGUF shapes list the fastest axis first; the reader's arrays are already [out, in] like HF's.

Families: llama (mistral), qwen2, qwen3, gemma, gemma2, gemma3. `gguf` is an optional
dependency (requirements-real.txt); it is imported only when a GGUF is loaded.
"""
from __future__ import annotations

import os

import jax.numpy as jnp

from distill.models import hf, sharding
from distill.models.gguf import tokenizer as gguf_tokenizer
from distill.models.gguf.reader import metadata, open_reader
from distill.models.gguf.weights import ARCHITECTURES, Checkpoint, embedding_rows
from distill.models.transformer import LM

__all__ = ["ARCHITECTURES", "Checkpoint", "load", "load_teacher", "load_tokenizer"]


def load(path: str, mesh, dtype: str = "bfloat16", *, with_tokenizer: bool = True):
  """(LM, params sharded over `mesh` in `dtype`, tokenizer or None)."""
  ckpt = Checkpoint(path)
  cfg = hf.model_config(ckpt.config, jnp.dtype(dtype).name)
  # Tokenizer before weights: a file without one fails in seconds, not after the weights.
  tok = (gguf_tokenizer.load(ckpt.reader, ckpt.meta, ckpt.path, cfg.vocab_size)
         if with_tokenizer else None)
  lm = LM(cfg)
  params = hf.load_params(ckpt, lm, "llama", sharding.param_shardings(lm, mesh))
  return lm, params, tok


def load_tokenizer(path: str):
  """The tokenizer of a GGUF file alone (an HFTokenizer over a generated tokenizer.json), without
  the tokens its embedding has no row for."""
  path = os.path.abspath(os.path.expanduser(path))
  reader = open_reader(path)
  return gguf_tokenizer.load(reader, metadata(reader), path, embedding_rows(reader))


def load_teacher(path: str, mesh, dtype: str = "bfloat16"):
  """For `config.teacher.checkpoint = "gguf:/path"`: (LM, params in `dtype`, tokenizer)."""
  return load(path, mesh, dtype)
