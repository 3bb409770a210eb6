"""Dense vs chunked distillation loss: compiled temp memory and wall time.

Forward + backward (grads w.r.t. both hidden states and both unembeddings)
of `distill_objective` on full logits versus `chunked_distill_objective`.
Prints ONE JSON line.

  python bench/loss_memory.py                       # V=32768,131072 T=2048
  python bench/loss_memory.py --vocab=1024 --seq=128 --chunk=32   # quick

Memory comes from XLA's compiled memory analysis (no allocation needed); time
is the median of a few runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from distill import losses  # noqa: E402
from distill.run import precision  # noqa: E402

_KW = dict(kind="forward_kl", alpha=0.1, temperature=2.0)


def _dense(hs, ws, ht, wt, labels):
  s = losses.logits_from_hidden(hs, ws)
  t = losses.logits_from_hidden(ht, wt)
  return losses.distill_objective(s, t, labels, **_KW)[0]


def _chunked(chunk):
  def fn(hs, ws, ht, wt, labels):
    return losses.chunked_distill_objective(hs, ws, ht, wt, labels,
                                            chunk_size=chunk, **_KW)[0]
  return fn


def _measure(fn, args, runs):
  step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2, 3)))
  compiled = step.lower(*args).compile()
  mem = compiled.memory_analysis()
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return {
      "temp_bytes": int(mem.temp_size_in_bytes),
      "argument_bytes": int(mem.argument_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "median_s": round(statistics.median(times), 4),
  }


def _case(vocab, seq, batch, dim, chunk, runs):
  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  args = (
      jax.random.normal(keys[0], (batch, seq, dim), jnp.float32),
      jax.random.normal(keys[1], (dim, vocab), jnp.float32) * dim**-0.5,
      jax.random.normal(keys[2], (batch, seq, dim), jnp.float32),
      jax.random.normal(keys[3], (dim, vocab), jnp.float32) * dim**-0.5,
      jax.random.randint(keys[4], (batch, seq), 0, vocab),
  )
  dense = _measure(_dense, args, runs)
  chunked = _measure(_chunked(chunk), args, runs)
  return {
      "vocab": vocab, "seq": seq, "batch": batch, "dim": dim, "chunk": chunk,
      "dense": dense, "chunked": chunked,
      "temp_ratio": round(chunked["temp_bytes"] / max(dense["temp_bytes"], 1),
                          4),
      "time_ratio": round(chunked["median_s"] / dense["median_s"], 3),
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vocab", type=int, nargs="+", default=[32768, 131072])
  parser.add_argument("--seq", type=int, default=2048)
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--dim", type=int, default=512)
  parser.add_argument("--chunk", type=int, default=256)
  parser.add_argument("--runs", type=int, default=3)
  args = parser.parse_args(argv)
  cases = [_case(v, args.seq, args.batch, args.dim, args.chunk, args.runs)
           for v in args.vocab]
  print(json.dumps({
      "bench": "loss_memory",
      "backend": jax.default_backend(),
      "device": str(jax.devices()[0].device_kind),
      "loss": _KW,
      "cases": cases,
      "precision": precision.record(),  # the machine's policy (the losses run in fp32)
  }))


if __name__ == "__main__":
  main()
