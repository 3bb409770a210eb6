"""Best-checkpoint selection on the dev split: the loop's periodic dev loss and the kept best.

Every `DevCheck.every` steps (and at the last step) the loop computes the stage's loss on the
dev split (windows carved from the train split and held out of training, so selecting on it
leaves the validation split's figures untouched) and, with `keep_best`, keeps a copy of the
params with the lowest one. The copy is written to `<stage>/best/` (params, then best.json)
when the loop saves a checkpoint, so what is on disk never runs ahead of the checkpoint a
resume starts from: a resumed stage re-trains the steps after it and finds the same losses.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from distill.train import checkpoint

BEST_DIR = "best"  # <stage>/best/{params/, best.json}


@dataclasses.dataclass(frozen=True)
class DevCheck:
  """every: steps between dev losses (the last step always has one); loss: the stage's saved
  params -> mean dev loss (a float); keep_best: keep the params of the lowest one."""
  every: int
  loss: Callable[[Any], float]
  keep_best: bool

  def due(self, step: int, last: int) -> bool:
    return step % self.every == 0 or step == last


def read_best(stage_dir: str) -> dict | None:
  """{"step", "dev_loss"} of the stage's kept best checkpoint, or None."""
  path = os.path.join(stage_dir, BEST_DIR, "best.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def best_params_dir(stage_dir: str) -> str:
  return os.path.join(stage_dir, BEST_DIR, "params")


class Best:
  """The lowest dev loss so far, its step and (until written) its params."""

  def __init__(self, stage_dir: str, history: list, start: int, is_main: bool):
    self.stage_dir, self.is_main = stage_dir, is_main
    self.step, self.loss, self.params, self.dirty = None, math.inf, None, False
    logged = [(s, m["dev_loss"]) for s, m in history if "dev_loss" in m and s <= start]
    on_disk = read_best(stage_dir)
    if on_disk and logged and on_disk["step"] <= start and (
        on_disk["dev_loss"] == min(loss for _, loss in logged)):
      self.step, self.loss = on_disk["step"], on_disk["dev_loss"]
    elif logged:  # a kill between a checkpoint and its best/ write: that best is gone
      logging.warning("[%s] the best dev checkpoint before step %d was not saved; selection "
                      "restarts from step %d", os.path.basename(stage_dir), start, start)

  def offer(self, step: int, loss: float, params) -> None:
    """Keep `params` (copied: the loop donates the state they alias) if `loss` is the lowest."""
    if loss < self.loss:
      self.step, self.loss, self.dirty = step, loss, True
      self.params = jax.tree.map(jnp.copy, params)

  def write(self) -> None:
    """To <stage>/best/ (params first, best.json last), when a new best has not been yet."""
    if not self.dirty:
      return
    directory = os.path.join(self.stage_dir, BEST_DIR)
    if self.is_main and os.path.exists(os.path.join(directory, "best.json")):
      os.remove(os.path.join(directory, "best.json"))  # params being replaced: not a best yet
    checkpoint.save_params(best_params_dir(self.stage_dir), self.params)  # force: overwrites
    if self.is_main:
      with open(os.path.join(directory, "best.json"), "w") as f:
        json.dump({"step": self.step, "dev_loss": self.loss}, f)
    self.params, self.dirty = None, False

  def info(self) -> dict | None:
    return None if self.step is None else {"step": self.step, "dev_loss": self.loss}
