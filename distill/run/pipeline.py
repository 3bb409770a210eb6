"""The pipeline: teacher -> distilled student -> baseline -> evaluation -> report -> export.

Each stage writes its directory under the workdir and is skipped when that directory holds a
finished stage, so re-running a finished workdir retrains nothing and an interrupted one
resumes from its last checkpoint. `run(config, workdir)` is what `distill.main`, Colab and
tests call.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from distill import data
from distill.inference import stage
from distill.inference import model as inference
from distill.eval import metrics as evaluate
from distill.methods import features
from distill.run import lock
from distill.train import objectives
from distill.methods import onpolicy
from distill.methods import qat as qad
from distill.run import report
from distill.eval import samples as sample_eval
from distill.models import sharding
from distill.train import step
from distill.methods import teacher_cache
from distill.methods import cross_tokenizer as cross
from distill.methods import ensemble
from distill.data import alignment
from distill.data import chat, tasks
from distill.data import tokenizer as tokenizers
from distill.train import loop as train
from distill.train import selection
from distill.errors import ConfigError, GateError
from distill.methods.prune import vocab_teacher
from distill.models import gguf, hf
from distill.run import export_stage, settings, student_init, task_eval
from distill.run.validate import validate
from distill.models.transformer import LM, count_params, flops_per_token
from distill.models.model_config import ModelConfig

VOCAB_MULTIPLE = 8  # pad the embedding so the vocab axis splits over small tensor meshes


def padded_vocab(tokenizer_vocab: int) -> int:
  return -(-tokenizer_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def read_only_teacher(cfg: ModelConfig, config) -> ModelConfig:
  """How the teacher runs once loaded: held and computed in the policy's teacher dtype (fp32
  keeps the checkpoint's), with the preset's layer scan. Training, teacher cache and
  distill.aot all build it here, so the AOT check compiles the teacher that trains."""
  t_dtype = settings.precision(config).teacher_dtype
  return cfg.replace(dtype=t_dtype if t_dtype != "float32" else cfg.dtype,
                     scan_layers=settings.preset(config).scan_layers)


def model_config(model_cfg, vocab_size: int, config, dtype=None) -> ModelConfig:
  hw = settings.preset(config)
  fields = dict(model_cfg)
  fields.pop("vocab_size", None)  # the teacher/tokenizer decides
  fields.setdefault("max_len", max(config.data.seq_len, 2048))
  fields.setdefault("dtype", dtype or settings.precision(config).dtype)
  fields.setdefault("attention", hw.attention)
  fields.setdefault("remat", hw.remat)
  fields.setdefault("scan_layers", hw.scan_layers)
  return ModelConfig(vocab_size=vocab_size, **fields)


class Context:
  """What every stage needs: config, workdir, mesh, tokenizer, TensorBoard writer."""

  def __init__(self, config, workdir):
    self.config, self.workdir = config, workdir
    self.data = settings.data_spec(config.data)
    self.task_test = None  # a built-in task's test split (a table only eval.task reads)
    if tasks.is_task(self.data.name):
      self.data, self.task_test = tasks.materialise(
          self.data, settings.task_data(config.data.task), workdir)
    self.mesh = sharding.make_mesh(settings.mesh_spec(config.mesh))
    self.is_main = jax.process_index() == 0
    self.writer = None
    if self.is_main:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self.writer = SummaryWriter(os.path.join(workdir, "tb"))
    self.tokenizer = None
    self.task = None  # the task metric's plan (task_eval.check), before any training
    self._dev = None

  def use_tokenizer(self, tok) -> None:
    """The run's tokenizer, with the run's start-of-sequence convention (config.data.add_bos,
    else the tokenizer's own) set on it and on the data spec: every stage saves it, so
    generation, export and the bundle's start token all follow what training saw."""
    if self.data.add_bos is not None:
      tok = tok.with_add_bos(self.data.add_bos)
    self.data = dataclasses.replace(self.data, add_bos=tok.add_bos)
    self.tokenizer = tok

  def transfer_set(self) -> teacher_cache.TransferSet:
    c = self.config
    return teacher_cache.TransferSet(
        data=self.data, tokenizer=self.tokenizer, workdir=self.workdir,
        fraction=c.distill.transfer_fraction, teacher=settings.teacher_source(c), seed=c.seed)

  def train_iter(self, fraction, cache=None, seed=None):
    """Batches of `fraction` of the train split, in the order `seed` (default: the run's) draws."""
    c = self.config
    it = data.make_train_iterator(
        self.data, self.tokenizer, self.workdir, batch_size=c.data.batch_size,
        seed=c.seed if seed is None else seed,
        fraction=fraction, process_index=jax.process_index(), process_count=jax.process_count(),
        with_window_ids=cache is not None)
    return it if cache is None else teacher_cache.CachedIterator(it, cache)

  def dev_check(self, lm: LM) -> selection.DevCheck | None:
    """The dev-split loss (and best-checkpoint selection) for a stage saving model `lm`, or
    None when `train.dev_every` is 0."""
    t = self.config.train
    if not t.dev_every:
      return None
    if self._dev is None:  # the dev windows, read once per run
      c = self.config
      self._dev = data.dev_batches(
          self.data, self.tokenizer, self.workdir, batch_size=c.data.batch_size,
          max_batches=c.data.eval_batches or None, process_index=jax.process_index(),
          process_count=jax.process_count())
    batches, mesh = self._dev, self.mesh
    return selection.DevCheck(every=int(t.dev_every), keep_best=bool(t.select_best),
                              loss=lambda params: evaluate.mean_ce(lm, params, batches, mesh))


def _train_stage(ctx: Context, name: str, lm: LM, *, steps: int, lr: float, loss_fn, fraction: float,
                 teacher_params=None, teacher_shardings=None, init_params=None, cache=None,
                 finalize=None, saved_lm=None, on_policy=None, data_iter=None, dev=False,
                 seed=None):
  """Train (or resume, or skip) one stage; returns (params, info, best params or None).

  `seed`: the stage's own init and data-order seed (an ensemble's teachers), default the run's.
  `finalize` maps the trained params to the saved ones, of model `saved_lm` (default `lm`).
  `dev`: log the dev-split loss and keep the best checkpoint (train.dev_every,
  train.select_best); its params are the third value, its step and loss info["best"].
  """
  c, stage_dir = ctx.config, os.path.join(ctx.workdir, name)
  saved_lm = saved_lm or lm
  shardings = sharding.param_shardings(saved_lm, ctx.mesh)
  if stage.is_stage(stage_dir):
    logging.info("[%s] finished stage found in %s: skipped", name, stage_dir)
    with open(os.path.join(stage_dir, "stage.json")) as f:
      info = json.load(f)
    best = (stage.load_stage_params(stage_dir, saved_lm, shardings, best=True)
            if info.get("best") else None)
    return stage.load_stage_params(stage_dir, saved_lm, shardings), info, best
  os.makedirs(stage_dir, exist_ok=True)
  run_seed = c.seed if seed is None else seed
  tx = step.make_optimizer(lr=lr, steps=steps, warmup=c.optimizer.warmup_steps,
                            weight_decay=c.optimizer.weight_decay, clip_norm=c.optimizer.clip_norm)
  res = train.run(name=name, lm=lm, mesh=ctx.mesh, stage_dir=stage_dir,
                  data_iter=(data_iter if data_iter is not None
                             else ctx.train_iter(fraction, cache, run_seed)),
                  steps=steps, loss_fn=loss_fn, tx=tx,
                  seed=run_seed, checkpoint_every=c.checkpoint_every, log_every=c.log_every,
                  teacher_params=teacher_params, teacher_shardings=teacher_shardings,
                  init_params=init_params, writer=ctx.writer, is_main=ctx.is_main,
                  skip_nonfinite=bool(c.train.skip_nonfinite), finalize=finalize,
                  on_policy=on_policy, dev=ctx.dev_check(saved_lm) if dev else None)
  info = {"steps": steps, "lr": lr, "wall_seconds": res.wall_seconds,
          "resumed_from": res.resumed_from, "final": res.history[-1][1] if res.history else {},
          "transfer_fraction": fraction, "best": res.best}
  if seed is not None:
    info["seed"] = seed
  stage.save_stage(stage_dir, saved_lm.cfg, ctx.tokenizer, res.params, info)
  best = stage.load_stage_params(stage_dir, saved_lm, shardings, best=True) if res.best else None
  return res.params, info, best


def _qad_stage(ctx: Context, student: LM, fp32_params, cfg: objectives.LossConfig):
  """QAD after training (`distill.qat_steps` > 0): a copy of the finished full-precision
  student trains with fake-quantized weights (`cfg.qat`) against that student as its teacher
  (online, its whole distribution), so the quantized model learns to match its own unquantized
  self, as in NVIDIA's QAD. The copy first sets its `outlier_channels` (distill.qat_outliers,
  the same function). Returns (LM, params, info) of the quantized student (stage `student`).
  """
  c, stage_dir = ctx.config, os.path.join(ctx.workdir, "student")
  if stage.is_stage(stage_dir):  # finished: its saved config holds the channels it trained with
    outliers = stage.read_model_config(stage_dir).outlier_channels
  else:
    it = ctx.train_iter(c.distill.transfer_fraction)
    batches = [sharding.global_batch(next(it), ctx.mesh)["inputs"] for _ in range(4)]
    outliers = qad.outlier_channels(student, fp32_params, batches, c.distill.qat_outliers)
  q_lm = LM(student.cfg.replace(outlier_channels=outliers))
  cfg = dataclasses.replace(cfg, qat_outliers=outliers)
  params, info, best = _train_stage(
      ctx, "student", q_lm, steps=c.distill.qat_steps, lr=c.distill.qat_lr,
      fraction=c.distill.transfer_fraction, teacher_params=fp32_params,
      teacher_shardings=sharding.param_shardings(student, ctx.mesh),
      init_params=lambda _: fp32_params,
      loss_fn=functools.partial(objectives.distill_loss, student=q_lm, teacher=student,
                                cfg=cfg),
      finalize=cfg.final_params, saved_lm=cfg.final_lm(q_lm), dev=True)
  return cfg.final_lm(q_lm), params, info, best


def load_or_train_teacher(ctx: Context):
  """(teacher model, params in teacher dtype and shards, shardings, stage info).

  With `config.teachers` the model is the ensemble of them (`methods.ensemble.EnsembleTeacher`,
  params a tuple, info["members"] each member's stage info); an ensemble of one is that
  teacher itself. Every teacher sets the run's tokenizer; they must agree on it."""
  c = ctx.config
  specs = settings.teachers(c)
  if not specs:
    return _one_teacher(ctx, c.teacher.checkpoint)
  # Loaded teachers first, then the pretrained ones: a teacher of another tokenizer is
  # refused before any pretraining.
  order = sorted(range(len(specs)), key=lambda i: not specs[i].checkpoint)
  got, first = {}, None
  for i in order:
    spec, t0 = specs[i], time.time()
    if not spec.checkpoint and first is not None:  # what it will speak, before it trains
      tok = tokenizers.from_config(c.data.tokenizer)
      _same_vocabulary(first, tok, padded_vocab(tok.vocab_size), i, spec)
    lm, params, shard, info = _one_teacher(ctx, spec.checkpoint, seed=spec.seed, name=spec.name)
    info = dict(info, weight=spec.weight, params=count_params(params),
                param_bytes=int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))))
    if spec.checkpoint:
      info["load_seconds"] = time.time() - t0
    if first is None:
      first = (i, spec, ctx.tokenizer, lm.cfg.vocab_size)
    _same_vocabulary(first, ctx.tokenizer, lm.cfg.vocab_size, i, spec)
    got[i] = (spec, lm, params, shard, info)
  loaded = [got[i] for i in range(len(specs))]
  if len(loaded) == 1:  # that teacher alone, exactly as the single-teacher run has it
    return loaded[0][1:]
  view = ensemble.EnsembleTeacher([m[1] for m in loaded], [m[0].weight for m in loaded],
                                  names=[m[0].name for m in loaded])
  params = tuple(m[2] for m in loaded)
  info = {"source": "ensemble", "members": {m[0].name: m[4] for m in loaded},
          "wall_seconds": sum(m[4].get("wall_seconds", 0.0) for m in loaded)}
  return view, params, sharding.param_shardings(view, ctx.mesh), info


