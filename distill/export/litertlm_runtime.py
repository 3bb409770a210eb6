"""Runs a .litertlm through LiteRT-LM's own engine (`litert_lm`, CPU): generation, checks, latency.

This is what `distill.generate --litertlm`, the export stage's bundle check and
bench/litertlm_latency.py use. No JAX or TensorFlow here.

The Python API returns text, not ids, so token-level comparisons decode the engine's text
with our tokenizer; the bundled tokenizer is checked to give our ids first, and for the byte
tokenizer on ASCII text the two are the same thing.

`cache_dir=":nocache"`: otherwise the CPU executor writes an XNNPACK weight cache file next
to the model on every load, littering the export folder.
"""
from __future__ import annotations

import os
from typing import Iterator
from distill.export.litertlm import engine_module

NO_CACHE = ":nocache"


def _lm():
  lm = engine_module()
  # The C library logs every loader step at INFO/WARNING to stderr.
  lm.set_min_log_severity(lm.LogSeverity.ERROR)
  return lm


def open_engine(path: str, threads: int | None = None):
  if not os.path.isfile(path):
    raise ValueError(f"{path!r} does not exist; give the .litertlm written by "
                     "`python -m distill.export --format=litertlm`")
  lm = _lm()
  try:
    return lm.Engine(path, backend=lm.Backend.CPU(thread_count=threads), cache_dir=NO_CACHE)
  except RuntimeError as e:
    raise ValueError(f"LiteRT-LM cannot load {path}: {e}; re-export it with "
                     "`python -m distill.export --format=litertlm`") from None


def _session(engine, max_new_tokens: int):
  lm = _lm()
  # Greedy: the CPU sampler is TOP_P only; k=1 keeps the arg-max token (see litertlm.py).
  return engine.create_session(apply_prompt_template=False,
                               sampler_config=lm.SamplerConfig(top_k=1, top_p=1.0,
                                                               temperature=1.0, seed=0),
                               max_output_tokens=max_new_tokens)


def stream(engine, prompt: str, max_new_tokens: int) -> Iterator[str]:
  """Text chunks of the greedy continuation of `prompt` (the engine puts the bundle's start
  token first, if it declares one, and stops at EOS)."""
  s = _session(engine, max_new_tokens)
  try:
    s.run_prefill([prompt])
    for r in s.run_decode_async():
      yield from r.texts
  finally:
    s.close()


def generate(engine, prompt: str, max_new_tokens: int) -> str:
  return "".join(stream(engine, prompt, max_new_tokens))


def tokenizer_matches(engine, tokenizer, texts) -> dict:
  """Whether the bundled tokenizer gives our ids (no specials) on each text."""
  same = [engine.tokenize(t) == tokenizer.encode(t) for t in texts]
  return {"texts": len(texts), "identical": int(sum(same)), "all_identical": all(same)}


def greedy_matches(engine, tokenizer, prompts: list[str], references: list[list[int]],
                   eos_id: int | None) -> dict:
  """Engine greedy text vs reference greedy ids (cut at EOS), per prompt."""
  rows, identical = [], 0
  for prompt, ref in zip(prompts, references):
    ref = ref[:ref.index(eos_id)] if eos_id in ref else ref
    want = tokenizer.decode(ref)
    got = generate(engine, prompt, len(ref) or 1)
    same = got == want
    identical += same
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b),
                 None if same else min(len(got), len(want)))
    rows.append({"prompt_chars": len(prompt), "new_tokens": len(ref), "identical": same,
                 "first_mismatch_char": first})
  return {"prompts": len(prompts), "identical_prompts": identical,
          "all_identical": identical == len(prompts), "per_prompt": rows}


def next_token_agreement(engine, tokenizer, windows, positions: int) -> dict:
  """Teacher-forced top-1 through the engine: prefill each prefix, decode one token.

  A fresh session per prefix (the engine keeps no way to rewind), so this is O(positions)
  sessions: keep `positions` small. Prefixes start at 1 token (after the bundle's start token,
  if any).
  Returns the predicted ids so the caller can compare them with JAX's.
  """
  preds = []
  for w in windows:
    row = []
    for n in range(1, min(positions, len(w)) + 1):
      text = generate(engine, tokenizer.decode(w[:n]), 1)
      ids = tokenizer.encode(text)
      row.append(ids[0] if len(ids) == 1 else -1)  # -1: not one token (counts as a miss)
    preds.append(row)
  return {"predictions": preds}


def benchmark(path: str, *, prefill_tokens: int, decode_tokens: int,
              threads: int | None = None) -> dict:
  """LiteRT-LM's own benchmark (litert_lm.Benchmark): prefill and decode tokens/s."""
  lm = _lm()
  info = lm.Benchmark(model_path=path, backend=lm.Backend.CPU(thread_count=threads),
                      prefill_tokens=prefill_tokens, decode_tokens=decode_tokens,
                      cache_dir=NO_CACHE).run()
  return {"prefill_tokens": info.last_prefill_token_count,
          "prefill_tokens_per_s": round(info.last_prefill_tokens_per_second, 1),
          "decode_tokens": info.last_decode_token_count,
          "decode_tokens_per_s": round(info.last_decode_tokens_per_second, 1),
          "time_to_first_token_s": round(info.time_to_first_token_in_second, 5),
          "init_s": round(info.init_time_in_second, 4), "num_threads": threads,
          "runtime": "LiteRT-LM engine benchmark (litert_lm.Benchmark), CPU"}
