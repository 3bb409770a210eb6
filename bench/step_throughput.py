"""Throughput and MFU of the real distill step against the PyTorch loop; prints one JSON line.

  python bench/step_throughput.py [--config=configs/bench_small.py] [--config.dtype=float32]
                                  [--torch=false] [--breakdown]

Builds what `train.run` jits for the student stage through `distill.train.step.make_step` -- the
`objectives.distill_loss` step, explicit in/out shardings, the state donated -- on random params and a
random batch, under the config's precision policy (`dtype`: the models' compute dtype, the
student's master weights stay fp32; `teacher_dtype`: the read-only teacher's weights). In the
same process it builds bench/torch_kd.py's PyTorch KD loop at the same shapes in fp32 and with
bf16 autocast, and times the three in turn, round after round, so all see the same machine
state. Reported:

  tokens_per_s        batch * seq_len / step seconds (median over the timed rounds)
  torch_fp32_tokens_per_s, torch_bf16_tokens_per_s, vs_torch_fp32, vs_torch_bf16
  teacher_share       a jitted teacher-forward-only function's time / the full step's time
  flops_per_s         model FLOPs per step / step seconds, where model FLOPs per token are
                      2 N_teacher + 6 N_student (N = matmul weights, unembedding included) plus
                      causal attention (forward 2 * 2 * heads * head_dim * (T+1)/2 per layer,
                      x3 for the student's forward + backward)
  peak_fp32_flops_per_s, peak_bf16_flops_per_s
                      one large jitted square matmul, f32 x f32 and bf16 x bf16 -> f32 (fp32
                      accumulation, as the models multiply), measured in this same run
  peak_flops_per_s    the peak of the dtypes the step multiplies in: each model's FLOPs at the
                      rate of its compute dtype (FLOPs / sum(FLOPs_i / peak_i))
  mfu                 flops_per_s / peak_flops_per_s
  cpu_s_per_step      process CPU seconds per step (time.process_time)

With --breakdown it also times the step's parts as separate jitted functions (teacher
forward, student forward+backward with the loss, optimizer update) so the time can be
attributed; the parts do not add up exactly because XLA fuses across them in the real step.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_small.py", "Bench config.")
_TORCH = flags.DEFINE_bool("torch", True, "Also time the PyTorch KD loop (fp32 and bf16 "
                           "autocast) in the same run.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False, "Also time the step's parts separately.")


def _timed(fn, args, warmup: int, repeats: int, *, rebuild=None):
  """(median wall s, best wall s, median CPU s, last args) of fn(*args).

  `rebuild(args, out)` gives the next call's args when fn donates some of them.
  """
  import jax  # pylint: disable=import-outside-toplevel
  for _ in range(warmup):
    out = fn(*args)
    jax.block_until_ready(out)
    if rebuild is not None:
      args = rebuild(args, out)
  walls, cpus = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    jax.block_until_ready(out)
    walls.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
    if rebuild is not None:
      args = rebuild(args, out)
  return statistics.median(walls), min(walls), statistics.median(cpus), args


def peak_matmul_flops(n: int, dtype: str, repeats: int = 5) -> float:
  """Best FLOP per wall second of an n x n @ n x n jitted matmul in `dtype`, fp32 accumulation."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32).astype(dtype)
  f = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST,
                                   preferred_element_type=jnp.float32))
  _, best, _, _ = _timed(f, (a, b), 1, repeats)
  return 2.0 * n ** 3 / best


def matmul_weights(cfg) -> int:
  """Weights that multiply activations per token (embedding lookup excluded, unembed in)."""
  d, k = cfg.d_model, cfg.k
  attn = d * k * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
  mlp = d * cfg.d_ff * (3 if cfg.mlp in ("swiglu", "geglu") else 2)
  return cfg.n_layers * (attn + mlp) + d * cfg.vocab_size


def attention_flops_fwd(cfg, seq_len: int) -> float:
  """Per token, forward: QK^T and PV over the (T+1)/2 keys a causal token sees on average."""
  return cfg.n_layers * 2 * 2 * cfg.n_heads * cfg.k * (seq_len + 1) / 2


def bench_loss_config(d):
  """configs/bench_small.py's `distill` section -> the objective (the fields it states)."""
  from distill.train import objectives  # pylint: disable=import-outside-toplevel
  return objectives.LossConfig(kind=d.loss, temperature=float(d.temperature),
                               alpha=float(d.alpha), beta=float(d.beta), skew=float(d.skew),
                               scale_by_t2=bool(d.scale_by_t2), chunk_size=int(d.chunk_size),
                               total_steps=int(d.steps))


def model_flops_per_token(t_cfg, s_cfg, seq_len: int) -> dict:
  teacher = 2 * matmul_weights(t_cfg) + attention_flops_fwd(t_cfg, seq_len)
  student = 3 * (2 * matmul_weights(s_cfg) + attention_flops_fwd(s_cfg, seq_len))
  return {"teacher": teacher, "student": student, "total": teacher + student}


