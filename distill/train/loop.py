"""The training loop shared by every stage: resume, logging, SIGTERM, NaN guard.

The step itself is built once by `distill.train.step.make_step` (pure `train_step`, jitted with
explicit shardings and the state donated); the loss function is chosen in Python before jit
(`distill.train.objectives`: hard-label CE for teacher pretraining and the baseline, the soft-target
objective for distillation), so the compiled step holds no framework branches.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
import optax
import tqdm

from distill.train import checkpoint
from distill.train import preemption
from distill.train import selection
from distill.models import sharding
from distill.train import step as step_lib
from distill.errors import NonFiniteError, Preempted
from distill.models.transformer import LM
from distill.train.objectives import split_features


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class StageResult:
  params: Any
  history: list  # [(step, {metric: value})]
  wall_seconds: float
  resumed_from: int
  best: dict | None = None  # {"step", "dev_loss"} of <stage>/best/ (a DevCheck with keep_best)


def _fmt_time(s):
  s = int(max(0, s))
  return f"{s // 60}:{s % 60:02d}"


class Progress:
  """One live line per stage on a terminal (a tqdm bar), plain log lines otherwise.

  Off a terminal each update is one line, `[name] step 25/300 loss 1.2345 tok/s 12.3k ETA 0:42`,
  formatted here: tqdm writes carriage-return redraws to a file (or nothing, with
  disable=None), and logs and tests read these lines. Rates and ETAs count from the first
  update, so the first step's compile is not in them (the bar starts there too).
  """

  def __init__(self, name, total, tokens_per_step, enabled=True):
    self.name, self.total, self.tps = name, total, tokens_per_step
    self.enabled = enabled
    self.tty = sys.stderr.isatty()
    self.t0, self.s0 = time.time(), None
    self._bar = None

  def update(self, step, metrics):
    if not self.enabled:
      return
    if self.s0 is None:
      self.s0, self.t0 = step, time.time()
      rate = float("nan")
      eta = float("nan")
    else:
      dt = time.time() - self.t0
      rate = (step - self.s0) * self.tps / max(dt, 1e-9)
      eta = (self.total - step) * dt / max(step - self.s0, 1)
    rate_s = f"{rate / 1e3:.1f}k" if math.isfinite(rate) else "?"
    loss = metrics.get("loss")
    loss_s = f" loss {loss:.4f}" if loss is not None else ""
    if self.tty:
      if self._bar is None:
        # smoothing=0: tqdm's rate and remaining time are averages since the first update,
        # as in the plain lines.
        self._bar = tqdm.tqdm(
            total=self.total, initial=step, desc=f"[{self.name}] step", file=sys.stderr,
            smoothing=0, dynamic_ncols=True, leave=True,
            bar_format="{desc} {n}/{total} |{bar}|{postfix} [{elapsed}<{remaining}]")
      self._bar.set_postfix_str(f"{loss_s.strip()} tok/s {rate_s}".strip(), refresh=False)
      self._bar.update(step - self._bar.n)
      return
    eta_s = _fmt_time(eta) if math.isfinite(eta) else "?"
    print(f"[{self.name}] step {step}/{self.total}{loss_s} tok/s {rate_s} ETA {eta_s}",
          file=sys.stderr, flush=True)

  def close(self):
    if self._bar is not None:
      self._bar.close()
      self._bar = None


def _read_history(stage_dir, upto, rewrite=True):
  """Metrics logged before a resume point; later lines (from after the checkpoint) dropped."""
  path = os.path.join(stage_dir, "metrics.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          r = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by a kill
        if r["step"] <= upto:
          rows.append((r.pop("step"), r))
  if rewrite:
    with open(path, "w") as f:
      f.writelines(json.dumps({"step": s, **m}) + "\n" for s, m in rows)
  return rows


def run(*, name: str, lm: LM, mesh, stage_dir: str, data_iter, steps: int, loss_fn: Callable,
        tx: optax.GradientTransformation, seed: int, checkpoint_every: int, log_every: int = 25,
        teacher_params=None, teacher_shardings=None, init_params: Callable | None = None,
        writer=None, is_main: bool = True, skip_nonfinite: bool = False,
        finalize: Callable | None = None, on_policy=None,
        dev: selection.DevCheck | None = None) -> StageResult:
  """Train `lm` for `steps` steps, resuming from `stage_dir/checkpoints` when present.

  `finalize(params)` maps the trained params to those returned (LossConfig.final_params).
  `on_policy` (an `onpolicy.Plan`) interleaves student-sampled steps: `on_policy.use(step)`
  picks the step, each kind compiled once. `dev` logs the dev-split loss (`dev_loss`) of the
  params as saved every `dev.every` steps and, with `keep_best`, keeps the lowest one's params
  in <stage>/best/ (`distill.train.selection`: written with each checkpoint, so a resume
  continues from the best of the run it resumes).
  """
  t_start = time.time()
  init_rng, step_rng = jax.random.split(jax.random.key(seed))
  built = step_lib.make_step(loss_fn, tx, lm, mesh, teacher_shardings=teacher_shardings,
                             init_params=init_params, skip_nonfinite=skip_nonfinite)
  ckpt = checkpoint.Checkpointer(os.path.join(stage_dir, "checkpoints"), every=checkpoint_every)
  start, state = _restore_or_init(name, built, ckpt, data_iter, init_rng)
  # jit compiles lazily: a run that never takes an on-policy step never compiles the sampler.
  if on_policy is None:
    step_fns = {False: built.step}
  else:
    step_fns = {k: built.jit(f) for k, f in on_policy.steps(loss_fn, tx, skip_nonfinite).items()}
  recorder = _Recorder(name, stage_dir, start, writer, is_main)
  best = selection.Best(stage_dir, start, is_main) if dev is not None and dev.keep_best else None

  def saved(params):  # what the stage saves (and the dev loss is taken of)
    params = split_features(params)[0]
    return finalize(params) if finalize is not None else params
  progress = Progress(name, steps, 0, enabled=is_main)
  preempt = preemption.StopFlag()
  pending = []
  try:
    for step in range(start, steps):
      local = next(data_iter)
      if progress.tps == 0:
        progress.tps = int(np.asarray(local["inputs"]).size) * jax.process_count()
      step_fn = step_fns[on_policy is not None and on_policy.use(step)]
      state, metrics = step_fn(state, sharding.global_batch(local, mesh),
                               jax.random.fold_in(step_rng, step), teacher_params)
      done = step + 1
      if dev is not None and dev.due(done, steps):
        params = saved(state.params)
        loss = float(dev.loss(params))
        metrics = dict(metrics, dev_loss=loss)
        if best is not None:
          best.offer(done, loss, params)
      pending.append((done, metrics))
      # Every process stops at the same step: the flag is agreed on across processes.
      stop = preempt.agreed()
      # Metrics are checked (and logged) before any state is saved, a preemption save included.
      save = ckpt.should_save(done, steps) or stop
      if done % log_every == 0 or done == steps or save:
        recorder.record(jax.device_get(pending))
        pending = []
        progress.update(done, recorder.history[-1][1])
      if save:
        if best is not None:  # before the checkpoint it belongs to (selection.py)
          best.before_checkpoint(done)
        ckpt.save(done, state, data_iter.get_state())
        if best is not None:
          best.after_checkpoint(ckpt.steps())
        if stop and done < steps:
          raise Preempted(f"[{name}] preempted: checkpoint saved at step {done} in "
                          f"{stage_dir}; re-run the same command to resume")
  finally:
    preempt.restore()
    progress.close()
    ckpt.close()
    recorder.close()
  if best is not None:
    best.finish()
  return StageResult(saved(state.params), recorder.history, time.time() - t_start, start,
                     best.info() if best is not None else None)


def _restore_or_init(name: str, built, ckpt, data_iter, init_rng):
  """(first step, state): the latest checkpoint with the data iterator's position, or step 0."""
  restored = ckpt.restore_latest(checkpoint.abstract_like(built.abstract, built.state_shardings))
  if restored is None:
    return 0, built.init(init_rng)
  start, state, data_state = restored
  data_iter.set_state(data_state)
  logging.info("[%s] resuming from step %d", name, start)
  return start, state


