"""Student step time with the online teacher vs the offline top-k cache (tiny shapes).

  python bench/teacher_cache_speedup.py [--top_k=64]

Prints one JSON line: seconds per step for each source, the speed-up, and cache bytes/token.
Random params and batches: step time does not depend on the values.
"""
import argparse
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import tiny  # noqa: E402
from distill import losses  # noqa: E402
from distill.run import pipeline  # noqa: E402
from distill.run import precision  # noqa: E402
from distill.train import objectives  # noqa: E402
from distill.train import step as step_lib  # noqa: E402
from distill.models.transformer import LM  # noqa: E402


def _time(step, state, batch, t_params, n=10):
  state, m = step(state, batch, None, t_params)
  jax.block_until_ready(m)
  t, c = time.perf_counter(), time.process_time()
  for _ in range(n):
    state, m = step(state, batch, None, t_params)
  jax.block_until_ready(m)
  return (time.perf_counter() - t) / n, (time.process_time() - c) / n


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--top_k", type=int, default=64)
  args = ap.parse_args()
  c = tiny.get_config()
  vocab = pipeline.padded_vocab(259)
  teacher = LM(pipeline.model_config(c.teacher.model, vocab, c))
  student = LM(pipeline.model_config(c.student.model, vocab, c))
  t_params = teacher.init(jax.random.key(0))
  b, t = c.data.batch_size, c.data.seq_len
  rng = np.random.default_rng(0)
  tok = rng.integers(0, 259, (b, t + 1)).astype(np.int32)
  batch = {"inputs": tok[:, :-1], "targets": tok[:, 1:], "mask": np.ones((b, t), np.float32)}
  ids, lps = losses.topk_targets(teacher.apply(t_params, jnp.asarray(batch["inputs"])), args.top_k)
  cached_batch = dict(batch, teacher_ids=np.asarray(ids), teacher_logprobs=np.asarray(lps))
  cfg = objectives.LossConfig(kind="forward_kl", temperature=2.0, top_k=args.top_k)
  tx = step_lib.make_optimizer(lr=1e-3, steps=100, warmup=1)
  out = {"bench": "teacher_cache_speedup", "top_k": args.top_k, "batch": b, "seq_len": t,
         "bytes_per_token": args.top_k * 8}
  for name, fn, bt in (
      ("online", functools.partial(objectives.distill_loss, student=student, teacher=teacher, cfg=cfg),
       batch),
      ("cached", functools.partial(objectives.cached_distill_loss, student=student, cfg=cfg),
       cached_batch)):
    params = student.init(jax.random.key(1))
    state = step_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    step = jax.jit(functools.partial(step_lib.train_step, loss_fn=fn, tx=tx), donate_argnums=(0,))
    wall, cpu = _time(step, state, jax.device_put(bt), t_params)
    out[name] = {"step_s": round(wall, 4), "cpu_s": round(cpu, 4)}
  out["speedup"] = round(out["online"]["step_s"] / out["cached"]["step_s"], 2)
  out["speedup_cpu"] = round(out["online"]["cpu_s"] / out["cached"]["cpu_s"], 2)
  out["precision"] = precision.record()  # the machine's policy
  print(json.dumps(out))


if __name__ == "__main__":
  main()
