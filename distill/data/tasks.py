"""Built-in verifiable tasks, generated offline and deterministically as prompt/completion rows.

`data.name='task:addition'`: multi-digit addition, "12+345=" -> "357". Each operand has a
number of digits drawn uniformly from [min_digits, max_digits] (then a value uniform among the
numbers with that many digits), so answers get longer with the operands. The three splits are
disjoint by construction: pairs (a, b) are drawn from one seeded stream, duplicates are
dropped, and the first `test` distinct pairs are the test split, the next `dev` the dev split,
the rest train. The same `TaskData` gives the same files on any machine. `reverse` writes
each answer least significant digit first ("12+345=" -> "753"): a small model then emits
the carries in the order they arise, which it learns in far fewer steps (Lee et al. 2023,
"Teaching Arithmetic to Small Transformers").

`materialise` writes them as JSON Lines under `<data_dir>/tasks/<name>-<hash of the
settings>/{train,dev,test}.jsonl` (once; atomically) and returns the DataSpec that reads them
as a table (train = data.name, dev = the validation split) with the test file's table name,
which only the task metric reads.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from distill.data.spec import DataSpec

PREFIX = "task:"
TASKS = ("addition",)
SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class TaskData:
  """A built-in task's size and shape: rows per split, operand digits, its own seed (not the
  run's: every seed of an experiment trains and is judged on the same rows)."""
  train: int
  dev: int
  test: int
  min_digits: int
  max_digits: int
  seed: int = 0
  reverse: bool = False  # the answer's digits least significant first ("12+345=" -> "753")
  pad: bool = False  # zero-pad operands to max_digits, answers to max_digits + 1


def is_task(name: str) -> bool:
  return name.startswith(PREFIX)


def task_name(name: str) -> str:
  """'task:addition' -> 'addition'; ValueError for a task that does not exist."""
  task = name[len(PREFIX):]
  if task not in TASKS:
    raise ValueError(f"data.name={name!r} is not a built-in task; use one of "
                     f"{', '.join(PREFIX + t for t in TASKS)}")
  return task


def addition_pairs(spec: TaskData) -> dict[str, list[tuple[int, int]]]:
  """{split: [(a, b), ...]}: distinct pairs from one seeded stream, test first, then dev, then
  train. Raises ValueError when the digit range cannot give that many distinct pairs."""
  lo, hi = spec.min_digits, spec.max_digits
  if not 1 <= lo <= hi:
    raise ValueError(f"data.task digits [{lo}, {hi}] must satisfy 1 <= min_digits <= max_digits")
  total = spec.train + spec.dev + spec.test
  smallest = {d: 0 if d == 1 else 10 ** (d - 1) for d in range(lo, hi + 1)}
  possible = sum(10 ** d - smallest[d] for d in range(lo, hi + 1)) ** 2
  if total > possible // 2:
    raise ValueError(f"data.task asks for {total} distinct additions but digits [{lo}, {hi}] "
                     f"give only {possible}; raise max_digits or ask for fewer rows")
  rng = np.random.default_rng(spec.seed)
  seen, order = set(), []
  while len(order) < total:
    digits = rng.integers(lo, hi + 1, size=(4096, 2))
    low = np.vectorize(smallest.get)(digits)
    values = low + (rng.random((4096, 2)) * (10 ** digits - low)).astype(np.int64)
    for a, b in values.tolist():
      if (a, b) not in seen:
        seen.add((a, b))
        order.append((a, b))
        if len(order) == total:
          break
  cut = (spec.test, spec.test + spec.dev)
  return {"test": order[:cut[0]], "dev": order[cut[0]:cut[1]], "train": order[cut[1]:]}


def addition_rows(spec: TaskData) -> dict[str, list[dict]]:
  """{split: [{"prompt": "a+b=", "completion": "a+b's value"}, ...]}; with `reverse` the
  answer is written least significant digit first, the order the carries run in; with `pad`
  every operand has max_digits digits and every answer max_digits + 1 ("0012+0345=" ->
  "00357"), so each digit sits at the same position in every row."""
  step = -1 if spec.reverse else 1
  n = spec.max_digits if spec.pad else 0
  return {s: [{"prompt": f"{a:0{n}d}+{b:0{n}d}=", "completion": f"{a + b:0{n + 1 if n else 0}d}"[::step]}
              for a, b in pairs]
          for s, pairs in addition_pairs(spec).items()}


def materialise(spec: DataSpec, task: TaskData, workdir: str) -> tuple[DataSpec, str]:
  """Write the task's JSONL files (when missing) and return (the DataSpec reading train with
  dev as validation, the test split's table name)."""
  name = task_name(spec.name)
  key = hashlib.md5(json.dumps([name, dataclasses.asdict(task)]).encode()).hexdigest()[:10]
  where = os.path.join(spec.resolved_data_dir(workdir), "tasks", f"{name}-{key}")
  paths = {s: os.path.join(where, f"{s}.jsonl") for s in SPLITS}
  if not all(os.path.exists(p) for p in paths.values()):
    os.makedirs(where, exist_ok=True)
    for split, rows in addition_rows(task).items():
      tmp = paths[split] + ".tmp"
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
      os.replace(tmp, paths[split])
  return (dataclasses.replace(spec, name="json:" + paths["train"],
                              validation_name="json:" + paths["dev"]), "json:" + paths["test"])