class _Recorder:
  """Checks each step's metrics and records them: the history, metrics.jsonl and TensorBoard.

  metrics.jsonl and TensorBoard scalars by hand rather than through clu's metric_writers (or
  flax.metrics.tensorboard): those write summaries with TensorFlow, and the training path
  imports no TensorFlow (tests/test_data.py). `writer` is a tensorboardX SummaryWriter
  (run/pipeline.py).
  """

  def __init__(self, name: str, stage_dir: str, start: int, writer, is_main: bool):
    self.name, self.stage_dir, self.writer = name, stage_dir, writer
    self.history = _read_history(stage_dir, upto=start, rewrite=is_main)
    self.file = open(os.path.join(stage_dir, "metrics.jsonl"), "a") if is_main else None

  def record(self, fetched) -> None:
    for s, m in fetched:
      m = {k: float(v) for k, v in m.items()}
      # The skip itself is step.train_step's `skip_nonfinite` (params and optimizer state kept
      # by jnp.where), not optax.apply_if_finite: that wrapper looks at the gradients only, so
      # a non-finite loss with finite gradients (what tests/test_robustness.py plants) would be
      # applied and then stop the run here; it accepts non-finite updates after
      # max_consecutive_errors; and it changes the optimizer state's tree, so the checkpoints'.
      if m.get("skipped"):
        logging.warning("[%s] step %d: non-finite loss or gradient, batch skipped", self.name, s)
      elif not all(math.isfinite(v) for v in m.values()):
        raise NonFiniteError(f"[{self.name}] non-finite loss or gradient at step {s}: {m}; the "
                             f"last good checkpoint is kept in {self.stage_dir}/checkpoints")
      self.history.append((s, m))
      if self.file is not None:
        self.file.write(json.dumps({"step": s, **m}) + "\n")
      if self.writer is not None:
        for k, v in m.items():
          self.writer.add_scalar(f"{self.name}/{k}", v, s)

  def close(self) -> None:
    if self.file is not None:
      self.file.close()
      self.file = None
    if self.writer is not None:
      self.writer.flush()