def _same_vocabulary(first, tok, vocab: int, i: int, spec) -> None:
  """One line (ConfigError) unless teacher i speaks the first loaded teacher's tokenizer with
  as many vocabulary rows: an ensemble averages probabilities id for id."""
  j, spec0, tok0, vocab0 = first
  if (tok.with_add_bos(False).fingerprint == tok0.with_add_bos(False).fingerprint
      and vocab == vocab0):
    return
  what = lambda s: s.checkpoint or f"pretrained with seed {s.seed}"
  raise ConfigError(
      f"--config.teachers[{i}] ({what(spec)}: {type(tok).__name__}, {vocab} rows) and "
      f"--config.teachers[{j}] ({what(spec0)}: {type(tok0).__name__}, {vocab0} rows) speak "
      "different tokenizers or vocabularies; an ensemble needs one: use teachers of one "
      "tokenizer (and data.tokenizer the same for teachers pretrained here)")


def _one_teacher(ctx: Context, path: str, seed=None, name: str = "teacher"):
  """(LM, params, shardings, info) of one teacher: loaded from `path`, or pretrained here in
  stage `name` (with `seed`, default the run's); sets the run's tokenizer to its own."""
  c = ctx.config
  if path.startswith(("hf:", "gguf:")):
    loader = hf if path.startswith("hf:") else gguf
    lm, params, tok = loader.load_teacher(path.split(":", 1)[1], ctx.mesh,
                                          dtype=settings.precision(c).teacher_dtype)
    ctx.use_tokenizer(tok)
    lm = LM(read_only_teacher(lm.cfg, c))  # same params
    return lm, params, sharding.param_shardings(lm, ctx.mesh), {"source": path}
  if path:
    cfg = stage.read_model_config(path)
    ctx.use_tokenizer(tokenizers.load(os.path.join(path, "tokenizer")))
    info = {"source": path}
  else:
    ctx.use_tokenizer(tokenizers.from_config(c.data.tokenizer))
    cfg = model_config(c.teacher.model, padded_vocab(ctx.tokenizer.vocab_size), c)
    lm = LM(cfg)
    path = os.path.join(ctx.workdir, name)
    if seed is not None and stage.is_stage(path):
      with open(os.path.join(path, "stage.json")) as f:
        found = json.load(f).get("seed")
      if found != seed:
        raise ConfigError(f"{path} holds a teacher pretrained with seed {found}, not {seed}; "
                          "use another --workdir or remove that directory")
    _, info, _ = _train_stage(ctx, name, lm, steps=c.teacher.pretrain.steps,
                              lr=c.teacher.pretrain.lr, fraction=1.0, seed=seed,
                              loss_fn=functools.partial(objectives.ce_loss, student=lm))
  # Read-only from here on: held in the teacher dtype, never in an optimizer.
  lm = LM(read_only_teacher(cfg, c))
  shard = sharding.param_shardings(lm, ctx.mesh)
  params = stage.load_stage_params(path, lm, shard,
                                   dtype=jnp.dtype(settings.precision(c).teacher_dtype))
  return lm, params, shard, info


