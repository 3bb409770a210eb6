"""TrainState, the pure train step, and the training loop shared by every stage.

The step is `(state, batch, rng, teacher_params) -> (state, metrics)`: module-level, pure,
jitted once per stage with explicit shardings and the state donated. The loss function is
chosen in Python before jit (hard-label CE for teacher pretraining and the baseline, the
soft-target objective for distillation), so the compiled step holds no framework branches.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from distill import checkpoint, losses, preemption, qat, sharding
from distill.errors import NonFiniteError, Preempted  # noqa: F401  re-exported
from distill.models import transformer
from distill.models.transformer import LM


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Static description of the soft-target objective (hashable, so it can be a jit static)."""
  kind: str = "forward_kl"
  temperature: float = 1.0
  alpha: float = 0.0
  beta: float = 0.5
  skew: float = 0.1
  scale_by_t2: bool = True
  chunk_size: int = 0
  # alpha and T move from their start value to *_end over `total_steps` (constant: fixed).
  alpha_schedule: str = "constant"
  alpha_end: float = 0.0
  temperature_schedule: str = "constant"
  temperature_end: float = 1.0
  total_steps: int = 0
  # Sparse teacher targets: keep the teacher's top_k tokens (0 = the full distribution), and
  # the rule for the missing tail mass (see losses.sparse_divergence).
  top_k: int = 0
  tail: str = "renormalize"
  # Hidden-state distillation: ((student layer, teacher layer), ...) compared after those
  # blocks through learned projections params[FEATURES]["proj_i"] (see distill.features).
  hidden_pairs: tuple = ()
  hidden_weight: float = 0.0
  hidden_kind: str = "mse"
  # Attention transfer over the same block pairs: KL between head-averaged attention maps.
  attention_weight: float = 0.0
  # Quantization-aware distillation (distill/qat.py): fake-quantize the student's weights as
  # the export recipe will, from step qat_start_step on.
  qat: str = "none"
  qat_start_step: int = 0
  # Also round the input of every fully connected op per token to int8 during QAT, as the
  # dynamic-range kernels of the int8/int4 files do (transformer.quantized_inputs).
  qat_activations: bool = False

  @classmethod
  def from_config(cls, d) -> "LossConfig":
    return cls(kind=d.loss, temperature=float(d.temperature), alpha=float(d.alpha),
               beta=float(d.beta), skew=float(d.skew), scale_by_t2=bool(d.scale_by_t2),
               chunk_size=int(d.chunk_size), alpha_schedule=d.get("alpha_schedule", "constant"),
               alpha_end=float(d.get("alpha_end", d.alpha)),
               temperature_schedule=d.get("temperature_schedule", "constant"),
               temperature_end=float(d.get("temperature_end", d.temperature)),
               total_steps=int(d.steps), top_k=int(d.get("top_k", 0)),
               tail=d.get("tail", "renormalize"), qat=_qat_mode(d.get("qat", "none")),
               qat_start_step=int(round(float(d.get("qat_start_fraction", 0.0)) * int(d.steps))),
               qat_activations=bool(d.get("qat_activations", False)))

  def input_quant(self, step):
    """Context for the student forward: fake int8 FC inputs under QAT with activations."""
    if self.qat == "none" or not self.qat_activations:
      return contextlib.nullcontext()
    return transformer.quantized_inputs(qat.schedule_on(step, self.qat_start_step))

  def student_params(self, params, step):
    """(body, head) params for the student forward: fake-quantized under QAT, else as is."""
    if self.qat == "none":
      return params, params
    return qat.fake_quant(params, self.qat, qat.schedule_on(step, self.qat_start_step))

  def final_params(self, params):
    """The params to save after training: under QAT the quantized weights themselves.

    QAD optimizes the fake-quantized forward, not the fp32 master weights (those end up
    anywhere inside their rounding bins: on the tiny run their own int4 export agreed only
    86% with them). Saving the grid values makes the stage the model QAD trained, and its
    export reproduces them exactly (re-quantizing grid values is the identity; see qat.py).
    """
    if self.qat == "none":
      return params
    return jax.jit(lambda p: qat.fake_quant(p, self.qat)[1])(params)

  def at(self, step):
    """(alpha, temperature) at `step`, traced-safe."""
    alpha = losses.schedule(self.alpha_schedule, self.alpha, self.alpha_end, self.total_steps)
    temp = losses.schedule(self.temperature_schedule, self.temperature, self.temperature_end,
                           self.total_steps)
    return alpha(step), temp(step)


