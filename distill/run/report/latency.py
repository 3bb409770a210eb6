"""Per-token decode latency, measured on this CPU while the report is written.

JAX (`distill.inference.model.Model`'s compiled cached step) and LiteRT (an exported .tflite's `decode`
signature): batch 1, greedy, `DECODE_TOKENS` timed steps after a warm-up, wall and CPU seconds.
"""
from __future__ import annotations

import logging
import os
import time
from distill.export.runtime import LiteRTModel
from distill.inference import model as inference
from distill.run import settings

# Timed greedy decode steps per model: enough to average out timer noise on tiny models while
# keeping the whole measurement to seconds.
DECODE_TOKENS = 32


def _model_dir(workdir: str, config, name: str) -> str:
  if name == "teacher" and len(settings.teachers(config)) == 1:  # that teacher alone
    one = settings.teachers(config)[0]
    return one.checkpoint or os.path.join(workdir, one.name)
  if name == "teacher" and config.teacher.checkpoint:
    return config.teacher.checkpoint  # a stage directory or "hf:/path"
  return os.path.join(workdir, name)  # an ensemble has none: its members decode, not it


def jax_decode_latency(model, tokens: int = DECODE_TOKENS, prompt_ids=None,
                       cache_len: int = 0) -> dict:
  """Greedy decode at batch 1 with `distill.inference.model.Model`'s compiled cached step.

  The prompt's prefill and one decode step compile and warm up; the next `tokens` steps are
  timed in wall and CPU seconds (process_time counts every thread). Given the report
  samples' prompt and cache length, the shapes are the ones `Model.generate` already
  compiled for the samples, so a Model sharing their compiled step pays no compile here.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  lm = model.lm
  prompt = list(prompt_ids or []) or [model.tokenizer.bos_id or 0]
  total = min(max(cache_len, len(prompt) + tokens + 1), lm.cfg.max_len)
  steps = min(tokens, total - len(prompt) - 1)
  if steps < 1:
    raise ValueError(f"no room to decode after a {len(prompt)}-token prompt in {total} slots")
  cache = lm.init_cache(1, total)
  step = model._step  # pylint: disable=protected-access
  logits, cache = step(model.params, jnp.asarray([prompt], jnp.int32), cache, 0)
  tok = int(np.argmax(np.asarray(logits[0, -1])))
  pos = len(prompt)
  logits, cache = step(model.params, jnp.asarray([[tok]], jnp.int32), cache, pos)
  jax.block_until_ready(logits)
  t0, c0 = time.perf_counter(), time.process_time()
  for pos in range(pos + 1, pos + 1 + steps):
    tok = int(np.argmax(np.asarray(logits[0, -1])))  # greedy: the host sees every token
    logits, cache = step(model.params, jnp.asarray([[tok]], jnp.int32), cache, pos)
  jax.block_until_ready(logits)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  return {"runtime": "jax", "decode_ms_per_token": 1e3 * wall / steps,
          "cpu_s_per_1k_tokens": 1e3 * cpu / steps, "decode_steps": steps}


def tflite_decode_latency(path: str, tokens: int = DECODE_TOKENS) -> dict:
  """The same measurement on an exported .tflite through LiteRT (its card beside it)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  m = LiteRTModel(path)
  steps = max(1, min(tokens, m.max_context - 2))
  cache = m.new_cache()
  last, cache = m.decode(m.card.get("bos_id") or 0, 0, cache)  # allocates, warms XNNPACK
  t0, c0 = time.perf_counter(), time.process_time()
  for pos in range(1, steps + 1):
    last, cache = m.decode(int(np.argmax(last)), pos, cache)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  return {"runtime": "litert", "decode_ms_per_token": 1e3 * wall / steps,
          "cpu_s_per_1k_tokens": 1e3 * cpu / steps, "decode_steps": steps,
          "num_threads": m.num_threads}


def measure_latency(workdir: str, rep: dict, config, known: dict | None = None) -> dict:
  """{row name: latency dict}; rows that cannot be measured are left out (logged). Rows in
  `known` are kept as they are, not measured again (the report is written once before the
  export and again after it)."""
  out = dict(known or {})
  prompts = tuple(config.eval.prompts) if "eval" in config else ()
  for name in ("teacher", "student"):
    if name not in rep or name in out:
      continue
    try:
      model = inference.load(_model_dir(workdir, config, name))
      # The samples' first prompt and cache length (see Model.generate_ids).
      ids = model.tokenizer.encode(prompts[0]) if prompts else []
      cache_len = len(ids) + int(config.eval.sample_tokens) if ids else 0
      out[name] = jax_decode_latency(model, prompt_ids=ids, cache_len=cache_len)
    except Exception as e:  # pylint: disable=broad-except  # the report must still be written
      logging.warning("[report] JAX latency of %s not measured: %s", name, e)
  for preset, summary in (rep.get("export") or {}).items():
    path = summary.get("file") if isinstance(summary, dict) else None
    if not path or not os.path.exists(path) or f"student/{preset}" in out:
      continue
    try:
      lat = tflite_decode_latency(path)
      lat.update(bytes=summary.get("bytes"), quantization=summary.get("quantization"),
                 file=os.path.basename(path),
                 card_decode_tokens_per_s=summary.get("decode_tokens_per_s"))
      out[f"student/{preset}"] = lat
    except Exception as e:  # pylint: disable=broad-except
      logging.warning("[report] LiteRT latency of %s not measured: %s", path, e)
  return out
