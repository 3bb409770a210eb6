"""Glue between pruning and the rest of distill: calibration data, teachers, stage output.

`from_teacher` is the pipeline's `--config.student.init=prune` (one init function that the
student and the baseline both start from), `init_from_teacher` its `init=teacher_layers`;
`prune_to_stage` is the CLI's body.
"""
from __future__ import annotations

import itertools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from distill import data
from distill.inference import stage
from distill.inference import model as inference
from distill.models import sharding
from distill.errors import ConfigError
from distill.models.transformer import LM, count_params
from distill.methods.prune import core
from distill.methods.prune import vocab as vocab_lib
from distill.models import hf


def calibration_batches(it, n: int, mesh=None):
  """The first `n` batches of a train iterator (as global arrays when a mesh is given)."""
  out = []
  for local in itertools.islice(it, n):
    out.append(sharding.global_batch(local, mesh) if mesh is not None else local)
  return out


def student_target(teacher: LM, student: LM):
  """The pruned config for a pipeline student shape; run-time fields from the student."""
  s = student.cfg
  target = core.target_config(teacher.cfg, n_layers=s.n_layers, d_model=s.d_model, d_ff=s.d_ff,
                              n_heads=s.n_heads)
  if target.n_kv_heads != s.n_kv_heads:
    raise ConfigError(f"--config.student.model.n_kv_heads={s.n_kv_heads}: init='prune' keeps "
                      f"whole KV groups of the teacher, so n_kv_heads must be n_heads / "
                      f"{teacher.cfg.n_heads // teacher.cfg.n_kv_heads} = {target.n_kv_heads}")
  return target.replace(dtype=s.dtype, param_dtype=s.param_dtype, attention=s.attention,
                        remat=s.remat, scan_layers=s.scan_layers,
                        max_len=max(s.max_len, target.max_len))


def from_teacher(ctx, student: LM, teacher: LM, t_params, trim=None):
  """(student LM as pruned, init function) for `--config.student.init=prune`.

  The student keeps the teacher's head_dim (and every switch: norm, mlp, rope), so its config
  is the teacher's with the student's shape; the pruned weights are computed once here. With a
  vocabulary `trim` (`vocab.Trim`) the calibration batches hold student ids, read by the
  teacher through their teacher ids, and the pruned embedding keeps the trim's rows.
  """
  c = ctx.config
  p = c.student.prune
  cfg = student_target(teacher, student)
  batches = []
  if p.calib_batches:  # both methods: the random one uses them for the norm gains only
    it = ctx.train_iter(c.distill.transfer_fraction)
    batches = calibration_batches(it, int(p.calib_batches))
    if trim is not None:
      batches = [dict(b, inputs=np.asarray(trim.rows)[b["inputs"]]) for b in batches]
    batches = [sharding.global_batch(b, ctx.mesh) for b in batches]
  params, plan, imp = core.prune(teacher, t_params, cfg, batches, method=p.method, seed=c.seed,
                                 rescale_norms=bool(p.norm_gains))
  if trim is not None:
    params, cfg = vocab_lib.trim_params(params, cfg, trim)
  logging.info("[prune] %s pruning kept layers %s of %d (%s calibration tokens)", p.method,
               plan.layers.tolist(), teacher.cfg.n_layers, imp.tokens if imp else 0)
  pruned = LM(cfg)

  def init(key):
    del key  # the same pruned weights for every stage that starts from them
    want = pruned.abstract_params()
    return jax.tree.map(lambda x, w: jnp.asarray(x, w.dtype), params, want)
  init.plan = plan  # the layer and channel map feature losses start from (distill.methods.features)
  return pruned, init


def load_teacher(path: str):
  """(LM, params, tokenizer) of a stage directory or `hf:DIR`, fp32 on the default devices."""
  if path.startswith("hf:"):
    return hf.load(path[3:], hf.default_mesh(), "float32")
  m = inference.load(path, dtype="float32")
  return m.lm, m.params, m.tokenizer


def prune_to_stage(teacher_path: str, out: str, target, *, data_spec: data.DataSpec,
                   batch_size: int, fraction: float,
                   workdir: str, calib_batches: int, method: str = "activation", seed: int = 0,
                   vocab: int | None = None) -> dict:
  """Prune a teacher to `target` and write a stage directory; returns its stage info."""
  lm, params, tok = load_teacher(teacher_path)
  trim = None
  if vocab is not None:
    vocab_lib.check_k(tok, vocab)  # before the data pass or any file
  batches = []
  if calib_batches or vocab is not None:
    it = data.make_train_iterator(data_spec, tok, workdir, batch_size=batch_size,
                                  seed=seed, fraction=fraction)
    batches = calibration_batches(it, calib_batches)
  pruned, plan, imp = core.prune(lm, params, target, batches,
                                 method=method, seed=seed)
  cfg = target
  if vocab is not None:
    ids, rows = data.train_windows(data_spec, tok, workdir, fraction)
    trim = vocab_lib.trim(tok, vocab_lib.count_ids(ids, rows, lm.cfg.vocab_size), vocab, workdir)
    pruned, cfg = vocab_lib.trim_params(pruned, cfg, trim)
    tok = trim.tokenizer
  info = {"pruned_from": teacher_path, "method": method, "plan": plan.to_json(),
          "calibration_tokens": imp.tokens if imp else 0,
          "teacher_params": count_params(params), "params": count_params(pruned)}
  if trim is not None:
    info["vocab"] = {"kept": int(trim.kept.size), "teacher_vocab": lm.cfg.vocab_size}
  stage.save_stage(out, cfg, tok, pruned, info)
  return info


def init_from_teacher(student: LM, teacher: LM, t_params):
  """Init that copies every k-th teacher layer (and embeddings/norms) where shapes match.

  DistilBERT / Minitron-style depth pruning: student layer i takes teacher layer i * k with
  k = teacher layers // student layers. Raises ConfigError when no shape matches at all.
  """
  stride = max(1, teacher.cfg.n_layers // student.cfg.n_layers)
  shapes_s = student.abstract_params()

  def same(a, b):
    return (jax.tree.structure(a) == jax.tree.structure(b) and
            all(x.shape == y.shape for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))

  plan = {}
  for key in shapes_s:
    src = f"block_{int(key.split('_')[1]) * stride}" if key.startswith("block_") else key
    if src in t_params and same(shapes_s[key], t_params[src]):
      plan[key] = src
  if not any(k.startswith("block_") for k in plan):
    raise ConfigError("--config.student.init='teacher_layers' needs student layers shaped like "
                      "the teacher's (same d_model, heads, d_ff); use init='random'")

  def init(key):
    params = student.init(key)
    for dst, src in plan.items():
      params[dst] = jax.tree.map(lambda t, s: t.astype(s.dtype), t_params[src], params[dst])
    return params
  return init
