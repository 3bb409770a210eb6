"""The student as its teacher's drafter: acceptance and tokens/s with and without the draft,
in JAX and in llama.cpp, on this CPU; one JSON line.

  python bench/speculative.py [--workdir=runs/tiny] [--k=4] [--prompts=8] [--new_tokens=128]

Teacher `<workdir>/teacher`, drafter `<workdir>/student` (a finished `python -m distill.main`
run; the student shares the teacher's tokenizer). Prompts: --prompts windows of --prompt_len
tokens of held-out text (distill/data/heldout_docs.md), each continued greedily by
--new_tokens tokens (no EOS stop).

- JAX: `Model.generate_ids` (one teacher call per token) against
  `distill.inference.speculative.generate_ids` (k drafts, one teacher call to verify), after a
  warm-up of both on the first prompt (compiles excluded); the two outputs must be identical.
- llama.cpp (skipped with a note without llama-cpp-python): both stages exported as f16 GGUFs
  (`gguf_writer.export_stage`), the teacher run through llama-cpp-python's generation loop
  without and with `gguf_runtime.Drafter` over the student; outputs compared likewise.

tokens/s are new tokens over wall time summed over the prompts; acceptance_rate is kept drafts
/ drafted, tokens_per_call kept drafts + 1 per teacher call.
"""
import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "Run directory with teacher/ and student/.")
_K = flags.DEFINE_integer("k", 4, "Drafts per teacher call.")
_PROMPTS = flags.DEFINE_integer("prompts", 8, "Held-out prompts.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 16, "Tokens per prompt.")
_NEW = flags.DEFINE_integer("new_tokens", 128, "New tokens per prompt.")
_THREADS = flags.DEFINE_integer("threads", 2, "llama.cpp threads.")
_LLAMACPP = flags.DEFINE_bool("llamacpp", True, "Also run llama.cpp's speculative decoding.")


def _jax(teacher, drafter, prompts, k, new):
  from distill.inference import speculative  # pylint: disable=import-outside-toplevel
  teacher.generate_ids(prompts[0], new, stop_at_eos=False)  # compile both paths first
  speculative.generate_ids(teacher, drafter, prompts[0], new, k=k, stop_at_eos=False)
  plain_s = spec_s = 0.0
  total, same = speculative.Stats(), True
  for ids in prompts:
    t0 = time.perf_counter()
    want = teacher.generate_ids(ids, new, stop_at_eos=False)
    t1 = time.perf_counter()
    got, st = speculative.generate_ids(teacher, drafter, ids, new, k=k, stop_at_eos=False)
    t2 = time.perf_counter()
    plain_s, spec_s, same = plain_s + t1 - t0, spec_s + t2 - t1, same and got == want
    for f in ("teacher_calls", "drafted", "accepted", "new_tokens"):
      setattr(total, f, getattr(total, f) + getattr(st, f))
  n = len(prompts) * new
  return {**total.as_dict(), "identical_to_teacher": same,
          "teacher_tokens_per_s": round(n / plain_s, 1),
          "speculative_tokens_per_s": round(n / spec_s, 1), "speedup": round(plain_s / spec_s, 3)}


def _llamacpp(workdir, prompts, k, new, threads):
  from distill.export import gguf_runtime, gguf_writer  # pylint: disable=import-outside-toplevel
  files = {}
  for stage in ("teacher", "student"):
    out = os.path.join(workdir, "export", f"speculative-{stage}-gguf")
    path = os.path.join(out, "student-f16.gguf")
    files[stage] = path if os.path.exists(path) else gguf_writer.export_stage(
        os.path.join(workdir, stage), out, "f16")["file"]
  n_ctx = max(len(p) for p in prompts) + new + k + 1
  plain = gguf_runtime.LlamaCpp(files["teacher"], n_ctx=n_ctx, threads=threads)
  drafter = gguf_runtime.Drafter(
      gguf_runtime.LlamaCpp(files["student"], n_ctx=n_ctx, threads=threads), k=k)
  spec = gguf_runtime.LlamaCpp(files["teacher"], n_ctx=n_ctx, threads=threads, draft=drafter)
  plain.generate(prompts[0], 8)
  spec.generate(prompts[0], 8)
  drafter.reset_stats()
  plain_s = spec_s = 0.0
  same = True
  for ids in prompts:
    t0 = time.perf_counter()
    want = plain.generate(ids, new)
    t1 = time.perf_counter()
    got = spec.generate(ids, new)
    t2 = time.perf_counter()
    plain_s, spec_s, same = plain_s + t1 - t0, spec_s + t2 - t1, same and got == want
  n = len(prompts) * new
  return {**drafter.stats(), "quant": "f16", "identical_to_teacher": same,
          "teacher_tokens_per_s": round(n / plain_s, 1),
          "speculative_tokens_per_s": round(n / spec_s, 1), "speedup": round(plain_s / spec_s, 3)}


def main(argv):
  del argv
  import numpy as np  # pylint: disable=import-outside-toplevel
  import distill  # pylint: disable=import-outside-toplevel
  from distill.errors import UsageError  # pylint: disable=import-outside-toplevel
  from distill.run.precision import cpu_info  # pylint: disable=import-outside-toplevel
  from distill.models.transformer import count_params  # pylint: disable=import-outside-toplevel
  teacher = distill.load(os.path.join(_WORKDIR.value, "teacher"))
  drafter = distill.load(os.path.join(_WORKDIR.value, "student"))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "distill", "data", "heldout_docs.md")) as f:
    ids = teacher.tokenizer.encode(f.read())
  starts = np.linspace(0, len(ids) - _PROMPT_LEN.value - 1, _PROMPTS.value).astype(int)
  prompts = [ids[s:s + _PROMPT_LEN.value] for s in starts]
  result = {"bench": "speculative", "cpu": cpu_info().model, "workdir": _WORKDIR.value, "k": _K.value,
            "prompts": len(prompts), "prompt_len": _PROMPT_LEN.value, "new_tokens": _NEW.value,
            "teacher_params": count_params(teacher.params),
            "drafter_params": count_params(drafter.params),
            "jax": _jax(teacher, drafter, prompts, _K.value, _NEW.value)}
  if _LLAMACPP.value:
    try:
      result["llamacpp"] = _llamacpp(_WORKDIR.value, prompts, _K.value, _NEW.value,
                                     _THREADS.value)
      result["llamacpp"]["threads"] = _THREADS.value
    except UsageError as e:  # llama-cpp-python missing: say so, keep JAX's
      result["llamacpp"] = {"skipped": str(e)}
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
