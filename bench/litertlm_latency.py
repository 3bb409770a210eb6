"""LiteRT-LM's own benchmark of a .litertlm on this CPU; one JSON line.

  python bench/litertlm_latency.py runs/tiny/export/watch/student.litertlm \
      [--prefill_tokens=64] [--decode_tokens=32] [--threads=N]

Runs `litert_lm.Benchmark` (the engine's benchmark mode: a prefill of exactly
--prefill_tokens tokens, then --decode_tokens decode steps) and prints prefill and decode
tokens/s as the engine measures them, with the file size. The same function fills the
`litertlm.latency` section of the model card at export.
"""
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_PREFILL = flags.DEFINE_integer("prefill_tokens", 64, "Prompt tokens for the prefill.")
_DECODE = flags.DEFINE_integer("decode_tokens", 32, "Decode steps.")
_THREADS = flags.DEFINE_integer("threads", None, "CPU threads (default: the engine's).")


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("give one .litertlm path")
  from distill.export import litertlm_runtime as lrt  # pylint: disable=import-outside-toplevel
  path = argv[1]
  row = lrt.benchmark(path, prefill_tokens=_PREFILL.value, decode_tokens=_DECODE.value,
                      threads=_THREADS.value)
  from distill.run import precision  # pylint: disable=import-outside-toplevel
  row = {"file": path, "bytes": os.path.getsize(path), **row,
         "precision": precision.record()}  # the machine's JAX policy (LiteRT runs the file)
  print(json.dumps(row))


if __name__ == "__main__":
  app.run(main)