def _eval_sets(ctx: Context) -> dict:
  """{name: (per-process batches, target bytes)}: the validation split, and the held-out text
  when `eval.heldout` names one (text the student never trained on, another domain)."""
  c = ctx.config
  kw = dict(batch_size=c.data.batch_size, process_index=jax.process_index(),
            process_count=jax.process_count())
  sets = {"validation": data.eval_batches(ctx.data, ctx.tokenizer, ctx.workdir, split="validation",
                                          max_batches=c.data.eval_batches or None, **kw)}
  if c.eval.heldout:
    sets["heldout"] = data.text_eval_batches(data.heldout_texts(c.eval.heldout), ctx.tokenizer,
                                             seq_len=c.data.seq_len, **kw)
  out = {}
  for name, batches in sets.items():
    n_bytes = evaluate.target_bytes(batches, ctx.tokenizer)
    if jax.process_count() > 1:  # each process counted only its own rows
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      n_bytes = int(np.sum(multihost_utils.process_allgather(np.int64(n_bytes))))
    out[name] = (batches, n_bytes)
  return out


def evaluate_models(ctx: Context, models: dict, teacher: LM, t_params) -> dict:
  """Validation metrics per model (the teacher's forward runs once per batch for all of them),
  with the held-out text's metrics under "heldout"."""
  results = {}
  others = {k: v[:2] for k, v in models.items() if k != "teacher"}
  c = ctx.config
  for set_name, (batches, n_bytes) in _eval_sets(ctx).items():
    # The teacher's targets on each eval set are written once per workdir (teacher_eval/).
    key = json.dumps([settings.teacher_source(c), settings.precision(c).teacher_dtype,
                      ctx.tokenizer.fingerprint, c.data.seq_len, c.data.batch_size,
                      c.data.eval_batches, set_name, c.eval.heldout, jax.process_count()])
    metrics = evaluate.evaluate_all(
        others, teacher, t_params, batches, ctx.mesh, n_bytes=n_bytes, key=key,
        cache_file=os.path.join(ctx.workdir, "teacher_eval",
                                f"{set_name}-p{jax.process_index()}.npz"))
    for name, m in metrics.items():
      if set_name == "validation":
        results.setdefault(name, {}).update(m)
      else:
        results.setdefault(name, {})[set_name] = m
  return results


