"""Best-checkpoint selection on the dev split: the loop's periodic dev loss and the kept best.

Every `DevCheck.every` steps (and at the last step) the loop computes the stage's loss on the
dev split (windows carved from the train split and held out of training, so selecting on it
leaves the validation split's figures untouched) and, with `keep_best`, keeps a copy of the
params with the lowest one.

On disk, under `<stage>/best/`: `params-<step>/` (a best's params, written once, before the
first checkpoint after it), `at-<checkpoint step>.json` (which best was the best when that
checkpoint was saved, written just before it) and, once the stage finishes, `best.json`. A
resume from checkpoint S reads `at-S.json`, so the best it continues from is the one of the
run it resumes, whatever moment a kill hit; the steps after S are re-trained and find the same
dev losses. Pointers of checkpoints orbax dropped, and params no pointer names, are removed.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from typing import Any, Callable

import jax
import jax.numpy as jnp

from distill.train import checkpoint

BEST_DIR = "best"  # <stage>/best/{params-<step>/, at-<step>.json, best.json}


@dataclasses.dataclass(frozen=True)
class DevCheck:
  """every: steps between dev losses (the last step always has one); loss: the stage's saved
  params -> mean dev loss (a float); keep_best: keep the params of the lowest one."""
  every: int
  loss: Callable[[Any], float]
  keep_best: bool

  def due(self, step: int, last: int) -> bool:
    return step % self.every == 0 or step == last


def _read(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_best(stage_dir: str) -> dict | None:
  """{"step", "dev_loss"} of a finished stage's best checkpoint, or None."""
  return _read(os.path.join(stage_dir, BEST_DIR, "best.json"))


def best_params_dir(stage_dir: str) -> str:
  """The params of a finished stage's best checkpoint (read_best names its step)."""
  best = read_best(stage_dir) or {"step": "none"}
  return os.path.join(stage_dir, BEST_DIR, f"params-{best['step']}")


class Best:
  """The lowest dev loss so far, its step and (until written) its params."""

  def __init__(self, stage_dir: str, start: int, is_main: bool):
    self.dir, self.is_main = os.path.join(stage_dir, BEST_DIR), is_main
    self.step, self.loss, self.params, self.dirty = None, math.inf, None, False
    at = _read(os.path.join(self.dir, f"at-{start}.json")) if start else None
    if at:  # the best as it stood when the checkpoint resumed from was saved
      self.step, self.loss = at["step"], at["dev_loss"]

  def offer(self, step: int, loss: float, params) -> None:
    """Keep `params` (copied: the loop donates the state they alias) if `loss` is the lowest."""
    if loss < self.loss:
      self.step, self.loss, self.dirty = step, loss, True
      self.params = jax.tree.map(jnp.copy, params)

  def info(self) -> dict | None:
    return None if self.step is None else {"step": self.step, "dev_loss": self.loss}

  def _write(self, name: str) -> None:
    if self.is_main and self.step is not None:
      os.makedirs(self.dir, exist_ok=True)
      tmp = os.path.join(self.dir, f".{name}.tmp")
      with open(tmp, "w") as f:
        json.dump(self.info(), f)
      os.replace(tmp, os.path.join(self.dir, name))

  def before_checkpoint(self, step: int) -> None:
    """A new best's params, then the pointer for checkpoint `step`; call before saving it."""
    if self.dirty:
      checkpoint.save_params(os.path.join(self.dir, f"params-{self.step}"), self.params)
      self.params, self.dirty = None, False
    self._write(f"at-{step}.json")

  def after_checkpoint(self, kept_steps) -> None:
    """Drops the pointers of checkpoints no longer on disk and the params none names."""
    if not self.is_main or not os.path.isdir(self.dir):
      return
    kept, named = set(kept_steps), {self.step}
    for fn in os.listdir(self.dir):
      m = re.fullmatch(r"at-(\d+)\.json", fn)
      if m and int(m.group(1)) not in kept:
        os.remove(os.path.join(self.dir, fn))
      elif m:
        named.add(_read(os.path.join(self.dir, fn))["step"])
    for fn in os.listdir(self.dir):
      m = re.fullmatch(r"params-(\d+)", fn)
      if m and int(m.group(1)) not in named:
        shutil.rmtree(os.path.join(self.dir, fn), ignore_errors=True)

  def finish(self) -> None:
    """best.json: the finished stage's choice (read_best, best_params_dir)."""
    self._write("best.json")
