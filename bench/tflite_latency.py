"""LiteRT latency of the tiny student per quantization mode vs the JAX teacher; one JSON line.

  python bench/tflite_latency.py [--workdir=runs/tiny] [--max_context=1024 --prefill_len=128]

Exports `<workdir>/student` in every mode into a temporary folder (phone preset shapes, no
verification: `python -m distill.export` verifies), then measures with ai_edge_litert
(XNNPACK, this CPU): prefill tokens/s for one full P-token chunk and decode tokens/s over 32
steps, best of 3. The JAX teacher's decode tokens/s (jit, same cache length, batch 1) is the
comparison: what the student file buys on a CPU.
"""
import json
import os
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "Run directory with student/ and teacher/.")
_CONTEXT = flags.DEFINE_integer("max_context", 1024, "Cache length of the exported files.")
_PREFILL = flags.DEFINE_integer("prefill_len", 128, "Prefill chunk length P.")
_THREADS = flags.DEFINE_integer("threads", None, "LiteRT threads (default: min(4, cores)).")
_MODES = flags.DEFINE_list("modes", ["fp32", "fp16", "dynamic_int8", "int8", "int4"], "Modes.")


def _jax_decode_tokens_per_s(stage_dir: str, max_context: int, steps: int = 32) -> float:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import distill  # pylint: disable=import-outside-toplevel
  m = distill.load(stage_dir)
  step = jax.jit(m.lm.apply_cached)
  cache = m.lm.init_cache(1, max_context)
  tok = jnp.asarray([[3]], jnp.int32)
  logits, cache = step(m.params, tok, cache, 0)
  logits.block_until_ready()
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    for i in range(steps):
      logits, cache = step(m.params, tok, cache, 1 + i)
    logits.block_until_ready()
    best = min(best, (time.perf_counter() - t0) / steps)
  return round(1.0 / best, 1)


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.ERROR)
  from distill.export import export_stage  # pylint: disable=import-outside-toplevel
  from distill.export.runtime import default_threads  # pylint: disable=import-outside-toplevel
  workdir = _WORKDIR.value
  stage = os.path.join(workdir, "student")
  result = {"bench": "tflite_latency", "workdir": workdir, "max_context": _CONTEXT.value,
            "prefill_len": _PREFILL.value, "threads": _THREADS.value or default_threads(),
            "cpu_count": os.cpu_count(), "modes": {}}
  with tempfile.TemporaryDirectory() as tmp:
    for mode in _MODES.value:
      t0 = time.time()
      try:
        card = export_stage(stage, "phone", os.path.join(tmp, mode), quant=mode,
                            max_context=_CONTEXT.value, prefill_len=_PREFILL.value,
                            budget_mb=1e6, workdir=workdir, level="none",
                            num_threads=_THREADS.value, log=lambda _: None)
      except Exception as e:  # pylint: disable=broad-except
        result["modes"][mode] = {"error": str(e).splitlines()[0][:200]}
        continue
      lat = card["latency"]
      result["modes"][mode] = {"bytes": card["bytes"],
                               "prefill_tokens_per_s": lat["prefill_tokens_per_s"],
                               "decode_tokens_per_s": lat["decode_tokens_per_s"],
                               "export_s": round(time.time() - t0, 1)}
  teacher = os.path.join(workdir, "teacher")
  if os.path.isdir(teacher):
    result["jax_teacher_decode_tokens_per_s"] = _jax_decode_tokens_per_s(teacher, _CONTEXT.value)
  result["jax_student_decode_tokens_per_s"] = _jax_decode_tokens_per_s(stage, _CONTEXT.value)
  from distill.run import precision  # pylint: disable=import-outside-toplevel
  result["precision"] = precision.record()  # the machine's JAX policy
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
