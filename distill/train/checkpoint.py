"""Orbax checkpoints: training state + data-iterator state per step, and final params.

Layout of a stage directory (e.g. runs/tiny/student):
  checkpoints/<step>/{state,data}   resumable training state (params, optimizer, step, iterator)
  params/                           final parameters only (what `distill.load` and the
                                    teacher stage read)
  model_config.json, tokenizer/     written by `inference.stage.save_stage` after params/
  stage.json                        written last (`inference.stage.save_stage`): its presence, not that of
                                    params/, means the stage finished
"""
from __future__ import annotations

import logging
import os
import shutil

import jax
import orbax.checkpoint as ocp


def _abs(path):
  return os.path.abspath(os.fspath(path))


class Checkpointer:
  """Resumable training checkpoints for one stage."""

  def __init__(self, directory, *, every: int, max_to_keep: int = 2):
    self.every = every
    self.mngr = ocp.CheckpointManager(
        _abs(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False),
        item_names=("state", "data"))

  def latest_step(self):
    return self.mngr.latest_step()

  def steps(self) -> list[int]:
    """The steps of the checkpoints kept on disk (orbax drops older ones past max_to_keep)."""
    return list(self.mngr.all_steps())

  def should_save(self, step: int, last: int) -> bool:
    return step % self.every == 0 or step == last

  def save(self, step: int, state, data_state) -> None:
    self.mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    self.mngr.wait_until_finished()

  def restore_latest(self, abstract_state):
    """(step, state, data_state) from the newest readable checkpoint, or None.

    A checkpoint that fails to read (partial write, corrupt file) is skipped with a warning
    and the previous one is tried, so a crash during save never loses the run. The skipped
    one is moved aside to `unreadable-<step>`: left in place, the resumed run could not save
    that step again (orbax refuses to overwrite it), and deleting it would destroy evidence.
    """
    bad = []
    try:
      for step in sorted(self.mngr.all_steps(), reverse=True):
        try:
          restored = self.mngr.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
          return step, restored["state"], restored["data"]
        except Exception as e:  # pylint: disable=broad-except
          logging.warning("checkpoint at step %d in %s is unreadable (%s); trying the previous "
                          "one", step, self.mngr.directory, str(e).splitlines()[0][:200])
          bad.append(step)
      return None
    finally:
      if bad and jax.process_index() == 0:
        for step in bad:
          src = os.path.join(os.fspath(self.mngr.directory), str(step))
          dst = os.path.join(os.fspath(self.mngr.directory), f"unreadable-{step}")
          if os.path.isdir(src):
            if os.path.exists(dst):
              shutil.rmtree(dst)  # an older copy of the same broken step
            os.replace(src, dst)
      if bad:
        self.mngr.reload()

  def close(self):
    self.mngr.close()


def save_params(directory, params) -> None:
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(_abs(directory), params, force=True)


def load_params(directory, abstract_params):
  """Restore params into the shardings given by `abstract_params` (ShapeDtypeStructs)."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(_abs(directory), abstract_params)


def abstract_like(shapes, shardings, dtype=None):
  return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype or s.dtype, sharding=sh), shapes, shardings)