def _evaluate_cross(ctx: Context, t: _Teacher, models: dict) -> dict:
  """Each model on its own tokenization of the evaluation texts (the teacher on the teacher's
  windows, the others on the student's): bits/byte is the common figure; KL and top-1
  agreement need one vocabulary and are nan for the students."""
  student_tok, student_data = ctx.tokenizer, ctx.data
  ctx.tokenizer, ctx.data = t.tokenizer, t.cross[1]
  try:
    t_sets = _eval_sets(ctx)
  finally:
    ctx.tokenizer, ctx.data = student_tok, student_data
  results = {}
  for set_name, (batches, n_bytes) in _eval_sets(ctx).items():
    got = {"teacher": dict(evaluate.ce_metrics(t.lm, t.params, *t_sets[set_name][:1], ctx.mesh,
                                               n_bytes=t_sets[set_name][1]),
                           kl_to_teacher=0.0, top1_agreement=1.0, cross_tokenizer=True)}
    for name, (lm, params, _) in models.items():
      if name != "teacher":
        got[name] = evaluate.ce_metrics(lm, params, batches, ctx.mesh, n_bytes=n_bytes)
    for name, m in got.items():
      if set_name == "validation":
        results.setdefault(name, {}).update(m)
      else:
        results.setdefault(name, {})[set_name] = m
  return results


def _samples(ctx: Context, model: inference.Model) -> dict:
  """Greedy continuations of the eval prompts; through the chat template when the tokenizer
  has one (an instruct teacher), so the teacher is sampled the way it was trained to answer."""
  c = ctx.config
  if not ctx.is_main:
    return {"samples": {}}
  out = {"samples": {p: model.generate(p, c.eval.sample_tokens) for p in c.eval.prompts}}
  template = getattr(model.tokenizer, "chat_template", None)
  if template and c.eval.chat_prompts:
    # The template writes its own specials (add_bos=False, as transformers tokenizes it).
    out["chat_samples"] = {p: model.generate(chat.render_prompt(model.tokenizer, p),
                                             c.eval.sample_tokens, add_bos=False)
                           for p in c.eval.chat_prompts}
  return out


