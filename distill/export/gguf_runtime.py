"""A GGUF file run by llama.cpp itself (through llama-cpp-python), for the export's checks.

  m = gguf_runtime.LlamaCpp("runs/tiny/export/phone-gguf/student-f16.gguf")
  m.logits(ids)              # [T, V] float32: llama.cpp's logits at every position
  m.greedy(prompt_ids, 64)   # argmax continuation, no EOS stop (compared token for token)
  m.tokenize("text")         # llama.cpp's own tokenizer over the file's vocabulary
  m.speed(prompt_len=128, new_tokens=64)   # prefill and decode tokens/s on this CPU

  draft = gguf_runtime.Drafter(gguf_runtime.LlamaCpp("student-f16.gguf"), k=4)
  t = gguf_runtime.LlamaCpp("teacher-f16.gguf", draft=draft)
  t.generate(prompt_ids, 64)  # llama-cpp-python's own speculative loop; draft.stats() after

llama-cpp-python verifies drafts itself (`Llama(draft_model=...)`: one teacher forward over the
last token and the drafts, kept while they match its own choices, so greedy output is the
teacher's), but ships only prompt-lookup drafting; `Drafter` is the draft-model half: a second
GGUF (the distilled student) decoding k greedy tokens through its own KV cache, which it trims
to the prefix it shares with each new request.

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
               logits_all: bool = True, draft=None):
    llama_cpp = llama_cpp_module()
    if not os.path.isfile(path):
      raise UsageError(f"GGUF file {path} does not exist; write it with python -m "
                       "distill.export --format=gguf")
    threads = threads or max(1, min(4, os.cpu_count() or 1))
    self.n_ctx = n_ctx
    self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                               logits_all=logits_all, n_threads=threads,
                               n_threads_batch=threads, seed=0, verbose=False,
                               draft_model=draft)
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

  def generate(self, prompt_ids, new_tokens: int) -> list[int]:
    """Greedy continuation through llama-cpp-python's generation loop (speculative when the
    file was opened with a `draft`); no EOS stop."""
    self.llm.reset()
    out = []
    for tok in self.llm.generate([int(i) for i in prompt_ids], temp=0.0, top_k=1,
                                 repeat_penalty=1.0, reset=True):
      out.append(int(tok))
      if len(out) == new_tokens:
        break
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


class Drafter:
  """A llama-cpp-python draft model (its `LlamaDraftModel` protocol: token ids in, proposed
  ids out) over a second GGUF: `k` greedy tokens per call through its own KV cache.

  It also counts what the teacher kept: each call's ids extend the previous call's ids by the
  accepted drafts plus the teacher's own token, so a round is resolved one call later.
  """

  def __init__(self, model: LlamaCpp, k: int = 4):
    if k < 1:
      raise UsageError(f"draft k={k}: draft at least one token per teacher call (e.g. 4)")
    self.model, self.k = model, k
    self.reset_stats()

  def reset_stats(self):
    self.rounds = self.drafted = self.accepted = 0
    self._last = None  # (ids given, ids proposed) of the previous call

  def stats(self) -> dict:
    """Resolved rounds: drafts proposed and kept; tokens per teacher call = kept + 1."""
    rate = self.accepted / self.drafted if self.drafted else 0.0
    per_call = (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0
    return {"teacher_calls": self.rounds, "drafted": self.drafted, "accepted": self.accepted,
            "acceptance_rate": round(rate, 4), "tokens_per_call": round(per_call, 4)}

  def _resolve(self, ids: list[int]):
    given, proposed = self._last
    if len(ids) <= len(given) or ids[:len(given)] != given:
      return  # a new generation, not the next round of the last one
    got = ids[len(given):]
    kept = 0
    while kept < min(len(proposed), len(got) - 1) and got[kept] == proposed[kept]:
      kept += 1
    self.rounds += 1
    self.drafted += len(proposed)
    self.accepted += kept

  def __call__(self, input_ids, /, **kwargs):
    del kwargs
    ids = [int(i) for i in input_ids]
    if self._last is not None:
      self._resolve(ids)
    llm = self.model.llm
    k = min(self.k, self.model.n_ctx - len(ids))
    if k <= 0:
      self._last = None
      return np.zeros(0, np.intc)
    cached = llm.input_ids[:llm.n_tokens].tolist()
    same = 0
    while same < min(len(cached), len(ids)) and cached[same] == ids[same]:
      same += 1
    llm.n_tokens = min(same, len(ids) - 1)  # eval() drops the cache past n_tokens
    llm.eval(ids[llm.n_tokens:])
    out = []
    for i in range(k):
      out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
      if i + 1 < k:
        llm.eval(out[-1:])
    self._last = (ids, out)
    return np.asarray(out, np.intc)
