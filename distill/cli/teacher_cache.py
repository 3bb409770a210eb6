"""`python -m distill.teacher_cache --config=... --workdir=W [--top_k=64 | --generate]`: the
teacher's top-k targets (or, with --generate, its generations as a SeqKD transfer set) written
once, for `--config.distill.teacher_source=cache:DIR` / `transfer_set=generated:DIR`."""
import json
import os

from absl import app, flags, logging as absl_logging

from distill import errors
from distill.cli import common, quiet
from distill.run import pipeline

_CONFIG = common.define_config("config")
_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "Run directory (teacher, data).")
_TOP_K = flags.DEFINE_integer("top_k", 64, "Teacher tokens kept per position.")
_OUT = flags.DEFINE_string("out", None, "Cache directory (default <workdir>/teacher_cache, "
                           "or <workdir>/seqkd with --generate).")
_GENERATE = flags.DEFINE_bool("generate", False, "SeqKD: write teacher generations as a "
                              "transfer set instead of top-k targets.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 32, "--generate: prompt tokens per window.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "--generate: teacher temperature (0 = "
                                  "greedy).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "--generate: nucleus mass (1 = off).")
_GEN_TOP_K = flags.DEFINE_integer("gen_top_k", 0, "--generate: teacher top-k (0 = off).")


def main(argv):
  del argv
  absl_logging.set_verbosity(absl_logging.WARNING)
  quiet.start()  # before jax starts a backend (no libtpu probe on a CPU machine)
  return common.guarded(_run)


def _run():
  c = _CONFIG.value
  if c is None:
    raise errors.UsageError("--config is required, e.g. --config=configs/tiny.py")
  workdir = _WORKDIR.value
  if _GENERATE.value:
    dest = _OUT.value or os.path.join(workdir, "seqkd")
    meta = pipeline.write_generations(c, workdir, dest, prompt_len=_PROMPT_LEN.value,
                                      temperature=_TEMPERATURE.value, top_k=_GEN_TOP_K.value,
                                      top_p=_TOP_P.value)
    print(json.dumps({"transfer_set": meta.pop("transfer_set"), **meta}))
    return
  dest = _OUT.value or os.path.join(workdir, "teacher_cache")
  meta = pipeline.write_teacher_cache(c, workdir, dest, _TOP_K.value)
  print(json.dumps({"cache": dest, **meta}))


def run_cli():
  app.run(main, flags_parser=common.parse_flags)
