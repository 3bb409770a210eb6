"""The training objectives: (params, batch, teacher_params, step) -> (loss, metrics).

Each is a module-level function bound with `functools.partial` before jit (`student=`,
`teacher=`, `cfg=`), so the compiled step holds no framework branches:

  ce_loss              hard-label CE (teacher pretraining, the baseline)
  distill_loss         the soft-target objective against an online teacher (+ feature losses)
  cached_distill_loss  the same against an offline teacher cache (top-k in the batch)
  cross_distill_loss   against an online teacher with another tokenizer (byte-offset aligned)

`LossConfig` is the static (hashable) description of the soft-target objective.
"""
from __future__ import annotations

import contextlib
import dataclasses

import jax

from distill import losses
from distill.models import quant as qat
from distill.models import ops
from distill.models.transformer import LM


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
  # Cross-tokenizer distillation: the weight of ULD's sorted-probability distance at aligned
  # positions whose next tokens differ (losses.cross_tokenizer).
  uld_weight: float = 1.0
  # Hidden-state distillation: ((student layer, teacher layer), ...) compared after those
  # blocks through learned projections params[FEATURES]["proj_i"] (see distill.methods.features).
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
  # dynamic-range kernels of the int8/int4 files do (ops.quantized_inputs).
  qat_activations: bool = False
  # The student's ModelConfig.outlier_channels: rows of the d_model-input matrices kept fp32.
  qat_outliers: tuple = ()

  def input_quant(self, step):
    """Context for the student forward: fake int8 FC inputs under QAT with activations."""
    if self.qat == "none" or not self.qat_activations:
      return contextlib.nullcontext()
    return ops.quantized_inputs(qat.schedule_on(step, self.qat_start_step))

  def student_params(self, params, step):
    """(body, head) params for the student forward: fake-quantized under QAT, else as is."""
    if self.qat == "none":
      return params, params
    return qat.fake_quant(params, self.qat, qat.schedule_on(step, self.qat_start_step),
                          outliers=self.qat_outliers)

  def final_params(self, params):
    """The params to save after training: under QAT the forward it trained (`qat.snap`).

    QAD optimizes the fake-quantized forward, not the fp32 master weights (those end up
    anywhere inside their rounding bins: on the tiny run their own int4 export agreed only
    86% with them). Saving the grid values makes the stage the model QAD trained, and its
    export reproduces them exactly (re-quantizing grid values is the identity; see qat.py).
    A tied embedding comes back untied: load these params with `final_lm(lm)`.
    """
    if self.qat == "none":
      return params
    return jax.jit(lambda p: qat.snap(p, self.qat, self.qat_outliers))(params)

  def final_lm(self, lm: LM) -> LM:
    """The model of `final_params`' params (the same `lm` unless QAT unties its embedding)."""
    cfg = qat.snap_config(lm.cfg, self.qat)
    return lm if cfg == lm.cfg else LM(cfg)

  def at(self, step):
    """(alpha, temperature) at `step`, traced-safe."""
    alpha = losses.schedule(self.alpha_schedule, self.alpha, self.alpha_end, self.total_steps)
    temp = losses.schedule(self.temperature_schedule, self.temperature, self.temperature_end,
                           self.total_steps)
    return alpha(step), temp(step)


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
    maps = ops.collect_attention
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
    # A trimmed-vocabulary teacher (`prune.trimmed`) returns log-probs already normalized over
    # its full vocabulary: their top-k keeps the dropped ids' mass in the tail, as the cache does.
    t_ids, t_logprobs = jax.lax.stop_gradient(losses.topk_targets(
        t_logits, cfg.top_k, normalized=getattr(teacher, "normalized", False)))
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
    metrics = dict(metrics, teacher_nll=losses.cross_entropy(
        t_logits, batch["targets"], mask=batch["mask"],
        normalized=getattr(teacher, "normalized", False)))
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


def cross_distill_loss(params, batch, teacher_params, step, *, student: LM, teacher: LM,
                       cfg: LossConfig, teacher_cols, student_cols):
  """The soft-target objective against a teacher with another tokenizer: the batch carries
  the teacher's own ids and the alignment (methods.cross_tokenizer.CrossPlan.rows)."""
  alpha, temperature = cfg.at(step)
  body, head = cfg.student_params(params, step)
  with cfg.input_quant(step):
    s_logits = student.logits_from_hidden(head, student.hidden(body, batch["inputs"]))
  t_logits = jax.lax.stop_gradient(teacher.apply(teacher_params, batch["teacher_inputs"]))
  loss, metrics = losses.cross_tokenizer_objective(
      s_logits, t_logits, batch["targets"], batch["teacher_index"], batch["exact"],
      teacher_cols, student_cols, mask=batch["mask"], kind=cfg.kind, alpha=alpha,
      temperature=temperature, beta=cfg.beta, skew=cfg.skew, uld_weight=cfg.uld_weight,
      scale_by_t2=cfg.scale_by_t2)
  return loss, dict(metrics, alpha=alpha, temperature=temperature)
