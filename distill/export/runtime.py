"""Runs an exported .tflite with LiteRT from its model card: numpy and ai_edge_litert only.

This is what `distill.generate --tflite`, the verification and the latency bench use, and
what an app does on device:

  1. zero caches of the card's shape;
  2. `prefill` the prompt in chunks of P (the last chunk right-padded); a chunk's start is
     clamped to max_context - P so it always fits, re-feeding a few already-cached tokens
     at their own positions, which rewrites the same keys and values;
  3. `decode` one token at a time at input_pos = number of tokens so far, until max_context.

Padded tokens write junk into cache slots past the prompt; the causal mask never lets a
query see a slot beyond its own position, and decode overwrites each slot before it is used.
"""
from __future__ import annotations

import json
import os
import time
from typing import Iterator

import numpy as np

from distill.export import quiet_tf

CARD_NAME = "model_card.json"


class CardError(ValueError):
  """The model card beside a .tflite is missing or unusable (a usage error: exit code 2)."""


def card_path(tflite_path: str) -> str:
  return os.path.join(os.path.dirname(os.path.abspath(tflite_path)), CARD_NAME)


def read_card(tflite_path: str) -> dict:
  if not os.path.isfile(tflite_path):
    raise CardError(f"{tflite_path!r} does not exist; give the .tflite written by "
                    "`python -m distill.export`, e.g. runs/tiny/export/watch/student-int8.tflite")
  path = card_path(tflite_path)
  if not os.path.isfile(path):
    raise CardError(f"no {CARD_NAME} beside {tflite_path}; keep the exported folder together "
                    "or re-export with `python -m distill.export`")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise CardError(f"{path} is corrupt ({e}); re-export") from None


class LiteRTModel:
  """A .tflite in the prefill/decode convention, driven by the names in its card."""

  def __init__(self, tflite_path: str, card: dict | None = None, num_threads: int | None = None):
    from ai_edge_litert import interpreter as litert  # pylint: disable=import-outside-toplevel
    self.card = card if card is not None else read_card(tflite_path)
    self.path = tflite_path
    self.num_threads = num_threads or default_threads()
    self.interpreter = litert.Interpreter(model_path=tflite_path, num_threads=self.num_threads)
    sigs = self.card["signatures"]
    self._prefill = self.interpreter.get_signature_runner(sigs["prefill"]["name"])
    self._decode = self.interpreter.get_signature_runner(sigs["decode"]["name"])
    # TFLite applies its XNNPACK delegate at the first invoke and announces it on stderr.
    self._first_call = True
    self.max_context = int(self.card["max_context"])
    self.prefill_len = int(self.card["prefill_len"])
    self.vocab_size = int(self.card["vocab_size"])
    self.cache_names = list(self.card["kv_cache"]["names"])
    self.cache_shape = tuple(self.card["kv_cache"]["shape"])
    self.cache_dtype = np.dtype(self.card["kv_cache"]["dtype"])

  def new_cache(self) -> dict[str, np.ndarray]:
    return {n: np.zeros(self.cache_shape, self.cache_dtype) for n in self.cache_names}

  def _run(self, runner, tokens, start, cache):
    t = tokens.shape[1]
    args = dict(tokens=tokens, input_pos=np.arange(start, start + t, dtype=np.int32), **cache)
    if self._first_call:  # only the first: a filter on every call would skew the timings
      self._first_call = False
      with quiet_tf.native_stderr():
        out = runner(**args)
    else:
      out = runner(**args)
    return out["logits"], {n: out[n] for n in self.cache_names}

  def prefill(self, ids, cache, pos: int = 0, *, all_logits: bool = False):
    """Feeds ids[pos:] (ids[:pos] already cached); returns (logits rows, cache).

    Rows are for every fed token when all_logits, else only the last one ([V]).
    """
    ids = np.asarray(ids, np.int32)
    n, p = len(ids), self.prefill_len
    if n > self.max_context:
      raise ValueError(f"{n} tokens do not fit max_context={self.max_context}")
    if pos >= n:
      raise ValueError("nothing to prefill")
    rows = []
    while pos < n:
      start = min(pos, self.max_context - p)
      chunk = ids[start:start + p]
      tokens = np.zeros((1, p), np.int32)
      tokens[0, :len(chunk)] = chunk
      logits, cache = self._run(self._prefill, tokens, start, cache)
      rows.append(logits[0, pos - start:len(chunk)])
      pos = start + len(chunk)
    rows = np.concatenate(rows)
    return (rows if all_logits else rows[-1]), cache

  def decode(self, token: int, pos: int, cache):
    """One token at slot `pos` -> (logits [V], cache)."""
    logits, cache = self._run(self._decode, np.asarray([[token]], np.int32), pos, cache)
    return logits[0, 0], cache

  def generate_ids(self, prompt_ids, max_new_tokens: int, *, eos_id: int | None = None,
                   stop_at_eos: bool = True) -> Iterator[int]:
    """Greedy tokens after the prompt, streamed; stops at EOS or when the context is full."""
    ids = list(prompt_ids) or [self.card.get("bos_id") or 0]
    if len(ids) >= self.max_context:
      raise ValueError(f"prompt of {len(ids)} tokens leaves no room in max_context="
                       f"{self.max_context}; shorten it")
    last, cache = self.prefill(ids, self.new_cache())
    pos = len(ids)
    for i in range(max_new_tokens):
      tok = int(np.argmax(last))
      yield tok
      if (stop_at_eos and tok == eos_id) or pos >= self.max_context or i + 1 == max_new_tokens:
        return
      last, cache = self.decode(tok, pos, cache)
      pos += 1

  def teacher_forced_logits(self, ids) -> np.ndarray:
    """[len(ids), V] logits for every position of `ids` (one pass of chunked prefill)."""
    return self.prefill(ids, self.new_cache(), all_logits=True)[0]

  def latency(self, *, decode_steps: int = 32, repeats: int = 3) -> dict:
    """Best-of-`repeats` prefill (one full P chunk) and decode throughput in tokens/s."""
    p = self.prefill_len
    tokens = np.full((1, p), 3, np.int32)
    cache = self.new_cache()
    self._run(self._prefill, tokens, 0, cache)  # first call allocates and delegates
    best_pre, best_dec = float("inf"), float("inf")
    steps = max(1, min(decode_steps, self.max_context - p))
    for _ in range(repeats):
      t0 = time.perf_counter()
      _, cache = self._run(self._prefill, tokens, 0, self.new_cache())
      best_pre = min(best_pre, time.perf_counter() - t0)
      t0 = time.perf_counter()
      for i in range(steps):
        _, cache = self._run(self._decode, tokens[:, :1], p + i, cache)
      best_dec = min(best_dec, (time.perf_counter() - t0) / steps)
    return {"prefill_tokens_per_s": round(p / best_pre, 1),
            "prefill_ms_per_chunk": round(1e3 * best_pre, 3),
            "decode_tokens_per_s": round(1.0 / best_dec, 1),
            "decode_ms_per_token": round(1e3 * best_dec, 3),
            "decode_measured_from_pos": p, "decode_steps": steps,
            "num_threads": self.num_threads, "runtime": "ai_edge_litert (XNNPACK), this CPU"}


def default_threads() -> int:
  return max(1, min(4, os.cpu_count() or 1))
