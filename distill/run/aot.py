"""Compile the real distill step for a TPU topology on this CPU and print per-chip memory.

  pip install libtpu
  python -m distill.aot --config=configs/tpu_v5e_gemma7b_to_300m.py [--topology=v5e:16x16]
      [--layers=2] [--config.data.batch_size=...]

What is compiled is what `distill.train.loop.run` jits for the student stage, from the same
builder (`distill.train.step.make_step`): `step.train_step` with `objectives.distill_loss` (teacher
forward + student forward/backward + AdamW update), the state / teacher / batch shardings
from `distill.models.sharding` on the config's mesh, the state donated. Inputs are `jax.ShapeDtypeStruct`s: no weights, no tokenizer, no TPU. The topology
comes from libtpu's compile-only devices (`jax.experimental.topologies`).

Prints ONE JSON line on stdout (per-device bytes from `compiled.memory_analysis()`):
  argument_bytes, output_bytes, alias_bytes (outputs written in place of donated inputs),
  temp_bytes, generated_code_bytes, total_bytes = argument + output - alias + temp + code,
  hbm_bytes (the chip's memory per device), fits, and what was compiled.
Exit status 0 when it fits, 1 when it would not, 2 on a config or setup error. When XLA
itself refuses to compile (CompileTimeHbmOom: temporaries alone exceed HBM) the line has
`"error"`, `fits: false` and the temporaries XLA asked for as a lower bound of total_bytes.

`--layers=k` (k > 0) compiles reduced depths instead of the full model: (k, k), (2k, k) and
(k, 2k) teacher/student layers, and extrapolates every byte count linearly to the real depth.
The line then says `"extrapolated": true`. Exact for arguments and outputs (weights and
optimizer state grow by whole layers); close for temporaries, which XLA may schedule
differently at another depth. The default (full depth) is what to use with the accelerator
presets: their layer scan (`scan_layers`) keeps the compile independent of depth (the shipped
v5e config, 28 + 12 layers on 256 chips: 246 s on a quiet 2-core CPU; unrolled 1,103 s with
other jobs running).

Teacher shape: from `hf:/path/config.json` (or a `gguf:` file's metadata) when that path
exists, from a distill stage directory's model_config.json, otherwise from
`config.teacher.model` (which must then state `vocab_size`: shipped accelerator configs do,
so AOT works without the checkpoint).
"""
from __future__ import annotations

import importlib
import os
import time

# Compile-only use of libtpu: no chip is opened, so another process (another engineer's AOT
# run) holding the libtpu lock must not stop this one, and the CPU stays the default backend
# so nothing tries to run on a TPU. Set before jax is imported.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import re  # noqa: E402

from distill.inference import stage  # noqa: E402
from distill.models import gguf, hf, sharding  # noqa: E402
from distill.models.transformer import LM, count_params  # noqa: E402
from distill.run import pipeline, settings  # noqa: E402
from distill.run import validate as config_lib  # noqa: E402
from distill.train import objectives  # noqa: E402
from distill.train import step as step_lib  # noqa: E402

# HBM per chip by device kind, and how many devices a chip shows to a compile-only topology
# (v4 lists its 2 TensorCores separately; they share the chip's 32 GiB).
CHIP_HBM_GIB = {"TPU v4": 32.0, "TPU v5 lite": 16.0, "TPU v5": 95.0, "TPU v5p": 95.0,
                "TPU v6 lite": 32.0}
GIB = 1 << 30


class AotError(RuntimeError):
  pass


class CompileTimeOom(RuntimeError):
  """XLA refused to compile: the step's temporaries alone exceed the chip's HBM."""

  def __init__(self, message: str):
    super().__init__(message)
    # "... required for HLO temporaries (262.75G) exceeds available HBM (15.75G)"
    found = re.search(r"temporaries \(([\d.]+)([KMGT]?)\)", message)
    scale = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    self.temp_bytes = int(float(found.group(1)) * scale[found.group(2)]) if found else 0