def build(c):
  """(step_fn, state, batch, teacher_params, teacher/student LMs, helpers): the step
  `train.run` trains, from the same builder (`distill.train.step.make_step`)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from distill.run import hardware, precision, settings  # pylint: disable=import-outside-toplevel
  from distill.train import objectives  # pylint: disable=import-outside-toplevel
  from distill.models import sharding  # pylint: disable=import-outside-toplevel
  from distill.train import step  # pylint: disable=import-outside-toplevel
  from distill.models.transformer import LM  # pylint: disable=import-outside-toplevel
  from distill.models.model_config import ModelConfig  # pylint: disable=import-outside-toplevel

  def model_cfg(node, dtype):
    return ModelConfig(vocab_size=c.vocab_size, max_len=c.seq_len, dtype=dtype, **dict(node))

  mesh = sharding.make_mesh(settings.mesh_spec(c.mesh))
  # "auto" resolved as the pipeline's cpu preset does it (distill/run/precision.py).
  policy = precision.resolve(hardware.get("cpu"), c.dtype, c.teacher_dtype)
  dtype, t_dtype = policy.dtype, policy.teacher_dtype
  # As the pipeline: the read-only teacher computes in its weights' dtype unless that is fp32.
  teacher = LM(model_cfg(c.teacher, t_dtype if t_dtype != "float32" else dtype))
  student = LM(model_cfg(c.student, dtype))
  loss_fn = functools.partial(objectives.distill_loss, student=student, teacher=teacher,
                              cfg=bench_loss_config(c.distill))
  tx = step.make_optimizer(lr=1e-3, steps=1000, warmup=10)
  t_shard = sharding.param_shardings(teacher, mesh)
  t_params = jax.jit(lambda k: jax.tree.map(lambda x: x.astype(t_dtype), teacher.init(k)),
                     out_shardings=t_shard)(jax.random.key(c.seed))
  built = step.make_step(loss_fn, tx, student, mesh, teacher_shardings=t_shard)
  state = built.init(jax.random.key(c.seed + 1))
  tokens = jax.random.randint(jax.random.key(c.seed + 2), (c.batch_size, c.seq_len + 1), 0,
                              c.vocab_size, jnp.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "mask": jnp.ones((c.batch_size, c.seq_len), jnp.float32)}
  batch = jax.device_put(batch, built.batch_sharding)
  return dict(mesh=mesh, teacher=teacher, student=student, loss_fn=loss_fn, tx=tx,
              t_params=t_params, t_shard=t_shard, s_shard=built.state_shardings, state=state,
              batch=batch, step_fn=built.step, repl=built.replicated,
              b_shard=built.batch_sharding, precision=policy)


def shapes(lm) -> dict:
  cfg = lm.cfg
  return {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
          "n_kv_heads": cfg.n_kv_heads, "d_ff": cfg.d_ff, "vocab": cfg.vocab_size,
          "tied": cfg.tie_embeddings}


def breakdown(b, c, step_s: float) -> dict:
  """Seconds of the step's parts as separate jitted functions, and their share of the step."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from distill import losses  # pylint: disable=import-outside-toplevel
  from distill.train import objectives  # pylint: disable=import-outside-toplevel
  student, teacher, tx = b["student"], b["teacher"], b["tx"]
  batch, state, t_params = b["batch"], b["state"], b["t_params"]
  cfg = bench_loss_config(c.distill)

  t_logits = jax.jit(teacher.apply)(t_params, batch["inputs"])

  def student_loss(params, t_logits):
    s_logits = student.apply(params, batch["inputs"])
    return losses.distill_objective(
        s_logits, t_logits, batch["targets"], mask=batch["mask"], kind=cfg.kind,
        alpha=cfg.alpha, temperature=cfg.temperature, beta=cfg.beta, skew=cfg.skew,
        scale_by_t2=cfg.scale_by_t2)[0]

  def student_fwd_only(params):
    return student.apply(params, batch["inputs"])

  grads = jax.jit(jax.grad(student_loss))(state.params, t_logits)

  def update(grads, opt_state, params):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def loss_only(s_logits, t_logits):
    return losses.distill_objective(
        s_logits, t_logits, batch["targets"], mask=batch["mask"], kind=cfg.kind,
        alpha=cfg.alpha, temperature=cfg.temperature, beta=cfg.beta, skew=cfg.skew,
        scale_by_t2=cfg.scale_by_t2)[0]

  s_logits = jax.jit(student_fwd_only)(state.params)
  parts = {
      "student_fwd": (jax.jit(student_fwd_only), (state.params,)),
      "student_fwd_bwd_loss": (jax.jit(jax.value_and_grad(student_loss)),
                               (state.params, t_logits)),
      "loss_fwd_bwd": (jax.jit(jax.value_and_grad(loss_only)), (s_logits, t_logits)),
      "optimizer_update": (jax.jit(update), (grads, state.opt_state, state.params)),
  }
  out = {}
  for name, (fn, args) in parts.items():
    med, _, cpu, _ = _timed(fn, args, 1, c.repeats)
    out[name] = {"s": round(med, 4), "cpu_s": round(cpu, 4), "share": round(med / step_s, 3)}
  return out