def _qat_mode(mode: str) -> str:
  if mode not in qat.QAT_MODES:
    raise ValueError(f"--config.distill.qat={mode!r}: use one of {', '.join(qat.QAT_MODES)}")
  return mode


def make_optimizer(*, lr: float, steps: int, warmup: int, weight_decay: float = 0.0,
                   clip_norm: float = 1.0) -> optax.GradientTransformation:
  warmup = max(0, min(warmup, steps - 1))
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1),
                                             end_value=lr * 0.1)
  return optax.chain(optax.clip_by_global_norm(clip_norm),
                     optax.adamw(sched, b1=0.9, b2=0.95, weight_decay=weight_decay))


# ---------------------------------------------------------------------------------------------
# Losses: (params, batch, teacher_params) -> (loss, metrics). Built with functools.partial.


def ce_loss(params, batch, teacher_params, step, *, student: LM):
  del teacher_params, step
  logits = student.apply(params, batch["inputs"])
  ce = losses.cross_entropy(logits, batch["targets"], mask=batch["mask"])
  return ce, {"loss": ce, "ce": ce}


# Trainable leaves that are not the student's (feature-loss projections): trained and
# checkpointed beside it, dropped from the params a stage returns and saves.
FEATURES = "features"


def split_features(params):
  """(student params, feature params or None)."""
  if FEATURES not in params:
    return params, None
  return {k: v for k, v in params.items() if k != FEATURES}, params[FEATURES]


def distill_loss(params, batch, teacher_params, step, *, student: LM, teacher: LM,
                 cfg: LossConfig):
  params, feats = split_features(params)
  if not cfg.hidden_pairs:
    return _soft_target_loss(params, batch, teacher_params, step, student=student,
                             teacher=teacher, cfg=cfg)
  maps = contextlib.nullcontext
  if cfg.attention_weight:
    maps = transformer.collect_attention
  with maps() as t_maps:
    t_hidden, t_states = jax.lax.stop_gradient(teacher.hidden_states(teacher_params,
                                                                      batch["inputs"]))
  with maps() as s_maps:
    s_hidden, s_states = student.hidden_states(params, batch["inputs"])
  loss, metrics = _soft_target_loss(params, batch, teacher_params, step, student=student,
                                    teacher=teacher, cfg=cfg, hidden=(s_hidden, t_hidden))
  n = len(cfg.hidden_pairs)
  hid = sum(losses.hidden_state_loss(s_states[i], t_states[j], feats[f"proj_{k}"],
                                     mask=batch["mask"], kind=cfg.hidden_kind)
            for k, (i, j) in enumerate(cfg.hidden_pairs)) / n
  total = loss + cfg.hidden_weight * hid
  metrics = dict(metrics, hidden=hid)
  if cfg.attention_weight:
    att = sum(losses.attention_map_loss(s_maps[i], jax.lax.stop_gradient(t_maps[j]),
                                        mask=batch["mask"]) for i, j in cfg.hidden_pairs) / n
    total = total + cfg.attention_weight * att
    metrics["attention"] = att
  return total, dict(metrics, loss=total)


def _soft_target_loss(params, batch, teacher_params, step, *, student: LM, teacher: LM,
                      cfg: LossConfig, hidden=None):
  alpha, temperature = cfg.at(step)
  body, params = cfg.student_params(params, step)  # `params` (the head) from here on
  if hidden is None:
    t_hidden = jax.lax.stop_gradient(teacher.hidden(teacher_params, batch["inputs"]))
    with cfg.input_quant(step):
      s_hidden = student.hidden(body, batch["inputs"])
  else:
    s_hidden, t_hidden = hidden
  kw = dict(mask=batch["mask"], kind=cfg.kind, alpha=alpha, temperature=temperature,
            beta=cfg.beta, skew=cfg.skew, scale_by_t2=cfg.scale_by_t2)
  if cfg.top_k:
    t_logits = teacher.logits_from_hidden(teacher_params, t_hidden)
    t_ids, t_logprobs = jax.lax.stop_gradient(losses.topk_targets(t_logits, cfg.top_k))
    with cfg.input_quant(step):
      s_logits = student.logits_from_hidden(params, s_hidden)
    return _sparse(s_logits, t_ids, t_logprobs, batch, kw, cfg)
  if cfg.chunk_size:
    t_unembed = jax.lax.stop_gradient(teacher.unembedding(teacher_params))
    loss, metrics = losses.chunked_distill_objective(
        s_hidden, student.unembedding(params), t_hidden, t_unembed, batch["targets"],
        chunk_size=cfg.chunk_size, student_softcap=student.cfg.final_softcap or None,
        teacher_softcap=teacher.cfg.final_softcap or None, **kw)
  else:  # (the chunked path above computes its logits in `losses`: inputs not rounded there)
    with cfg.input_quant(step):
      s_logits = student.logits_from_hidden(params, s_hidden)
    t_logits = jax.lax.stop_gradient(teacher.logits_from_hidden(teacher_params, t_hidden))
    loss, metrics = losses.distill_objective(s_logits, t_logits, batch["targets"], **kw)
    # -log p_teacher of the targets: on on-policy steps the teacher-scored NLL of the student's
    # own samples (the quantity GKD lowers), on dataset steps the teacher's CE.
    metrics = dict(metrics, teacher_nll=losses.cross_entropy(t_logits, batch["targets"],
                                                             mask=batch["mask"]))
  return loss, dict(metrics, alpha=alpha, temperature=temperature)


