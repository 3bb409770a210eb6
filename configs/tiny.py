"""Tiny end-to-end run on a laptop CPU, offline, on the embedded corpus.

  python -m distill.main --config=configs/tiny.py [--workdir=runs/tiny]   # or --config=tiny

Pipeline: byte-level teacher pretrained on the pydoc corpus -> student distilled on a 10%
transfer set (Hinton et al.) -> baseline of the same size on the same transfer set with hard
labels only -> evaluation -> report. Expected runtime on 2 CPU cores: see README.

Every field and what it means: configs/base.py, whose values are this run's.

`get_config("small")` (`--config=tiny:small`, as big_vision's `runlocal`) shrinks the models,
batches and steps so the whole pipeline runs in well under a minute: for tests, the notebooks'
SMALL mode and trying a change end to end. Its numbers mean nothing.
"""
from distill.cli.config_files import sibling

base = sibling("base")


# `tiny.model(...)` is the shape helper other configs import (configs/smollm2_135m.py).
model = base.model


def get_config(variant: str = ""):
  c = base.get_config()
  # The hard-label baseline's own rate, chosen on the dev split from 3e-4 ... 3e-2 (the
  # student's 3e-3 is second; docs/results/baselines.md).
  c.baseline.lr = 1e-2
  if variant == "small":
    c.baseline.lr = c.distill.lr  # one baseline stage: the quick run trains no same-recipe one
    c.data.seq_len = 32
    c.data.batch_size = 8
    c.data.eval_batches = 2
    c.teacher.model = model(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
    c.student.model = model(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
    c.teacher.pretrain.steps = 2
    c.distill.steps = 2
    c.checkpoint_every = 1
    c.log_every = 1
    c.eval.prompts = ("The",)
    c.eval.sample_tokens = 4
    c.eval.sample_prompts = 4
    c.eval.sample_prompt_len = 8
    c.eval.sample_gen_len = 8
  elif variant:
    raise ValueError(f"configs/tiny.py: unknown variant {variant!r}; use 'small' or none")
  return c
