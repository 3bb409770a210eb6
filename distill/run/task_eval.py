"""The pipeline's task metric (`config.eval.task`): which prompts, checked before training,
and every model's completions judged after it (`distill.eval.task` holds the metric code).

The prompts are `settings.task_split`: the built-in task's test split (read here only, once
per run), the run's validation split, or another table. `check` runs before any stage trains:
the prompts exist, each has a reference, and the scorer (a user's verifier included) runs on
every reference. `evaluate` adds `results[model]["task"]` for every model.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from distill import data
from distill.eval import samples as sample_eval
from distill.eval import task as task_metrics
from distill.inference import sampling
from distill.methods import onpolicy
from distill.run import settings


@dataclasses.dataclass
class TaskPlan:
  """What `evaluate` needs: the spec, its scorer and where the prompts come from."""
  spec: task_metrics.TaskSpec
  fn: object
  split: str


def _prompts(ctx, split: str, tokenizer) -> tuple[list, str]:
  """(the split's Prompts in `tokenizer`'s ids, what they are called in messages)."""
  if split == "validation":
    return data.prompts(ctx.data, tokenizer, ctx.workdir, "validation"), "the validation split"
  name = ctx.task_test if split == "test" else split
  # Every row of that table: it is named as both splits, and its validation split is read.
  spec = dataclasses.replace(ctx.data, name=name, validation_name=name, max_documents=None)
  return data.prompts(spec, tokenizer, ctx.workdir, "validation"), f"table {name!r}"


def check(ctx, tokenizer) -> TaskPlan | None:
  """The task plan (prompts, references and scorer checked on every reference, before any
  training), or None without eval.task."""
  spec = settings.task_spec(ctx.config.eval.task)
  if spec is None:
    return None
  split = settings.task_split(ctx.config)
  prompts, what = _prompts(ctx, split, tokenizer)
  return TaskPlan(spec, task_metrics.check_prompts(spec, prompts, what), split)


def evaluate(ctx, plan: TaskPlan | None, t, models: dict, results: dict) -> None:
  """results[name]["task"] for every model: `t` is the pipeline's loaded teacher (its view
  scores the NLL of each model's greedy completions, when they share its ids)."""
  if plan is None or not ctx.is_main:
    return
  read = {}
  for name, (lm, params, _) in models.items():
    if getattr(lm, "members", None):  # a teacher ensemble does not generate; its members do
      continue
    tok = t.tokenizer if name == "teacher" else ctx.tokenizer  # a trimmed student has its own
    if id(tok) not in read:
      read[id(tok)] = _prompts(ctx, plan.split, tok)
    prompts, what = read[id(tok)]
    cfg = sample_eval.speaking(sampling.SampleConfig(gen_len=plan.spec.gen_len), tok, lm)
    nll = None
    if t.trim is None:  # the teacher scores in the ids the model speaks
      fn = onpolicy.teacher_nll_fn(t.view)
      nll = lambda tokens, mask, fn=fn: fn(t.params, tokens, np.asarray(mask, np.float32))
    results.setdefault(name, {})["task"] = dict(
        task_metrics.evaluate(plan.spec, plan.fn, lm, params, tok, prompts, cfg,
                              seed=int(ctx.config.seed) + 2000, who=name, nll=nll),
        prompts_from=what)