def _sparse(s_logits, t_ids, t_logprobs, batch, kw, cfg: LossConfig):
  loss, metrics = losses.sparse_distill_objective(s_logits, t_ids, t_logprobs, batch["targets"],
                                                  tail=cfg.tail, **kw)
  return loss, dict(metrics, alpha=kw["alpha"], temperature=kw["temperature"])


def cached_distill_loss(params, batch, teacher_params, step, *, student: LM, cfg: LossConfig):
  """Soft targets from an offline teacher cache (top-k ids + log-probs in the batch)."""
  del teacher_params
  alpha, temperature = cfg.at(step)
  kw = dict(mask=batch["mask"], kind=cfg.kind, alpha=alpha, temperature=temperature,
            beta=cfg.beta, skew=cfg.skew, scale_by_t2=cfg.scale_by_t2)
  body, head = cfg.student_params(params, step)
  with cfg.input_quant(step):
    s_logits = student.logits_from_hidden(head, student.hidden(body, batch["inputs"]))
  return _sparse(s_logits, batch["teacher_ids"], batch["teacher_logprobs"], batch, kw, cfg)


def train_step(state: TrainState, batch, rng, teacher_params, *, loss_fn: Callable,
               tx: optax.GradientTransformation, skip_nonfinite: bool = False):
  # rng is unused by the deterministic models here but threaded through for dropout-style
  # extensions: one stream per step, independent of how the loop was resumed.
  del rng
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, teacher_params, state.step)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  metrics = dict(metrics, grad_norm=grad_norm)
  if skip_nonfinite:
    # A bad batch leaves params and optimizer untouched; the step counter still advances so
    # the data order stays the one an uninterrupted run sees.
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jnp.where(ok, new, old)
    params = jax.tree.map(keep, params, state.params)
    opt_state = jax.tree.map(keep, opt_state, state.opt_state)
    metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
  return TrainState(state.step + 1, params, opt_state), metrics


# ---------------------------------------------------------------------------------------------
# Shardings for the whole state, derived from the parameters' rules.


def _path_keys(path):
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)


def state_shardings(abstract_state: TrainState, param_shardings, mesh):
  """Optimizer leaves shaped like a parameter get that parameter's sharding."""
  by_path = {}
  jax.tree_util.tree_map_with_path(lambda p, s: by_path.__setitem__(_path_keys(p), s),
                                   param_shardings)

  def pick(path, leaf):
    keys = _path_keys(path)
    for n in range(len(keys)):
      sh = by_path.get(keys[n:])
      if sh is not None and len(sh.spec) <= leaf.ndim:
        return sh
    return sharding.replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, abstract_state)


# ---------------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass
class StageResult:
  params: Any
  history: list  # [(step, {metric: value})]
  wall_seconds: float
  resumed_from: int


def _fmt_time(s):
  s = int(max(0, s))
  return f"{s // 60}:{s % 60:02d}"