def _round_robin(timers: dict, rounds: int) -> dict:
  """{name: [wall s per call]}: each timer called once per round, in turn (the first round is
  warmup), so a machine whose speed drifts during the run affects every side alike."""
  walls = {name: [] for name in timers}
  for r in range(rounds + 1):
    for name, fn in timers.items():
      t0 = time.perf_counter()
      fn()
      if r:
        walls[name].append(time.perf_counter() - t0)
  return walls


def effective_peak(flops: dict, t_dtype: str, s_dtype: str, peaks: dict) -> float:
  """FLOPs / sum(FLOPs_i / peak of model i's compute dtype): the rate the step's matmuls could
  reach if each ran at the best square-GEMM rate of the dtype it multiplies in."""
  seconds = flops["teacher"] / peaks[t_dtype] + flops["student"] / peaks[s_dtype]
  return flops["total"] / seconds


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import jax  # pylint: disable=import-outside-toplevel
  c = _CONFIG.value
  b = build(c)
  tokens = c.batch_size * c.seq_len
  step_args = [b["state"], b["batch"], jax.random.key(0), b["t_params"]]
  t0 = time.perf_counter()
  compiled = b["step_fn"].lower(*step_args).compile()
  compile_s = time.perf_counter() - t0
  cpu_s = []

  def jax_step():
    c0 = time.process_time()
    out = compiled(*step_args)
    jax.block_until_ready(out)
    step_args[0] = out[0]  # the state was donated
    cpu_s.append(time.process_time() - c0)

  timers = {"jax": jax_step}
  if _TORCH.value:
    import torch_kd  # pylint: disable=import-outside-toplevel
    kw = dict(vocab=c.vocab_size, seq_len=c.seq_len, batch=c.batch_size,
              temperature=c.distill.temperature)
    t_shape, s_shape = shapes(b["teacher"]), shapes(b["student"])
    timers["torch_fp32"] = torch_kd.KDLoop(t_shape, s_shape, bf16=False, **kw).step
    timers["torch_bf16"] = torch_kd.KDLoop(t_shape, s_shape, bf16=True, **kw).step
  walls = _round_robin(timers, c.repeats)
  step_s, step_best = statistics.median(walls["jax"]), min(walls["jax"])
  b["state"] = step_args[0]
  t_fwd = jax.jit(b["teacher"].apply, in_shardings=(b["t_shard"], b["b_shard"]))
  teacher_s, _, _, _ = _timed(t_fwd, (b["t_params"], b["batch"]["inputs"]), 1, c.repeats)

  peaks = {dt: peak_matmul_flops(c.peak_matmul, dt) for dt in ("float32", "bfloat16")}
  flops = model_flops_per_token(b["teacher"].cfg, b["student"].cfg, c.seq_len)
  peak = effective_peak(flops, b["teacher"].cfg.dtype, b["student"].cfg.dtype, peaks)
  achieved = flops["total"] * tokens / step_s
  result = {
      "bench": "step_throughput", "backend": jax.default_backend(),
      "devices": jax.device_count(), "cpu_count": os.cpu_count(),
      "dtype": b["precision"].dtype, "teacher_dtype": b["precision"].teacher_dtype,
      "teacher_compute_dtype": b["teacher"].cfg.dtype, "seq_len": c.seq_len,
      "batch": c.batch_size, "teacher": shapes(b["teacher"]), "student": shapes(b["student"]),
      "teacher_params": int(sum(x.size for x in jax.tree.leaves(b["t_params"]))),
      "student_params": int(sum(x.size for x in jax.tree.leaves(b["state"].params))),
      "rounds": c.repeats, "step_s": round(step_s, 4), "step_best_s": round(step_best, 4),
      "cpu_s_per_step": round(statistics.median(cpu_s[1:]), 4), "compile_s": round(compile_s, 2),
      "tokens_per_s": round(tokens / step_s, 1),
      "teacher_fwd_s": round(teacher_s, 4), "teacher_share": round(teacher_s / step_s, 3),
      "model_flops_per_token": {k: round(v) for k, v in flops.items()},
      "flops_per_s": round(achieved, 1),
      "peak_fp32_flops_per_s": round(peaks["float32"], 1),
      "peak_bf16_flops_per_s": round(peaks["bfloat16"], 1),
      "peak_flops_per_s": round(peak, 1), "mfu": round(achieved / peak, 3),
      "mfu_best_step": round(flops["total"] * tokens / step_best / peak, 3),
      "precision": b["precision"].as_dict(),
  }
  if _TORCH.value:
    for name in ("torch_fp32", "torch_bf16"):
      rate = tokens / statistics.median(walls[name])
      result[f"{name}_tokens_per_s"] = round(rate, 1)
      result[f"vs_{name}"] = round(result["tokens_per_s"] / rate, 3)
      # The PyTorch loop's MFU against the same peaks (bf16 autocast multiplies in bf16).
      dt = "bfloat16" if name == "torch_bf16" else "float32"
      result[f"{name}_mfu"] = round(flops["total"] * rate / effective_peak(flops, dt, dt, peaks),
                                    3)
  if _BREAKDOWN.value:
    result["breakdown"] = breakdown(b, c, step_s)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