def _generated_iter(ctx: Context):
  """The SeqKD transfer set's iterator when distill.transfer_set names one, else None."""
  c = ctx.config
  ts = c.distill.transfer_set
  if not ts or stage.is_stage(os.path.join(ctx.workdir, "student")):
    return None
  return teacher_cache.generated_iterator(
      ts[len(teacher_cache.GENERATED_PREFIX):], seq_len=c.data.seq_len, tokenizer=ctx.tokenizer,
      batch_size=c.data.batch_size, seed=c.seed, process_index=jax.process_index(),
      process_count=jax.process_count())


def _prompt_range(ctx: Context) -> tuple[int, int] | None:
  """(shortest, longest) prompt of a table's transfer-set examples; None for a corpus."""
  if not data.is_table(ctx.data.name):
    return None
  ids, rows = data.train_windows(ctx.data, ctx.tokenizer, ctx.workdir,
                                 ctx.config.distill.transfer_fraction)
  lens = np.concatenate([data.prompt_lengths(rows(list(ids[i:i + 4096]))["mask"])
                         for i in range(0, len(ids), 4096)])
  return int(lens.min()), int(lens.max())


def _on_policy_plan(ctx: Context, student: LM, teacher: LM, loss_cfg):
  """The on-policy plan for the student stage, or None when on_policy.fraction is 0."""
  c = ctx.config
  o = c.distill.on_policy
  if o is None or not o.fraction:
    return None
  tok = ctx.tokenizer
  cfg = settings.on_policy_config(o, steps=int(c.distill.steps), seq_len=c.data.seq_len,
                                  vocab=min(tok.vocab_size, student.cfg.vocab_size),
                                  eos_id=tok.eos_id, pad_id=data.pad_id(tok),
                                  example_prompts=_prompt_range(ctx))
  total = cfg.prompt_len + cfg.sample.gen_len
  context = min(student.cfg.max_len, teacher.cfg.max_len)  # a loaded teacher's is known now
  if total > context:
    raise ConfigError(f"--config.distill.on_policy.prompt_len + gen_len = {total} exceeds the "
                      f"model context of {context} positions; shorten prompt_len or gen_len")
  return onpolicy.make_plan(cfg, student, teacher, loss_cfg, c.seed)


def run(config, workdir: str) -> dict:
  """Run every stage not yet finished in `workdir`; returns the report dict."""
  validate(config, jax.device_count())
  policy = settings.precision(config)  # every process at once: a multi-process run agrees here
  if jax.process_index() == 0:
    print(policy.line(), flush=True)
  os.makedirs(workdir, exist_ok=True)
  with lock.workdir_lock(workdir, enabled=jax.process_index() == 0):
    return _run(config, workdir)


@dataclasses.dataclass
class _Teacher:
  """The loaded teacher: `lm`/`tokenizer` in its own ids, `view` the model the student learns
  from (the trimmed-vocabulary view when `trim` is set), params, shardings, stage info."""
  lm: LM
  view: LM
  params: dict
  shardings: dict
  info: dict
  tokenizer: object
  trim: object
  # Cross-tokenizer distillation (student.tokenizer set): (CrossPlan, the teacher's DataSpec).
  cross: tuple | None = None


@dataclasses.dataclass
class _Student:
  """The student to train: its model, init (pruned or copied layers, else None), the init
  with feature projections, the soft-target objective, and the QAD stage's objective."""
  lm: LM
  init: object
  init_with_features: object
  loss_cfg: objectives.LossConfig
  qad_cfg: objectives.LossConfig | None


def _teacher_and_data(ctx: Context) -> _Teacher:
  """Data prepared in the tokenizer the student trains with; the teacher loaded (or trained)."""
  c = ctx.config
  if c.data.tokenizer:  # before any training: a data or task-metric mistake fails first
    data.prepare(ctx.data, ctx.workdir)
    ctx.task = task_eval.check(ctx, tokenizers.from_config(c.data.tokenizer))
  plan = None
  if c.student.tokenizer and not c.teacher.checkpoint:  # so is a tokenizer that cannot align
    plan = _cross_plan(ctx, tokenizers.from_config(c.data.tokenizer))
  teacher, t_params, t_shard, t_info = load_or_train_teacher(ctx)
  tokenizers.check_fits(ctx.tokenizer, teacher.cfg.vocab_size, "the teacher")
  if ctx.tokenizer.dropped_tokens:  # the loader dropped tokens its embedding has no row for
    t_info = dict(t_info, dropped_tokens=ctx.tokenizer.dropped_tokens)
  if not c.data.tokenizer:  # '' = the teacher's tokenizer, known once it is loaded
    data.prepare(ctx.data, ctx.workdir, tokenizer=ctx.tokenizer)
    ctx.task = task_eval.check(ctx, ctx.tokenizer)
  t = _Teacher(teacher, teacher, t_params, t_shard, t_info, ctx.tokenizer, None)
  if c.student.tokenizer:
    plan = plan or _cross_plan(ctx, t.tokenizer)
  if plan is not None:  # from here on data and evaluation are in the student's tokens
    teacher_len = min(teacher.cfg.max_len, plan.teacher_len)
    t.cross = (dataclasses.replace(plan, teacher_tok=t.tokenizer, teacher_len=teacher_len),
               ctx.data)
    ctx.use_tokenizer(plan.student_tok)
    data.prepare(ctx.data, ctx.workdir, tokenizer=ctx.tokenizer)
  if c.student.vocab:  # from here on data and targets are in the student's (trimmed) ids
    t.trim = vocab_teacher.make_trim(teacher, ctx.tokenizer, ctx.data, ctx.workdir,
                                     int(c.student.vocab), c.distill.transfer_fraction)
    ctx.tokenizer = t.trim.tokenizer
    data.prepare(ctx.data, ctx.workdir, tokenizer=ctx.tokenizer)
    t.view = vocab_teacher.TrimmedTeacher(teacher, t.trim)
  return t