def topology_devices(topology: str, slices: int = 1):
  """Compile-only TPU devices for `topology` (e.g. 'v5e:16x16'), `slices` copies over DCN."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  try:
    importlib.import_module("libtpu")  # compile-only topologies need the plugin installed
  except ImportError:
    raise AotError("libtpu is not installed; `pip install libtpu` (compile-only use, no TPU "
                   "needed)") from None
  kw = {"num_slices": slices} if slices > 1 else {}
  try:
    return list(topologies.get_topology_desc(topology, "tpu", **kw).devices)
  except Exception as e:  # pylint: disable=broad-except
    raise AotError(f"topology {topology!r}: {str(e).splitlines()[0][:300]}; use e.g. "
                   "v5e:16x16, v5p:4x4x4, v4:2x2x2, v6e:8x8") from None


def hbm_per_device(devices, preset) -> int:
  kind = devices[0].device_kind
  gib = CHIP_HBM_GIB.get(kind) or preset.hbm_gib
  cores = len({getattr(d, "core_on_chip", 0) for d in devices})
  return int(gib * GIB) // max(cores, 1)


def teacher_model_config(c):
  """The teacher's ModelConfig (full vocab), without reading any weights."""
  ckpt = c.teacher.checkpoint
  if ckpt.startswith("hf:") and os.path.exists(os.path.join(ckpt[3:], "config.json")):
    cfg = hf.model_config(hf.read_config(ckpt[3:]), dtype=settings.precision(c).teacher_dtype)
  elif ckpt.startswith("gguf:") and os.path.isfile(ckpt[5:]):
    cfg = hf.model_config(gguf.Checkpoint(ckpt[5:]).config,
                          dtype=settings.precision(c).teacher_dtype)
  elif ckpt and not ckpt.startswith("hf:") and os.path.isdir(ckpt):
    cfg = stage.read_model_config(ckpt)
  else:
    fields = dict(c.teacher.model)
    vocab = int(fields.pop("vocab_size", 0))
    if vocab <= 0:
      raise AotError("--config.teacher.model.vocab_size is needed to compile without a teacher "
                     "checkpoint; set it to the tokenizer's vocabulary size")
    cfg = pipeline.model_config(fields, vocab, c)
  return pipeline.read_only_teacher(cfg, c)  # as load_or_train_teacher holds it


def student_model_config(c, vocab: int):
  fields = {k: v for k, v in dict(c.student.model).items() if k != "vocab_size"}
  return pipeline.model_config(fields, vocab, c)


def compile_step(c, mesh, t_cfg, s_cfg):
  """Lower + compile the distill step as train.run builds it (`step.make_step`); returns
  (compiled, secs)."""
  import functools  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  teacher, student = LM(t_cfg), LM(s_cfg)
  tx = step_lib.make_optimizer(lr=c.distill.lr, steps=max(c.distill.steps, 1),
                               warmup=c.optimizer.warmup_steps,
                               weight_decay=c.optimizer.weight_decay,
                               clip_norm=c.optimizer.clip_norm)
  loss_fn = functools.partial(objectives.distill_loss, student=student, teacher=teacher,
                              cfg=settings.loss_config(c.distill))
  t_shard = sharding.param_shardings(teacher, mesh)
  built = step_lib.make_step(loss_fn, tx, student, mesh, teacher_shardings=t_shard,
                             skip_nonfinite=bool(c.train.skip_nonfinite))
  b_shard, t_dtype = built.batch_sharding, jnp.dtype(settings.precision(c).teacher_dtype)

  sds = lambda s, sh, dt=None: jax.ShapeDtypeStruct(s.shape, dt or s.dtype, sharding=sh)
  state = jax.tree.map(sds, built.abstract, built.state_shardings)
  t_params = jax.tree.map(lambda s, sh: sds(s, sh, t_dtype), teacher.abstract_params(), t_shard)
  bt = (c.data.batch_size, c.data.seq_len)
  batch = {"inputs": jax.ShapeDtypeStruct(bt, jnp.int32, sharding=b_shard),
           "targets": jax.ShapeDtypeStruct(bt, jnp.int32, sharding=b_shard),
           "mask": jax.ShapeDtypeStruct(bt, jnp.float32, sharding=b_shard)}
  key = jax.eval_shape(lambda: jax.random.key(0))
  rng = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=built.replicated)
  step = built.step
  t0 = time.time()
  lowered = step.lower(state, batch, rng, t_params)
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  # JaxRuntimeError moves between versions
    if "RESOURCE_EXHAUSTED" in str(e) or "HbmOom" in str(e):
      raise CompileTimeOom(str(e).splitlines()[0]) from None
    raise
  return compiled, time.time() - t0


