"""A GGUF file run by llama.cpp itself (through llama-cpp-python), for the export's checks.

  m = gguf_runtime.LlamaCpp("runs/tiny/export/phone-gguf/student-f16.gguf")
  m.logits(ids)              # [T, V] float32: llama.cpp's logits at every position
  m.greedy(prompt_ids, 64)   # argmax continuation, no EOS stop (compared token for token)
  m.tokenize("text")         # llama.cpp's own tokenizer over the file's vocabulary
  m.speed(prompt_len=128, new_tokens=64)   # prefill and decode tokens/s on this CPU

`compare(jax_logits, cpp_logits)` gives the figures tests/test_gguf_llamacpp.py and
bench/gguf_llamacpp.py report. llama-cpp-python is optional (requirements-llamacpp.txt) and
imported only here, when a file is opened.
"""
from __future__ import annotations

import os
import time

import numpy as np

from distill.errors import UsageError

INSTALL = "CMAKE_BUILD_PARALLEL_LEVEL=2 pip install -r requirements-llamacpp.txt"


def llama_cpp_module():
  try:
    import llama_cpp  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UsageError(f"running GGUF files in llama.cpp needs llama-cpp-python: {INSTALL}"
                     ) from None
  return llama_cpp


class LlamaCpp:
  """One GGUF file in llama.cpp: a context of `n_ctx` tokens on `threads` CPU threads."""

  def __init__(self, path: str, *, n_ctx: int = 512, threads: int | None = None,
               logits_all: bool = True):
    llama_cpp = llama_cpp_module()
    if not os.path.isfile(path):
      raise UsageError(f"GGUF file {path} does not exist; write it with python -m "
                       "distill.export --format=gguf")
    threads = threads or max(1, min(4, os.cpu_count() or 1))
    self.n_ctx = n_ctx
    self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                               logits_all=logits_all, n_threads=threads,
                               n_threads_batch=threads, seed=0, verbose=False)
    self.n_vocab = int(self.llm.n_vocab())

  def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
    return list(self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False))

  def detokenize(self, ids) -> str:
    return self.llm.detokenize([int(i) for i in ids]).decode("utf-8", errors="replace")

  def logits(self, ids) -> np.ndarray:
    """[T, V] logits of one sequence, all positions (teacher-forced)."""
    ids = [int(i) for i in ids]
    if len(ids) > self.n_ctx:
      raise ValueError(f"{len(ids)} tokens exceed the context of {self.n_ctx}")
    self.llm.reset()
    self.llm.eval(ids)
    return np.array(self.llm.scores[:len(ids)], np.float32)

  def greedy(self, prompt_ids, new_tokens: int) -> list[int]:
    """Argmax continuation of `prompt_ids` through the KV cache (no EOS stop)."""
    self.llm.reset()
    self.llm.eval([int(i) for i in prompt_ids])
    out = []
    for _ in range(new_tokens):
      tok = int(np.argmax(self.llm.scores[self.llm.n_tokens - 1]))
      out.append(tok)
      self.llm.eval([tok])
    return out

  def speed(self, prompt_ids, new_tokens: int, repeats: int = 3) -> dict:
    """Best-of-`repeats` prefill tokens/s (the prompt in one batch) and decode tokens/s
    (`new_tokens` single-token steps after it)."""
    prefill, decode = [], []
    for _ in range(repeats):
      self.llm.reset()
      t0 = time.perf_counter()
      self.llm.eval([int(i) for i in prompt_ids])
      t1 = time.perf_counter()
      tok = int(prompt_ids[-1])
      for _ in range(new_tokens):
        self.llm.eval([tok])
      t2 = time.perf_counter()
      prefill.append(len(prompt_ids) / (t1 - t0))
      decode.append(new_tokens / (t2 - t1))
    return {"prefill_tokens_per_s": round(max(prefill), 1),
            "decode_tokens_per_s": round(max(decode), 1),
            "prompt_tokens": len(prompt_ids), "new_tokens": new_tokens, "repeats": repeats}


def compare(ref: np.ndarray, got: np.ndarray) -> dict:
  """Figures for [T, V] logits against a reference: max |Δ|, its share of the reference's
  range, top-1 agreement."""
  ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
  diff = float(np.abs(ref - got).max())
  span = float(ref.max() - ref.min())
  return {"max_abs_diff": diff, "logits_range": span, "relative": diff / span,
          "top1_agreement": float((ref.argmax(-1) == got.argmax(-1)).mean()),
          "positions": int(ref.shape[0])}
