"""Config validation: every mistake found before any work, one clear line each.

`validate(config)` raises `ConfigError` whose message names the field, the bad value and the
fix; `distill.main` prints it and exits with code 2.
"""
from __future__ import annotations

import importlib.util
import math
import os

from distill.data import tables, tasks
from distill.eval import task as task_metrics
from distill.errors import ConfigError, MeshError
from distill.losses import check_weights
from distill.export.presets import GGUF_QUANTS
from distill.models.model_config import ModelConfig
from distill.run.hardware import HARDWARE
from distill.models import sharding
from distill.run import settings

# compute_dtype / teacher.dtype: '' = the preset's, 'auto' = distill.run.precision's choice.
DTYPES = ("", "auto", "float32", "bfloat16", "float16")
LOSS_KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl")

# Hardware presets: what each sets unless the config says otherwise (dtype, attention, remat,
# default mesh, HBM per chip, AOT topology); the table lives in distill/run/hardware.py.

# `vocab_size` is allowed so a config can state a teacher's full shape (what `distill.aot`
# compiles without weights or tokenizer); at run time the tokenizer's vocab is used.
MODEL_FIELDS = {f for f in ModelConfig.__dataclass_fields__}


def _req(cond, msg):
  if not cond:
    raise ConfigError(msg)


def _get(c, dotted):
  cur = c
  for part in dotted.split("."):
    if part not in cur:
      raise ConfigError(f"config field `{dotted}` is missing; start from a file in configs/")
    cur = cur[part]
  return cur


def _num(c, dotted, kind=float):
  v = _get(c, dotted)
  ok = isinstance(v, (int, float)) and not isinstance(v, bool)
  if kind is int:
    ok = isinstance(v, int) and not isinstance(v, bool)
  _req(ok, f"--config.{dotted}={v!r} must be {'an integer' if kind is int else 'a number'}")
  if kind is float:
    _req(math.isfinite(v), f"--config.{dotted}={v!r} must be finite")
  return v