def _memory(compiled) -> dict:
  ma = compiled.memory_analysis()
  if ma is None:
    raise AotError("this backend gives no memory analysis")
  m = {"argument_bytes": int(ma.argument_size_in_bytes),
       "output_bytes": int(ma.output_size_in_bytes),
       "alias_bytes": int(ma.alias_size_in_bytes),
       "temp_bytes": int(ma.temp_size_in_bytes),
       "generated_code_bytes": int(ma.generated_code_size_in_bytes)}
  return m


def _total(m: dict) -> int:
  # Donated state: its outputs reuse the argument buffers, so aliased bytes count once.
  return (m["argument_bytes"] + m["output_bytes"] - m["alias_bytes"] + m["temp_bytes"] +
          m["generated_code_bytes"])


def analyze(c, topology: str | None = None, layers: int = 0) -> dict:
  """Compile for the topology and return the result dict (what the JSON line holds)."""

  preset = settings.preset(c)
  topology = topology or c.topology or preset.topology
  if not topology:
    raise AotError(f"preset {c.preset!r} has no TPU topology; pass --topology=v5e:16x16 (or set "
                   "config.topology)")
  slices = sharding.num_slices(c.mesh)
  devices = topology_devices(topology, slices)
  try:
    config_lib.validate(c, n_devices=len(devices))
  except config_lib.ConfigError as e:
    raise AotError(f"{e} (topology {topology} has {len(devices)} devices)") from None
  if len(settings.teachers(c)) > 1:  # the compiled step holds one teacher
    raise AotError("distill.aot compiles the step of one teacher; --config.teachers names an "
                   "ensemble, which it does not compile yet: compile with --config.teachers=()")
  mesh = sharding.make_mesh(settings.mesh_spec(c.mesh), devices)
  t_cfg = teacher_model_config(c)
  s_cfg = student_model_config(c, t_cfg.vocab_size)
  out = {"config": "", "topology": topology, "slices": slices,
         "devices": len(devices), "device_kind": devices[0].device_kind,
         "mesh": dict(mesh.shape), "batch": c.data.batch_size, "seq_len": c.data.seq_len,
         "teacher_params": count_params(LM(t_cfg).abstract_params()),
         "student_params": count_params(LM(s_cfg).abstract_params()),
         "teacher_layers": t_cfg.n_layers, "student_layers": s_cfg.n_layers}

  out["hbm_bytes"] = hbm_per_device(devices, preset)
  out["hbm_gib"] = round(out["hbm_bytes"] / GIB, 2)
  t0 = time.time()
  try:
    if layers <= 0:
      compiled, secs = compile_step(c, mesh, t_cfg, s_cfg)
      mem, out["compile_seconds"], out["extrapolated"] = _memory(compiled), round(secs, 1), False
    else:
      k = layers
      runs, secs = {}, 0.0
      for name, (lt, ls) in {"base": (k, k), "teacher": (2 * k, k),
                             "student": (k, 2 * k)}.items():
        compiled, s = compile_step(c, mesh, t_cfg.replace(n_layers=lt),
                                   s_cfg.replace(n_layers=ls))
        runs[name], secs = _memory(compiled), secs + s
      # Linear in depth: bytes(L_t, L_s) = base + (L_t-k)/k * d_teacher + (L_s-k)/k * d_student.
      ft, fs = (t_cfg.n_layers - k) / k, (s_cfg.n_layers - k) / k
      mem = {f: int(round(runs["base"][f] + ft * (runs["teacher"][f] - runs["base"][f]) +
                          fs * (runs["student"][f] - runs["base"][f]))) for f in runs["base"]}
      out.update(compile_seconds=round(secs, 1), extrapolated=True, compiled_layers=k)
  except CompileTimeOom as e:
    # XLA stops at the first allocation it cannot place, so this is a lower bound.
    out.update(compile_seconds=round(time.time() - t0, 1), extrapolated=layers > 0,
               error=str(e)[:300], temp_bytes=e.temp_bytes, total_bytes=e.temp_bytes,
               total_gib=round(e.temp_bytes / GIB, 2), fits=False)
    if layers > 0:
      out["compiled_layers"] = layers
    return out
  out.update(mem)
  out["total_bytes"] = _total(mem)
  out["total_gib"] = round(out["total_bytes"] / GIB, 2)
  out["fits"] = out["total_bytes"] <= out["hbm_bytes"]
  return out
