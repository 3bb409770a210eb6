"""Batched jitted sampling vs the one-sequence generate loop, and the on-policy step's split.

  python bench/sampling.py [--batch=16 --prompt_len=32 --gen_len=96 --reps=3]

Prints one JSON line. Tiny shapes (configs/tiny.py, byte vocab padded to 264), random params:
tokens/s do not depend on the values (EOS stopping is off on both sides so every row makes
gen_len tokens). Both sides are greedy: the loop's fastest path (sampling there adds a host
sort per token), and the sampler's greedy path costs the same as its sampled one up to the
categorical draw.

  batched_tokens_per_s  distill.inference.sampling at `--batch` rows: batch * gen_len / wall
  loop_tokens_per_s     api.Model.generate_ids (one sequence, one jitted decode call per token)
  on_policy_step        at the training shapes (batch 32, seq 128, prompt 32 -> 97 sampled):
                        wall of the sampler alone, the teacher forward alone, the whole jitted
                        on-policy step, and the off-policy step; update = step - sample - teacher.
Each figure is the median of `--reps` timed runs after one compile/warm-up run.
"""
import argparse
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import tiny  # noqa: E402
from distill.run import settings
from distill.inference import model as api  # noqa: E402
from distill.methods import onpolicy  # noqa: E402
from distill.run import pipeline  # noqa: E402
from distill.run import precision  # noqa: E402
from distill.inference import sampling  # noqa: E402
from distill.data import tokenizer as tokenizers  # noqa: E402
from distill.train import objectives  # noqa: E402
from distill.train import step as step_lib  # noqa: E402
from distill.models.transformer import LM  # noqa: E402


def _median_time(fn, reps):
  jax.block_until_ready(fn())  # compile + warm-up
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt_len", type=int, default=32)
  ap.add_argument("--gen_len", type=int, default=96)
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args()
  c = tiny.get_config()
  vocab = pipeline.padded_vocab(259)
  student = LM(pipeline.model_config(c.student.model, vocab, c))
  teacher = LM(pipeline.model_config(c.teacher.model, vocab, c))
  s_params, t_params = student.init(jax.random.key(1)), teacher.init(jax.random.key(0))
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, 259, (args.batch, args.prompt_len)).astype(np.int32)
  out = {"bench": "sampling", "device": jax.devices()[0].device_kind, "batch": args.batch,
         "prompt_len": args.prompt_len, "gen_len": args.gen_len}

  # Batched: one XLA program for all rows and all positions.
  cfg = sampling.SampleConfig(gen_len=args.gen_len, temperature=0.0, vocab=259)
  key = jax.random.key(0)
  wall = _median_time(lambda: sampling.run(student, s_params, prompts, key, cfg), args.reps)
  out["batched_s"] = round(wall, 4)
  out["batched_tokens_per_s"] = round(args.batch * args.gen_len / wall, 1)

  # Loop: today's Model.generate path, one sequence, one host round-trip per token.
  model = api.Model(student, s_params, tokenizers.from_config("byte"))
  ids = prompts[0].tolist()
  wall = _median_time(lambda: jnp.asarray(model.generate_ids(ids, args.gen_len,
                                                              stop_at_eos=False)), args.reps)
  out["loop_s"] = round(wall, 4)
  out["loop_tokens_per_s"] = round(args.gen_len / wall, 1)
  out["speedup"] = round(out["batched_tokens_per_s"] / out["loop_tokens_per_s"], 2)

  # The on-policy step at the training shapes, and its parts.
  b, t = c.data.batch_size, c.data.seq_len
  tok = rng.integers(3, 259, (b, t + 1)).astype(np.int32)
  batch = jax.device_put({"inputs": tok[:, :-1], "targets": tok[:, 1:],
                          "mask": np.ones((b, t), np.float32)})
  on_cfg = settings.on_policy_config(c.distill.on_policy, steps=int(c.distill.steps), seq_len=t, vocab=259,
                                               eos_id=None, pad_id=0)
  loss_cfg = settings.loss_config(c.distill)
  plan = onpolicy.make_plan(on_cfg, student, teacher, loss_cfg, 0)
  tx = step_lib.make_optimizer(lr=1e-3, steps=100, warmup=1)
  loss_fn = functools.partial(objectives.distill_loss, student=student, teacher=teacher, cfg=loss_cfg)
  steps = {k: jax.jit(f) for k, f in plan.steps(loss_fn, tx, False).items()}
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), s_params, tx.init(s_params))
  sample_fn = jax.jit(lambda p, bt, k: onpolicy.sampled_batch(student, p, bt, k, on_cfg))
  teacher_fn = jax.jit(lambda tp, x: teacher.hidden(tp, x))
  split = {
      "sample_s": _median_time(lambda: sample_fn(s_params, batch, key), args.reps),
      "teacher_s": _median_time(lambda: teacher_fn(t_params, batch["inputs"]), args.reps),
      "on_policy_step_s": _median_time(lambda: steps[True](state, batch, key, t_params),
                                       args.reps),
      "off_policy_step_s": _median_time(lambda: steps[False](state, batch, key, t_params),
                                        args.reps),
  }
  split["update_s"] = split["on_policy_step_s"] - split["sample_s"] - split["teacher_s"]
  out["on_policy_step"] = {"batch": b, "prompt_len": on_cfg.prompt_len,
                           "gen_len": on_cfg.sample.gen_len,
                           **{k: round(v, 4) for k, v in split.items()}}
  out["precision"] = precision.record()  # the machine's policy
  print(json.dumps(out))


if __name__ == "__main__":
  main()