class Progress:
  """One live line per stage on a terminal, plain log lines otherwise."""

  def __init__(self, name, total, tokens_per_step, enabled=True):
    self.name, self.total, self.tps = name, total, tokens_per_step
    self.enabled = enabled
    self.tty = sys.stderr.isatty()
    self.t0, self.s0 = time.time(), None

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
    eta_s = _fmt_time(eta) if math.isfinite(eta) else "?"
    loss = metrics.get("loss")
    loss_s = f" loss {loss:.4f}" if loss is not None else ""
    msg = f"[{self.name}] step {step}/{self.total}{loss_s} tok/s {rate_s} ETA {eta_s}"
    if self.tty:
      sys.stderr.write("\r" + msg + " " * 8)
      sys.stderr.flush()
    else:
      print(msg, file=sys.stderr, flush=True)

  def close(self):
    if self.enabled and self.tty:
      sys.stderr.write("\n")


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
        finalize: Callable | None = None, on_policy=None) -> StageResult:
  """Train `lm` for `steps` steps, resuming from `stage_dir/checkpoints` when present.

  `finalize(params)` maps the trained params to those returned (LossConfig.final_params).
  `on_policy` (an `onpolicy.Plan`) interleaves student-sampled steps: `on_policy.use(step)`
  picks the step, each kind compiled once.
  """
  t_start = time.time()
  p_shard = sharding.param_shardings(lm, mesh)
  rng = jax.random.key(seed)
  init_rng, step_rng = jax.random.split(rng)

  def init(key):
    params = init_params(key) if init_params is not None else lm.init(key)
    return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  abstract = jax.eval_shape(init, init_rng)
  s_shard = state_shardings(abstract, p_shard, mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(stage_dir, "checkpoints"), every=checkpoint_every)
  restored = ckpt.restore_latest(checkpoint.abstract_like(abstract, s_shard))
  if restored is not None:
    start, state, data_state = restored
    data_iter.set_state(data_state)
    logging.info("[%s] resuming from step %d", name, start)
  else:
    start = 0
    state = jax.jit(init, out_shardings=s_shard)(init_rng)

  repl = sharding.replicated(mesh)
  if on_policy is None:
    pure = {False: functools.partial(train_step, loss_fn=loss_fn, tx=tx,
                                     skip_nonfinite=skip_nonfinite)}
  else:
    pure = on_policy.steps(loss_fn, tx, skip_nonfinite)
  # jit compiles lazily: a run that never takes an on-policy step never compiles the sampler.
  step_fns = {k: jax.jit(f, in_shardings=(s_shard, sharding.batch_sharding(mesh), repl,
                                          teacher_shardings),
                         out_shardings=(s_shard, repl), donate_argnums=(0,))
              for k, f in pure.items()}

  history, pending = _read_history(stage_dir, upto=start, rewrite=is_main), []
  hist_file = open(os.path.join(stage_dir, "metrics.jsonl"), "a") if is_main else None
  progress = Progress(name, steps, 0, enabled=is_main)
  preempt = preemption.StopFlag()
  for step in range(start, steps):
    local = next(data_iter)
    if progress.tps == 0:
      progress.tps = int(np.asarray(local["inputs"]).size) * jax.process_count()
    batch = sharding.global_batch(local, mesh)
    step_fn = step_fns[on_policy is not None and on_policy.use(step)]
    state, metrics = step_fn(state, batch, jax.random.fold_in(step_rng, step), teacher_params)
    pending.append((step + 1, metrics))
    done = step + 1
    # Every process stops at the same step: the flag is agreed on across processes.
    stop = preempt.agreed()
    # Metrics are checked (and logged) before any state is saved, a preemption save included.
    save = ckpt.should_save(done, steps) or stop
    if done % log_every == 0 or done == steps or save:
      fetched = jax.device_get(pending)
      pending = []
      for s, m in fetched:
        m = {k: float(v) for k, v in m.items()}
        if m.get("skipped"):
          logging.warning("[%s] step %d: non-finite loss or gradient, batch skipped", name, s)
        elif not all(math.isfinite(v) for v in m.values()):
          ckpt.close()
          raise NonFiniteError(f"[{name}] non-finite loss or gradient at step {s}: {m}; the last "
                               f"good checkpoint is kept in {stage_dir}/checkpoints")
        history.append((s, m))
        if hist_file is not None:
          hist_file.write(json.dumps({"step": s, **m}) + "\n")
        if writer is not None:
          for k, v in m.items():
            writer.add_scalar(f"{name}/{k}", v, s)
      progress.update(done, history[-1][1])
    if save:
      ckpt.save(done, state, data_iter.get_state())
      if stop and done < steps:
        progress.close()
        ckpt.close()
        preempt.restore()
        raise Preempted(f"[{name}] preempted: checkpoint saved at step {done} in {stage_dir}; "
                        "re-run the same command to resume")
  preempt.restore()
  progress.close()
  ckpt.close()
  if hist_file is not None:
    hist_file.close()
  if writer is not None:
    writer.flush()
  params = split_features(state.params)[0]
  params = finalize(params) if finalize is not None else params
  return StageResult(params, history, time.time() - t_start, start)