def _cross_plan(ctx: Context, teacher_tok):
  """The CrossPlan when student.tokenizer differs from the teacher's (one line when either
  cannot spell the data byte for byte); None (the ordinary path) when it is the same one."""
  c = ctx.config
  student_tok = tokenizers.from_config(c.student.tokenizer)
  if (student_tok.with_add_bos(False).fingerprint
      == teacher_tok.with_add_bos(False).fingerprint):
    return None
  # Teacher positions a window can need: one per student byte at most (capped at 4 per token).
  per = max(len(k) for k in alignment.token_keys(student_tok) if isinstance(k, bytes))
  plan = cross.CrossPlan.build(teacher_tok, student_tok, (int(c.data.seq_len) + 1) * min(per, 4))
  if not data.is_table(ctx.data.name):
    sample = data.token_stream(ctx.data, teacher_tok, ctx.workdir, "train")[:20000]
    plan.check([teacher_tok.decode(np.asarray(sample).tolist())])
  logging.info("[cross_tokenizer] student tokenizer %s (%d ids), teacher's %d ids, %d shared",
               type(student_tok).__name__, student_tok.vocab_size, teacher_tok.vocab_size,
               plan.vmap.size)
  return plan


def _student(ctx: Context, t: _Teacher) -> _Student:
  """The student's shape and init, and the objectives of its stages (checked before training)."""
  c = ctx.config
  # The student shares the teacher's vocab axis (its padding included), so soft targets line
  # up id for id; `hf.align_vocab` handles checkpoints padded differently within a family.
  vocab = padded_vocab(ctx.tokenizer.vocab_size) if t.cross else t.view.cfg.vocab_size
  student = LM(model_config(c.student.model, vocab, c))
  loss_cfg = settings.loss_config(c.distill)
  qad_cfg = None
  if c.distill.qat_steps:  # QAD as its own stage after the fp32 student (see _qad_stage)
    qad_cfg = dataclasses.replace(loss_cfg, qat_start_step=0, total_steps=c.distill.qat_steps,
                                  top_k=0)
    loss_cfg = dataclasses.replace(loss_cfg, qat="none")
  init = None
  if c.student.init == "teacher_layers":
    init = student_init.init_from_teacher(student, t.view, t.params)
  if c.student.init == "prune":  # the pruned shape keeps the teacher's head_dim and switches
    student, init = student_init.from_teacher(ctx, student, t.lm, t.params, t.trim)
  if qad_cfg and c.distill.qat_outliers >= student.cfg.d_model:  # before any training
    raise ConfigError(f"--config.distill.qat_outliers={c.distill.qat_outliers} must be below "
                      f"the student's d_model={student.cfg.d_model}")
  # Feature losses: the student (not the baseline) also trains hidden-state projections.
  loss_cfg, s_init = features.setup(settings.feature_spec(c.distill.hidden), student, t.view,
                                    loss_cfg, init, getattr(init, "plan", None))
  return _Student(student, init, s_init, loss_cfg, qad_cfg)


def _soft_targets(ctx: Context, t: _Teacher, s: _Student, walls: dict):
  """(loss function, teacher cache or None): online targets, or the cache (written here when
  `teacher_source='cache'` and it is not there yet; its time goes to `walls`)."""
  c = ctx.config
  if t.cross:
    vmap = t.cross[0].vmap
    return functools.partial(objectives.cross_distill_loss, student=s.lm, teacher=t.view,
                             cfg=s.loss_cfg, teacher_cols=vmap.teacher,
                             student_cols=vmap.student), None
  source = c.distill.teacher_source
  if source == "cache":  # the teacher runs once per token, here, not once per step
    cache_dir = os.path.join(ctx.workdir, "teacher_cache")
    if not os.path.exists(os.path.join(cache_dir, "meta.json")):
      t_cache = time.time()
      logging.info("[teacher_cache] top-%d of the teacher over the transfer set -> %s",
                   c.distill.top_k, cache_dir)
      teacher_cache.write(t.view, t.params, cache_dir, c.distill.top_k, ctx.transfer_set(),
                          ctx.mesh, batch_size=c.data.batch_size, show_progress=ctx.is_main)
      walls["teacher_cache"] = time.time() - t_cache
    source = teacher_cache.CACHE_PREFIX + cache_dir
  if source.startswith(teacher_cache.CACHE_PREFIX):
    cache = teacher_cache.Cache(source[len(teacher_cache.CACHE_PREFIX):])
    cache.check(ctx.transfer_set(), t.view.cfg.vocab_size)
    return functools.partial(objectives.cached_distill_loss, student=s.lm, cfg=s.loss_cfg), cache
  return functools.partial(objectives.distill_loss, student=s.lm, teacher=t.view,
                           cfg=s.loss_cfg), None


