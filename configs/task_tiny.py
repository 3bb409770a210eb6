"""Distillation for a task, offline on a laptop CPU: multi-digit addition ("0012+0345=" -> "75300").

  python -m distill.main --config=configs/task_tiny.py [--workdir=runs/task_tiny]

The built-in task `task:addition` (distill/data/tasks.py) writes train / dev / test JSONL
rows (disjoint by construction, its own seed) to <workdir>/data/tasks/; the teacher is
pretrained on the train split's completions (the loss covers the answer and its EOS only),
the student distils from it on a transfer set of the train split and the hard-label baseline
(SFT on the ground-truth answers) trains on the same rows; every model then answers the
1,000 test prompts greedily and is judged by exact match (eval.task), bucketed by the
answer's digits, in report.md / report.json. Settings were chosen on the dev split only.

Every field and what it means: configs/base.py; what differs from it is set here.
"""
from distill.cli.config_files import sibling

base = sibling("base")


def get_config(variant: str = ""):
  c = base.get_config()
  c.data.name = "task:addition"
  # Every row: "0012+0345=" (10 tokens) + "75300" + EOS: 16 tokens, one window of 17.
  c.data.seq_len = 16
  c.data.task.reverse = True  # answers least significant digit first: see configs/base.py
  # Operands and answers zero-padded: each digit at a fixed position. With it (and batch 256)
  # the teacher reaches exact match 1.000 on the dev split in 800 steps; unpadded, or at
  # batch 64, it stayed at 0.26-0.33 after 1,500 (docs/results/task_tiny.md).
  c.data.task.pad = True
  c.data.batch_size = 256
  c.data.dev_fraction = 0.05
  c.teacher.model = base.model(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384)
  c.teacher.pretrain.steps = 800
  c.teacher.pretrain.lr = 3e-3
  c.student.model = base.model(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192)
  c.distill.steps = 600
  c.distill.transfer_fraction = 0.25
  c.distill.temperature = 1.0
  c.distill.on_policy.prompt_len = 8  # unused on tables (each row's own prompt); <= seq_len
  c.baseline.lr = 3e-3
  c.baseline.same_recipe = False
  c.checkpoint_every = 500
  c.log_every = 100
  c.train.dev_every = 100
  c.eval.prompts = ("0012+0345=", "0999+0001=")
  c.eval.sample_tokens = 8
  c.eval.heldout = ""
  c.eval.sample_prompts = 0  # the rows are shorter than a sample prompt; eval.task judges
  c.eval.task.kind = "exact"
  c.eval.task.gen_len = 8
  c.export.presets = ("watch",)
  if variant == "small":  # seconds: for tests; its numbers mean nothing
    c.data.task.update(train=400, dev=40, test=60)
    c.data.batch_size = 8
    c.teacher.model = base.model(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64)
    c.student.model = base.model(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
    c.teacher.pretrain.steps = 4
    c.distill.steps = 2
    c.checkpoint_every = 2
    c.log_every = 2
    c.train.dev_every = 2
    c.export.enabled = False
  elif variant:
    raise ValueError(f"configs/task_tiny.py: unknown variant {variant!r}; use 'small' or none")
  return c