def _model(c, prefix):
  m = _get(c, prefix)
  unknown = set(m.keys()) - MODEL_FIELDS
  _req(not unknown, f"unknown field(s) {sorted(unknown)} in --config.{prefix}; "
       f"valid: {sorted(MODEL_FIELDS)}")
  for f in ("d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
    _req(_num(c, f"{prefix}.{f}", int) > 0, f"--config.{prefix}.{f} must be > 0")
  if "vocab_size" in m:
    _req(_num(c, f"{prefix}.vocab_size", int) > 0, f"--config.{prefix}.vocab_size must be > 0")
  _req(m.n_heads % m.n_kv_heads == 0,
       f"--config.{prefix}.n_heads={m.n_heads} must be a multiple of n_kv_heads={m.n_kv_heads}")
  # A pruned student keeps its teacher's head_dim, so its d_model need not split into heads.
  pruned = prefix == "student.model" and _get(c, "student.init") == "prune"
  if not _model_field(m, "head_dim") and not pruned:
    _req(m.d_model % m.n_heads == 0, f"--config.{prefix}.d_model={m.d_model} must be divisible "
         f"by n_heads={m.n_heads} (or set head_dim)")
  if _model_field(m, "pos") == "learned":
    max_len = _model_field(m, "max_len")
    _req(c.data.seq_len <= max_len, f"--config.data.seq_len={c.data.seq_len} "
         f"exceeds {prefix}.max_len={max_len}; shorten seq_len")


def _model_field(m, name):
  """A model field the config may leave out: ModelConfig's own default states it once."""
  return m[name] if name in m else ModelConfig.__dataclass_fields__[name].default


def _prune(c):
  """`student.init='prune'`: method and calibration size; the shape when the teacher's is known."""
  _req(isinstance(_get(c, "student.prune.norm_gains"), bool),
       f"--config.student.prune.norm_gains={c.student.prune.norm_gains!r} must be True or False")
  method = _get(c, "student.prune.method")
  _req(method in ("activation", "random"), f"--config.student.prune.method={method!r} must be "
       "'activation' (Minitron ranking) or 'random' (the control)")
  _req(_num(c, "student.prune.calib_batches", int) >= 1,
       f"--config.student.prune.calib_batches={c.student.prune.calib_batches} must be >= 1")
  if c.teacher.checkpoint:
    return  # checked against the loaded teacher's config before any training
  t, s = c.teacher.model, c.student.model
  group = t.n_heads // t.n_kv_heads
  for f in ("n_layers", "d_model", "d_ff", "n_heads"):
    _req(s[f] <= t[f], f"--config.student.model.{f}={s[f]} is larger than the teacher's {t[f]}; "
         "init='prune' only removes units")
  _req(s.n_heads % group == 0 and s.n_kv_heads * group == s.n_heads,
       f"--config.student.model.n_heads={s.n_heads}, n_kv_heads={s.n_kv_heads}: init='prune' "
       f"keeps whole KV groups of {group} query heads; give n_kv_heads = n_heads / {group}")


def model_context(c, prefix: str) -> int:
  """Positions a model built from `config.<prefix>` holds (pipeline.model_config's max_len)."""
  return int(_get(c, prefix).get("max_len", max(c.data.seq_len, 2048)))


def _on_policy(c, src):
  o = c.distill.on_policy
  lam = _num(c, "distill.on_policy.fraction")
  _req(0.0 <= lam <= 1.0, f"--config.distill.on_policy.fraction={lam} must be in [0, 1] (the "
       "share of steps the student samples; 0 = off)")
  start = _num(c, "distill.on_policy.start")
  _req(0.0 <= start < 1.0, f"--config.distill.on_policy.start={start} must be in [0, 1) (the "
       "fraction of the distill steps that run off-policy before on-policy steps begin)")
  p, g = _num(c, "distill.on_policy.prompt_len", int), _num(c, "distill.on_policy.gen_len", int)
  _req(1 <= p <= c.data.seq_len, f"--config.distill.on_policy.prompt_len={p} must be in "
       f"[1, data.seq_len={c.data.seq_len}] (prompts are cut from the dataset rows)")
  _req(g >= 0, f"--config.distill.on_policy.gen_len={g} must be >= 0 (0 = fill the window)")
  total = p + (g or c.data.seq_len + 1 - p)
  ctx = min(model_context(c, "student.model"),
            model_context(c, "teacher.model") if not c.teacher.checkpoint else 1 << 30)
  # Only when on: with gen_len 0 (fill the window) an off run at seq_len = max_len would fail.
  _req(not lam or total <= ctx,
       f"--config.distill.on_policy.prompt_len + gen_len = {total} exceeds the "
       f"model context of {ctx} positions; shorten prompt_len or gen_len")
  _req(o.divergence in LOSS_KINDS, f"--config.distill.on_policy.divergence={o.divergence!r} is "
       f"unknown; use one of {', '.join(LOSS_KINDS)}")
  _req(_num(c, "distill.on_policy.temperature") >= 0, "--config.distill.on_policy.temperature="
       f"{o.temperature} must be >= 0 (0 = greedy)")
  _req(_num(c, "distill.on_policy.top_k", int) >= 0, "--config.distill.on_policy.top_k must be "
       ">= 0 (0 = off)")
  _req(_num(c, "distill.on_policy.loss_temperature") >= 0, "--config.distill.on_policy."
       f"loss_temperature={o.loss_temperature} must be >= 0 (0 = distill.temperature)")
  _req(0.0 < _num(c, "distill.on_policy.top_p") <= 1.0,
       f"--config.distill.on_policy.top_p={o.top_p} must be in (0, 1]")
  if lam > 0:  # 'cache': dataset steps read the cache the pipeline writes, sampled steps run
    # the loaded teacher; a 'cache:PATH' run has no teacher to run.
    _req(not src.startswith("cache:"), f"--config.distill.on_policy.fraction={lam} needs "
         f"a teacher that can run: a cache-only teacher ({src!r}) cannot score the student's "
         "new samples; set teacher_source=online or cache, or on_policy.fraction=0")


def _sample_eval(c):
  e = c.eval
  if not e.get("sample_prompts", 0):
    return
  _req(_num(c, "eval.sample_prompts", int) > 0, "--config.eval.sample_prompts must be >= 0")
  p, g = _num(c, "eval.sample_prompt_len", int), _num(c, "eval.sample_gen_len", int)
  _req(1 <= p <= c.data.seq_len, f"--config.eval.sample_prompt_len={p} must be in "
       f"[1, data.seq_len={c.data.seq_len}]")
  _req(g >= 1, f"--config.eval.sample_gen_len={g} must be >= 1")
  ctx = min(model_context(c, "student.model"),
            model_context(c, "teacher.model") if not c.teacher.checkpoint else 1 << 30)
  _req(p + g <= ctx, f"--config.eval.sample_prompt_len + sample_gen_len = {p + g} exceeds the "
       f"model context of {ctx} positions")
  _req(_num(c, "eval.sample_temperature") >= 0, "--config.eval.sample_temperature must be >= 0")
  d = _num(c, "eval.sample_draws", int)
  _req(d >= 1, f"--config.eval.sample_draws={d} must be >= 1 (continuations per prompt)")


def _run_fields(c):
  """Seed, hardware preset, checkpoint and log intervals."""
  _num(c, "seed", int)
  _req(_get(c, "preset") in HARDWARE, f"--config.preset={c.preset!r} is unknown; "
       f"use one of {sorted(HARDWARE)}")
  _req(_num(c, "checkpoint_every", int) > 0,
       f"--config.checkpoint_every={c.checkpoint_every} must be > 0")
  _req(_num(c, "log_every", int) > 0, f"--config.log_every={c.log_every} must be > 0")


def _data(c):
  """config.data: the corpus exists, the tokenizer exists, sizes are positive."""
  _req(isinstance(_get(c, "data.name"), str) and c.data.name,
       "--config.data.name must be a TFDS name, 'text:/path/*.txt' or a table "
       "('json:/path/*.jsonl', 'parquet:/path/*.parquet', 'hf_disk:/path/dir')")
  if c.data.name.startswith("text:"):
    import glob  # pylint: disable=import-outside-toplevel
    # Checked here, before the workdir is touched, rather than when the data is packed.
    pattern = os.path.expanduser(c.data.name[len("text:"):])
    _req(any(os.path.isfile(p) for p in glob.glob(pattern, recursive=True)),
         f"--config.data.name={c.data.name!r} matches no files; give a glob of UTF-8 text "
         "files, e.g. 'text:/path/*.txt'")
  _tables(c)
  _builtin_task(c)
  tok = _get(c, "data.tokenizer")
  if isinstance(tok, str) and tok not in ("", "byte"):
    _req(os.path.exists(os.path.expanduser(tok)), f"--config.data.tokenizer={tok!r} does not "
         "exist; give 'byte' or the path of a tokenizer.json, tokenizer.model or model directory")
  _req(_num(c, "data.seq_len", int) > 0, f"--config.data.seq_len={c.data.seq_len} must be > 0")
  _req(_num(c, "data.batch_size", int) > 0,
       f"--config.data.batch_size={c.data.batch_size} must be > 0")
  _req(_num(c, "data.eval_batches", int) >= 0, "--config.data.eval_batches must be >= 0")
  _req(str(_get(c, "data.add_bos")).lower() in ("auto", "true", "false"),
       "--config.data.add_bos must be auto, true or false")
  _req(0.0 <= _num(c, "data.dev_fraction") <= 0.5, f"--config.data.dev_fraction="
       f"{c.data.dev_fraction} must be in [0, 0.5] (the train split's share held out; 0 = none)")
  docs = _get(c, "data.max_documents")
  _req(docs is None or (isinstance(docs, int) and docs > 0),
       f"--config.data.max_documents={docs!r} must be > 0 (leave it unset for all documents)")


def _tables(c):
  """A table's files exist (checked before the workdir is touched); its split and columns."""
  val, columns = _get(c, "data.validation_name"), _get(c, "data.columns")
  _req(isinstance(val, str), "--config.data.validation_name must be a string")
  for field, col in columns.items():
    _req(field in tables.FIELDS and isinstance(col, str),
         f"--config.data.columns.{field}={col!r}: the fields are {', '.join(tables.FIELDS)}, "
         "each the name of a column (a string)")
  if val:
    _req(tables.is_table(c.data.name) and tables.is_table(val),
         f"--config.data.validation_name={val!r} is a table's validation split: give it and "
         "data.name as 'json:', 'parquet:' or 'hf_disk:' tables")
  for field, name in (("name", c.data.name), ("validation_name", val)):
    if name and tables.is_table(name):
      try:
        tables.table_files(name)
      except ValueError as e:
        raise ConfigError(f"--config.data.{field}={name!r}: {str(e).split(': ', 1)[-1]}") from None


def _builtin_task(c):
  """data.name='task:...': a task that exists, sizes that fit, no validation_name."""
  if not tasks.is_task(c.data.name):
    return
  try:
    tasks.task_name(c.data.name)
  except ValueError as e:
    raise ConfigError(f"--config.{e}") from None
  _req(not c.data.validation_name, "--config.data.validation_name must be '' with a built-in "
       "task: its dev split is the validation split")
  for f in ("train", "dev", "test", "min_digits", "max_digits", "seed"):
    _req(_num(c, f"data.task.{f}", int) >= (0 if f == "seed" else 1),
         f"--config.data.task.{f}={c.data.task[f]} must be >= {0 if f == 'seed' else 1}")
  t = c.data.task
  for f in ("reverse", "pad"):
    _req(isinstance(_get(c, f"data.task.{f}"), bool),
         f"--config.data.task.{f}={t[f]!r} must be True or False")
  _req(t.min_digits <= t.max_digits <= 18, f"--config.data.task digits [{t.min_digits}, "
       f"{t.max_digits}] must satisfy min_digits <= max_digits <= 18")


def _task_metric(c):
  """config.eval.task: a known kind, a regex that compiles, a verifier that imports, prompts
  that can have references."""
  e = _get(c, "eval.task")
  if not e.kind:
    return
  _req(e.kind in task_metrics.KINDS, f"--config.eval.task.kind={e.kind!r} is unknown; use one "
       f"of {', '.join(task_metrics.KINDS)}, or '' for no task metric")
  split = settings.task_split(c)
  _req(split in ("validation", "test") or tables.is_table(split),
       f"--config.eval.task.split={split!r} must be 'validation', 'test' or a table "
       "('json:/path/test.jsonl')")
  _req(split != "test" or tasks.is_task(c.data.name), "--config.eval.task.split='test' is a "
       "built-in task's test split; with data.name a table give 'validation' or a table name")
  _req(tables.is_table(c.data.name) or tasks.is_task(c.data.name) or tables.is_table(split),
       f"--config.eval.task.kind={e.kind!r} needs prompts with reference completions, and "
       f"data.name={c.data.name!r} has none: give a table of prompt/completion rows "
       "(json:/parquet:/hf_disk:), a built-in task ('task:addition') or eval.task.split as one")
  if tables.is_table(split):
    try:
      tables.table_files(split)
    except ValueError as err:
      raise ConfigError(f"--config.eval.task.split={split!r}: "
                        f"{str(err).split(': ', 1)[-1]}") from None
  for f in ("gen_len", "max_prompts", "pass_k", "samples"):
    _req(_num(c, f"eval.task.{f}", int) >= (1 if f == "gen_len" else 0),
         f"--config.eval.task.{f}={e[f]} must be >= {1 if f == 'gen_len' else 0}")
  _req(not e.pass_k or e.samples >= e.pass_k, f"--config.eval.task.samples={e.samples} must be "
       f">= pass_k={e.pass_k} (pass@k draws `samples` completions per prompt)")
  _req(not e.pass_k or _num(c, "eval.task.temperature") > 0, "--config.eval.task.temperature "
       "must be > 0 for pass@k (sampled completions)")
  task_metrics.scorer(settings.task_spec(e))  # the regex compiles, the verifier imports


def _selection(c):
  """Dev-split losses, best-checkpoint selection and the extra baselines."""
  every = _num(c, "train.dev_every", int)
  _req(every >= 0, f"--config.train.dev_every={every} must be >= 0 (0 = no dev loss)")
  for flag in ("train.select_best", "baseline.same_recipe", "baseline.more_labels"):
    _req(isinstance(_get(c, flag), bool), f"--config.{flag}={_get(c, flag)!r} must be True or "
         "False")
  _req(not every or c.data.dev_fraction > 0, f"--config.train.dev_every={every} needs a dev "
       "split: set --config.data.dev_fraction > 0 (e.g. 0.05), or dev_every=0")
  _req(not c.train.select_best or every, "--config.train.select_best=True needs dev losses: "
       "set --config.train.dev_every > 0, or select_best=False")


def _optimizer(c):
  """Learning rates, warmup, clipping."""
  for stage in ("teacher.pretrain.lr", "distill.lr", "baseline.lr"):
    _req(_num(c, stage) > 0, f"--config.{stage}={_get(c, stage)} must be > 0")
  _req(_num(c, "optimizer.warmup_steps", int) >= 0, "--config.optimizer.warmup_steps must be >= 0")
  _req(_num(c, "optimizer.clip_norm") > 0, "--config.optimizer.clip_norm must be > 0")


def _teacher(c):
  """config.teacher: a checkpoint that exists, or a shape to pretrain; dtypes."""
  ckpt = _get(c, "teacher.checkpoint")
  _req(isinstance(ckpt, str), "--config.teacher.checkpoint must be a path string")
  if ckpt:
    _checkpoint("--config.teacher.checkpoint", ckpt)
  _req(_get(c, "compute_dtype") in DTYPES,
       f"--config.compute_dtype={c.compute_dtype!r} must be '' (the preset's), auto (this "
       "machine's: bfloat16 where the CPU multiplies it fast), float32, bfloat16 or float16")
  _req(_get(c, "teacher.dtype") in DTYPES,
       f"--config.teacher.dtype={c.teacher.dtype!r} must be '' (the preset's), auto, float32, "
       "bfloat16 or float16")
  _req(_num(c, "teacher.pretrain.steps", int) >= 0, "--config.teacher.pretrain.steps must be >= 0")
  if not ckpt:
    _req(c.teacher.pretrain.steps > 0, "--config.teacher.pretrain.steps must be > 0 when no "
         "teacher checkpoint is given")
    _model(c, "teacher.model")


def _checkpoint(field: str, ckpt: str) -> None:
  """A teacher checkpoint that exists: a finished stage directory, 'hf:/dir' or 'gguf:/file'."""
  prefix = next((p for p in ("hf:", "gguf:") if ckpt.startswith(p)), "")
  path = ckpt[len(prefix):]
  _req(os.path.exists(path), f"{field}={ckpt!r} does not exist; give a "
       "teacher stage directory (e.g. runs/tiny/teacher), 'hf:/path/to/model', "
       "'gguf:/path/model.gguf', or '' to pretrain")
  if prefix == "gguf:":
    _req(os.path.isfile(path), f"{field}={ckpt!r} is not a file; give "
         "'gguf:/path/model.gguf'")
  if not prefix:
    _req(os.path.exists(os.path.join(path, "stage.json")), f"{field}="
         f"{ckpt!r} is not a finished distill stage (no stage.json); give e.g. runs/tiny/teacher "
         "after that run finished, or 'hf:/path' for a Hugging Face directory")


TEACHER_KEYS = ("seed", "checkpoint", "weight")


def _teachers(c):
  """config.teachers: an ensemble of pretrained (seed) or loaded (checkpoint) teachers."""
  entries = c.get("teachers", ())
  _req(isinstance(entries, (tuple, list)), f"--config.teachers={entries!r} must be a tuple of "
       "dicts such as ({'seed': 0, 'weight': 1.0}, {'seed': 1, 'weight': 1.0}), or ()")
  if not entries:
    return
  seen = set()
  for i, e in enumerate(entries):
    where = f"--config.teachers[{i}]={e!r}"
    _req(hasattr(e, "keys") and hasattr(e, "get"), f"{where} must be a dict such as "
         "{'seed': 0, 'weight': 1.0} or {'checkpoint': 'hf:/path', 'weight': 1.0}")
    unknown = sorted(set(e.keys()) - set(TEACHER_KEYS))
    _req(not unknown, f"{where} has unknown key(s) {unknown}; use {', '.join(TEACHER_KEYS)}")
    _req(("seed" in e) != bool(e.get("checkpoint")), f"{where} needs exactly one of 'seed' (a "
         "teacher pretrained here) and 'checkpoint' (a teacher loaded from it)")
    if "seed" in e:
      seed = e["seed"]
      _req(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
           f"{where}: seed must be an integer >= 0")
      key = ("seed", seed)
    else:
      _req(isinstance(e["checkpoint"], str), f"{where}: checkpoint must be a path string")
      _checkpoint(f"--config.teachers[{i}].checkpoint", e["checkpoint"])
      key = ("checkpoint", e["checkpoint"])
    _req(key not in seen, f"{where} repeats {key[0]} {key[1]!r}; give each teacher its own")
    seen.add(key)
    w = e.get("weight", 1.0)
    _req(isinstance(w, (int, float)) and not isinstance(w, bool),
         f"{where}: weight must be a number such as 1.0")
  try:
    check_weights([e.get("weight", 1.0) for e in entries])
  except ConfigError as err:
    raise ConfigError(f"--config.teachers: {err}") from None
  _req(not _get(c, "teacher.checkpoint"), f"--config.teachers and --config.teacher.checkpoint="
       f"{c.teacher.checkpoint!r} both name the teacher; give the checkpoint as a member "
       "({'checkpoint': ..., 'weight': 1.0}) or set --config.teachers=()")
  if any("seed" in e for e in entries):
    _req(c.teacher.pretrain.steps > 0, "--config.teacher.pretrain.steps must be > 0: "
         "--config.teachers pretrains the teachers given by seed")
    _model(c, "teacher.model")
  # What a teacher ensemble is not wired for (each needs one teacher's weights or states).
  for field, off in (("student.tokenizer", ""), ("student.vocab", 0), ("student.init", "random"),
                     ("distill.chunk_size", 0), ("distill.hidden.weight", 0),
                     ("distill.hidden.attention_weight", 0), ("distill.on_policy.fraction", 0)):
    _req(_get(c, field) == off, f"--config.{field}={_get(c, field)!r} is not wired for a "
         f"teacher ensemble (--config.teachers) yet; set it to {off!r} or use one teacher")


def _student(c):
  """config.student: its shape and init (a pruned shape is checked apart)."""
  _model(c, "student.model")
  _req(_get(c, "student.init") in ("random", "teacher_layers", "prune"),
       f"--config.student.init={c.student.init!r} must be 'random', 'teacher_layers' or 'prune'")
  if c.student.init == "prune":
    _prune(c)


def _objective(c):
  """config.distill: the divergence, temperature, mixing weights, schedules."""
  d = _get(c, "distill")
  _req(_num(c, "distill.steps", int) >= 0, f"--config.distill.steps={d.steps} must be >= 0")
  _req(d.loss in LOSS_KINDS, f"--config.distill.loss={d.loss!r} is unknown; use one of "
       f"{', '.join(LOSS_KINDS)}")
  _req(_num(c, "distill.temperature") > 0,
       f"--config.distill.temperature={d.temperature} must be > 0")
  _req(0.0 <= _num(c, "distill.alpha") <= 1.0,
       f"--config.distill.alpha={d.alpha} must be in [0, 1]")
  _req(0.0 <= _num(c, "distill.beta") <= 1.0, f"--config.distill.beta={d.beta} must be in [0, 1]")
  _req(0.0 <= _num(c, "distill.skew") < 1.0, f"--config.distill.skew={d.skew} must be in [0, 1)")
  for sched in ("alpha_schedule", "temperature_schedule"):
    v = _get(c, f"distill.{sched}")
    _req(v in ("constant", "linear", "cosine"), f"--config.distill.{sched}={v!r} must be "
         "constant, linear or cosine")
  _req(_num(c, "distill.temperature_end") > 0,
       f"--config.distill.temperature_end={d.temperature_end} must be > 0")
  _req(0.0 <= _num(c, "distill.alpha_end") <= 1.0,
       f"--config.distill.alpha_end={d.alpha_end} must be in [0, 1]")


def _teacher_source(c):
  """Where soft targets come from: online, the pipeline's cache or a cache directory; returns it."""
  src = _get(c, "distill.teacher_source")
  top_k = _get(c, "distill.top_k")
  _req(src in ("online", "cache") or (isinstance(src, str) and src.startswith("cache:")
                                      and len(src) > 6),
       f"--config.distill.teacher_source={src!r} must be 'online', 'cache' or 'cache:/path'")
  if src == "cache":
    _req(isinstance(top_k, int) and top_k > 0,
         "--config.distill.teacher_source='cache' needs --config.distill.top_k > 0 (the "
         "teacher tokens kept per position, e.g. 64)")
  if src.startswith("cache:"):
    _req(os.path.isdir(src[6:]), f"--config.distill.teacher_source: {src[6:]!r} does not exist; "
         "write it with `python -m distill.teacher_cache --config=... --top_k=64`")
  return src


def _qad(c):
  """Quantization-aware distillation: in the student stage or a stage of its own."""
  d = _get(c, "distill")
  _req(isinstance(_get(c, "distill.qat_activations"), bool),
       f"--config.distill.qat_activations={d.qat_activations!r} must be True or False")
  qat_steps = _num(c, "distill.qat_steps", int)
  _req(qat_steps >= 0, f"--config.distill.qat_steps={qat_steps} must be >= 0 (0 = QAD inside "
       "the student stage, from qat_start_fraction)")
  _req(not qat_steps or _get(c, "distill.qat") != "none",
       f"--config.distill.qat_steps={qat_steps} is a QAD stage, but --config.distill.qat='none'; "
       "set --config.distill.qat=int4_block32 (or int8, int4_block32_head8)")
  _req(_num(c, "distill.qat_lr") > 0, f"--config.distill.qat_lr={d.qat_lr} must be > 0")
  _req(_num(c, "distill.qat_outliers", int) >= 0,
       f"--config.distill.qat_outliers={d.qat_outliers} must be >= 0 (0 = no channel apart)")


def _targets(c, src):
  """Trimmed vocabularies, sparse targets and the chunked loss."""
  d, top_k = _get(c, "distill"), _get(c, "distill.top_k")
  vocab = _num(c, "student.vocab", int)
  _req(vocab >= 0, f"--config.student.vocab={vocab} must be >= 0 (0 = the teacher's vocabulary)")
  _req(not vocab or src != "online",
       f"--config.student.vocab={vocab} (a trimmed student vocabulary) "
       "needs --config.distill.teacher_source='cache' (with top_k > 0): the teacher's targets "
       "are mapped to the student's ids when the cache is written")
  _req(_get(c, "distill.tail") in ("renormalize", "tail_bucket"),
       f"--config.distill.tail={d.tail!r} must be 'renormalize' or 'tail_bucket'")
  _req(isinstance(top_k, int) and top_k >= 0,
       f"--config.distill.top_k={top_k!r} must be an integer >= 0 (0 = full)")
  _req(_num(c, "distill.chunk_size", int) >= 0,
       f"--config.distill.chunk_size={d.chunk_size} must be >= 0 (0 = dense)")
  _cross(c, src)


def _cross(c, src):
  """Cross-tokenizer distillation (a student tokenizer of its own)."""
  tok = _get(c, "student.tokenizer")
  _req(isinstance(tok, str), f"--config.student.tokenizer={tok!r} must be 'byte', a tokenizer "
       "path or '' (the teacher's)")
  _req(_num(c, "distill.uld_weight") >= 0,
       f"--config.distill.uld_weight={c.distill.uld_weight} must be >= 0")
  if not tok:
    return
  _req(src == "online", f"--config.student.tokenizer={tok} (a student tokenizer of its own) "
       "needs --config.distill.teacher_source='online': the teacher cache does not store byte "
       "offsets yet")
  for field, off in (("student.vocab", 0), ("distill.top_k", 0), ("distill.chunk_size", 0)):
    _req(_get(c, field) == off, f"--config.{field}={_get(c, field)} does not combine with "
         f"--config.student.tokenizer={tok} (cross-tokenizer distillation); set it to {off}")
  _req(_get(c, "student.init") == "random", f"--config.student.init={c.student.init} copies "
       f"the teacher's weights, but --config.student.tokenizer={tok} gives the student its "
       "own vocabulary: use --config.student.init=random")
  _req(not _get(c, "distill.hidden.weight") and not _get(c, "distill.on_policy.fraction")
       and not _get(c, "distill.qat_steps"), f"--config.student.tokenizer={tok}: hidden-state "
       "losses, on-policy steps and the QAD stage are not wired for cross-tokenizer "
       "distillation yet; set distill.hidden.weight, distill.on_policy.fraction and "
       "distill.qat_steps to 0")
  _req(not _get(c, "eval.task.kind"), f"--config.eval.task.kind={c.eval.task.kind!r} judges "
       "completions in the teacher's tokens, not wired for --config.student.tokenizer="
       f"{tok} yet; set --config.eval.task.kind=''")


def _hidden(c, src):
  """Hidden-state and attention transfer (online teachers only)."""
  h = _get(c, "distill.hidden")
  _req(_num(c, "distill.hidden.weight") >= 0, f"--config.distill.hidden.weight={h.weight} "
       "must be >= 0 (0 = off)")
  _req(_get(c, "distill.hidden.kind") in ("mse", "cosine"),
       f"--config.distill.hidden.kind={h.kind!r} must be 'mse' or 'cosine'")
  _req(isinstance(_get(c, "distill.hidden.layers"), str), "--config.distill.hidden.layers must "
       "be a string: '', 'auto' or pairs such as '0:1,1:3'")
  att = _get(c, "distill.hidden.attention_weight")
  _req(isinstance(att, (int, float)) and not isinstance(att, bool) and att >= 0,
       f"--config.distill.hidden.attention_weight={att!r} must be a number >= 0 (0 = off)")
  _req(not (h.layers and (h.weight or att) and src != "online"), "--config.distill.hidden "
       "needs teacher_source='online' (a cache holds no hidden states or attention maps); "
       "set hidden.weight=0 and hidden.attention_weight=0")


def _transfer_set(c, src):
  """The transfer set: the dataset share, or a SeqKD set written before."""
  d = _get(c, "distill")
  ts = _get(c, "distill.transfer_set")
  _req(isinstance(ts, str) and (ts == "" or ts.startswith("generated:")),
       f"--config.distill.transfer_set={ts!r} must be '' or 'generated:DIR'")
  if ts:
    _req(os.path.isfile(os.path.join(ts[len("generated:"):], "meta.json")),
         f"--config.distill.transfer_set: {ts[len('generated:'):]!r} holds no generated transfer "
         "set; write it with `python -m distill.teacher_cache --generate`")
    _req(src == "online", "--config.distill.transfer_set (generated) needs "
         "teacher_source='online': the cache covers the original windows only")
  _req(0.0 < _num(c, "distill.transfer_fraction") <= 1.0,
       f"--config.distill.transfer_fraction={d.transfer_fraction} must be in (0, 1]")


def _mesh(c, n_devices):
  """The mesh fits the devices and the batch splits over its data axes."""
  try:
    shape = dict(zip(sharding.MESH_AXES, sharding.mesh_shape(settings.mesh_spec(c.mesh),
                                                             n_devices)))
  except MeshError as e:
    raise ConfigError(f"--config.mesh: {e}") from None
  dp = shape["data"] * shape["fsdp"]
  _req(c.data.batch_size % dp == 0, f"--config.data.batch_size={c.data.batch_size} is not "
       f"divisible by the data-parallel size {dp} (mesh data x fsdp); use a multiple of {dp}")


def _heldout(c):
  """The second evaluation text."""
  heldout = _get(c, "eval.heldout")
  _req(isinstance(heldout, str) and (heldout in ("", "docs") or heldout.startswith("text:")),
       f"--config.eval.heldout={heldout!r} must be 'docs', 'text:/glob/*.txt' or ''")
  if heldout.startswith("text:"):
    import glob  # pylint: disable=import-outside-toplevel
    _req(any(os.path.isfile(p) for p in glob.glob(os.path.expanduser(heldout[5:]),
                                                  recursive=True)),
         f"--config.eval.heldout={heldout!r} matches no files; give a glob of UTF-8 text files")


def _export(c):
  """The export stage: presets, verification level, LiteRT-LM bundles."""
  for p in _get(c, "export.presets"):
    _req(p in ("phone", "watch"), f"--config.export.presets has {p!r}; use 'phone' and/or 'watch'")
  for q in settings.gguf_quants(c.export):
    _req(q in GGUF_QUANTS, f"--config.export.gguf has {q!r}; give a comma-separated list of "
         f"{', '.join(GGUF_QUANTS)}, or '' for no GGUF")
    _req(q != "q4_k_m" or importlib.util.find_spec("llama_cpp") is not None,
         "--config.export.gguf=q4_k_m needs llama.cpp's quantizer: pip install -r "
         "requirements-llamacpp.txt")
  _req(_get(c, "export.verify") in ("quick", "full", "none"),
       f"--config.export.verify={c.export.verify!r} must be quick, full or none")
  _req(str(_get(c, "export.litertlm")).lower() in ("true", "false", "auto"),
       f"--config.export.litertlm={c.export.litertlm!r} must be true, false or auto")
  for p in _get(c, "export.presets"):
    # Below 2: a percentage typed as 95 or 98 is refused; above 1 only fails a gate on purpose.
    v = _num(c, f"export.{p}.min_agreement")
    _req(0.0 <= v < 2.0, f"--config.export.{p}.min_agreement={v} must be a fraction in [0, 1] "
         "(0.95 = 95%; 0 = the quantization mode's own threshold)")


def validate(c, n_devices: int | None = None) -> None:
  """Raise ConfigError for the first problem found (sections in the order the run meets them)."""
  _run_fields(c)
  _data(c)
  _selection(c)
  _optimizer(c)
  _teacher(c)
  _teachers(c)
  _student(c)
  _objective(c)
  src = _teacher_source(c)
  _qad(c)
  _targets(c, src)
  _hidden(c, src)
  _on_policy(c, src)
  _transfer_set(c, src)
  if n_devices is not None:
    _mesh(c, n_devices)
  _heldout(c)
  _sample_eval(c)
  _task_metric(c)
  _export(c)