def _add(models: dict, name: str, lm: LM, trained) -> None:
  """models[name] = (lm, params, info), and models[name + "_best"] for its best checkpoint
  (evaluated beside the last step; its info names the step and dev loss)."""
  params, info, best = trained
  models[name] = (lm, params, info)
  if best is not None:
    models[f"{name}{BEST_SUFFIX}"] = (lm, best, dict(info["best"], best_of=name))


BEST_SUFFIX = "_best"


def _baselines(ctx: Context, s: _Student, models: dict) -> None:
  """The hard-label baselines, same shape, init, order and steps as the student: `baseline`
  at baseline.lr on the transfer set; `baseline_same_recipe` at the student's distill.lr (only
  when baseline.lr differs, with baseline.same_recipe: the old comparison); and
  `baseline_more_labels` on the whole train split (baseline.more_labels: what more labelled
  data buys, against what the teacher buys)."""
  c = ctx.config
  kw = dict(steps=c.distill.steps, loss_fn=functools.partial(objectives.ce_loss, student=s.lm),
            init_params=s.init if c.student.init == "prune" else None)  # same pruned start
  frac = c.distill.transfer_fraction
  _add(models, "baseline", s.lm, _train_stage(ctx, "baseline", s.lm, lr=c.baseline.lr,
                                              fraction=frac, dev=True, **kw))
  if c.baseline.same_recipe and c.baseline.lr != c.distill.lr:
    _add(models, "baseline_same_recipe", s.lm, _train_stage(
        ctx, "baseline_same_recipe", s.lm, lr=c.distill.lr, fraction=frac, **kw))
  if c.baseline.more_labels:
    _add(models, "baseline_more_labels", s.lm, _train_stage(
        ctx, "baseline_more_labels", s.lm, lr=c.baseline.lr, fraction=1.0, dev=True, **kw))


def _train_models(ctx: Context, t: _Teacher, s: _Student, loss_fn, cache) -> dict:
  """{name: (LM, params, stage info)}: teacher, student (and its fp32 stage before QAD),
  the baselines, and `<name>_best` for each stage's best dev checkpoint."""
  c = ctx.config
  plan = _on_policy_plan(ctx, s.lm, t.view, s.loss_cfg)
  s_lm = s.loss_cfg.final_lm(s.lm)  # the saved student's model (untied after in-stage QAD)
  trained = _train_stage(
      ctx, "student_fp32" if s.qad_cfg else "student", s.lm, steps=c.distill.steps,
      lr=c.distill.lr, fraction=c.distill.transfer_fraction, teacher_params=t.params,
      teacher_shardings=t.shardings, init_params=s.init_with_features, loss_fn=loss_fn,
      cache=cache, finalize=s.loss_cfg.final_params, saved_lm=s_lm, on_policy=plan,
      data_iter=(cross.CrossIterator(ctx.train_iter(c.distill.transfer_fraction), t.cross[0])
                 if t.cross else _generated_iter(ctx)), dev=True)
  models = {"teacher": (t.lm, t.params, t.info)}
  if ensemble.is_ensemble(t.lm):  # each member beside the ensemble: its own report row
    for name, lm, params in zip(t.lm.names, t.lm.members, t.params):
      models[name] = (lm, params, t.info["members"][name])
  if s.qad_cfg:
    _add(models, "student_fp32", s_lm, trained)
    s_lm, *trained = _qad_stage(ctx, s.lm, trained[0], s.qad_cfg)
  _add(models, "student", s_lm, trained)
  if c.baseline.enabled:
    _baselines(ctx, s, models)
  return models


def _evaluate(ctx: Context, t: _Teacher, models: dict) -> dict:
  """Every model's metrics: validation and held-out text, sample metrics, size, samples."""
  c, e = ctx.config, ctx.config.eval
  if t.cross:  # sample metrics score the student's ids with the teacher: one vocabulary
    results, prompts, s_cfg = _evaluate_cross(ctx, t, models), None, None
  else:
    results = evaluate_models(ctx, models, t.view, t.params)
    prompts, s_cfg = sample_eval.prompts(
        ctx.data, ctx.tokenizer, ctx.workdir, t.view, count=e.sample_prompts,
        prompt_len=e.sample_prompt_len, gen_len=e.sample_gen_len,
        temperature=e.sample_temperature)
  for name, (lm, params, info) in models.items():
    if "best_of" in info:  # a best checkpoint: validation figures, its step, its size
      results[name].update(step=info["step"], dev_loss=info["dev_loss"],
                           params=count_params(params))
      continue
    if ensemble.is_ensemble(lm):  # the mixture scores and is scored; its members sample
      results[name].update(params=count_params(params), flops_per_token=sum(
          flops_per_token(m.cfg, c.data.seq_len) for m in lm.members), ensemble=True)
      continue
    if prompts is not None:  # same prompts, settings and key for every model
      scorer, rows, cfg = t.view, prompts, s_cfg
      if t.trim is not None and name == "teacher":  # the teacher samples in its own vocabulary
        scorer, rows = t.lm, np.asarray(t.trim.kept)[prompts]
        cfg = sample_eval.speaking(s_cfg, t.tokenizer, t.lm)
      results[name].update(onpolicy.sample_metrics(
          lm, params, scorer, t.params, rows, jax.random.key(c.seed + 1000), cfg,
          draws=int(e.sample_draws)))
    results[name]["params"] = count_params(params)
    results[name]["flops_per_token"] = flops_per_token(lm.cfg, c.data.seq_len)
    tok = t.tokenizer if name == "teacher" else ctx.tokenizer  # a trimmed student has its own
    results[name].update(_samples(ctx, inference.Model(lm, params, tok)))
  task_eval.evaluate(ctx, ctx.task, t, models, results)
  if t.trim is not None:
    results["student"]["vocab"] = {"kept": int(t.trim.kept.size), "rows": int(t.trim.rows.size),
                                   "teacher_vocab": t.lm.cfg.vocab_size}
  return results


def _run(config, workdir: str) -> dict:
  t0 = time.time()
  ctx = Context(config, workdir)
  teacher = _teacher_and_data(ctx)
  student = _student(ctx, teacher)
  walls_extra = {}
  loss_fn, cache = _soft_targets(ctx, teacher, student, walls_extra)
  models = _train_models(ctx, teacher, student, loss_fn, cache)
  t_eval = time.time()
  results = _evaluate(ctx, teacher, models)
  walls = {k: v[2].get("wall_seconds", 0.0) for k, v in models.items() if "best_of" not in v[2]}
  walls["evaluate"] = time.time() - t_eval
  walls.update(walls_extra)
  # Results before gates: the report is on disk before any export can fail or take long.
  rep = report.build(config, results, walls, time.time() - t0)
  if ctx.is_main:
    report.write(workdir, rep, config)
  if config.export.enabled:
    t_exp = time.time()
    s_lm, s_params, _ = models["student"]
    rep["export"] = export_stage.run(config, workdir, s_lm, s_params, ctx.tokenizer, ctx.data)
    if settings.gguf_quants(config.export):
      rep["export_gguf"] = export_stage.run_gguf(config, workdir, s_lm, s_params, ctx.tokenizer)
    rep["wall_seconds"].update(export=time.time() - t_exp, total=time.time() - t0)
    if ctx.is_main:  # again, with each file's figures (and verdict)
      report.write(workdir, rep, config)
  if ctx.is_main:
    ctx.writer.close()
  failed = export_stage.failures(rep.get("export"))
  if failed:  # last: every stage, file, card and the report are written
    raise GateError(
        f"export gate failed for {'; '.join(failed)}; report.json and the model card mark it "
        "failed; re-run the same command with another --config.export.<preset>.quant or "
        "--config.export.<preset>.min_agreement to re-export without retraining", report=rep)
  return rep


def write_teacher_cache(config, workdir: str, out_dir: str, top_k: int) -> dict:
  """`python -m distill.teacher_cache`: the teacher's top-k targets over the transfer set."""
  ctx = Context(config, workdir)
  data.prepare(ctx.data, workdir)
  teacher, t_params, _, _ = load_or_train_teacher(ctx)
  return teacher_cache.write(teacher, t_params, out_dir, top_k, ctx.transfer_set(), ctx.mesh,
                             show_progress=ctx.is_main)


def write_generations(config, workdir: str, out_dir: str, **sample) -> dict:
  """`python -m distill.teacher_cache --generate`: the teacher's continuations of the transfer
  set's prompts as a SeqKD transfer set; the returned dict names it (`transfer_set`)."""
  ctx = Context(config, workdir)
  data.prepare(ctx.data, workdir)
  teacher, t_params, _, _ = load_or_train_teacher(ctx)
  if ensemble.is_ensemble(teacher):
    raise ConfigError("--generate samples one teacher, and --config.teachers names an "
                      "ensemble; set --config.teachers=() (or one teacher) to generate")
  meta = teacher_cache.generate(teacher, t_params, out_dir, ctx.transfer_set(),
                                show_progress=ctx.is_main, **sample)
  return {"transfer_set": teacher_cache.GENERATED_PREFIX + out_dir, **meta}
