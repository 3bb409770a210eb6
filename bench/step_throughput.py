"""Throughput and MFU of the real distill step; prints one JSON line.

  python bench/step_throughput.py [--config=configs/bench_small.py] [--config.batch_size=8]
                                  [--attention=einsum|dpa] [--breakdown]

Builds what `train.run` jits for the student stage -- `train.train_step` with
`train.distill_loss`, explicit in/out shardings, the state donated -- on random params and a
random batch, and times it. Reported:

  tokens_per_s    batch * seq_len / step seconds (median of `repeats` timed steps)
  teacher_share   a jitted teacher-forward-only function's time / the full step's time
  flops_per_s     model FLOPs per step / step seconds, where model FLOPs per token are
                  2 N_teacher + 6 N_student (N = matmul weights, unembedding included) plus
                  causal attention (forward 2 * 2 * heads * head_dim * (T+1)/2 per layer,
                  x3 for the student's forward + backward)
  mfu             flops_per_s / peak, peak = the f32 rate of one large jitted square matmul
                  measured in this same process (so "1.0" means "as fast as XLA's best GEMM
                  on this machine", not a datasheet number)
  mfu_cpu         the same with CPU seconds (process_time) for both the step and the matmul:
                  on a CPU shared with other jobs the wall-time MFU swings with their load
  cpu_s_per_step  process CPU seconds per step (time.process_time): on a shared machine the
                  wall time is noisy, CPU seconds much less so

With --breakdown it also times the step's parts as separate jitted functions (teacher
forward, student forward+backward with the loss, optimizer update) so the time can be
attributed; the parts do not add up exactly because XLA fuses across them in the real step.
--attention=dpa swaps the model's einsum attention for `jax.nn.dot_product_attention` for the
duration of the bench (a prototype: the model file itself is not changed).
"""
from __future__ import annotations

import functools
import json
import math
import os
import statistics
import sys
import time

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_CONFIG = config_flags.DEFINE_config_file("config", "configs/bench_small.py", "Bench config.")
_ATTENTION = flags.DEFINE_enum("attention", "einsum", ["einsum", "dpa"],
                               "Attention implementation used during the bench.")
_MATMULS = flags.DEFINE_enum("matmuls", "einsum", ["einsum", "2d"],
                             "Projection matmuls as in the model (3-D einsums) or on [B*T, D].")
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


def peak_matmul_flops(n: int, repeats: int = 5) -> tuple[float, float]:
  """(FLOP per wall second, FLOP per CPU second) of an n x n @ n x n f32 jitted matmul."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
  _, best, cpu, _ = _timed(f, (a, b), 1, repeats)
  return 2.0 * n ** 3 / best, 2.0 * n ** 3 / max(cpu, 1e-9)


def matmul_weights(cfg) -> int:
  """Weights that multiply activations per token (embedding lookup excluded, unembed in)."""
  d, k = cfg.d_model, cfg.k
  attn = d * k * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
  mlp = d * cfg.d_ff * (3 if cfg.mlp in ("swiglu", "geglu") else 2)
  return cfg.n_layers * (attn + mlp) + d * cfg.vocab_size


def attention_flops_fwd(cfg, seq_len: int) -> float:
  """Per token, forward: QK^T and PV over the (T+1)/2 keys a causal token sees on average."""
  return cfg.n_layers * 2 * 2 * cfg.n_heads * cfg.k * (seq_len + 1) / 2


def model_flops_per_token(t_cfg, s_cfg, seq_len: int) -> dict:
  teacher = 2 * matmul_weights(t_cfg) + attention_flops_fwd(t_cfg, seq_len)
  student = 3 * (2 * matmul_weights(s_cfg) + attention_flops_fwd(s_cfg, seq_len))
  return {"teacher": teacher, "student": student, "total": teacher + student}


def use_dot_product_attention():
  """Monkeypatch: the no-cache attention path through jax.nn.dot_product_attention."""
  import math  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from distill.models import transformer  # pylint: disable=import-outside-toplevel
  original = transformer.Attention.__call__

  def call(self, x, positions, cache=None, cache_index=None):
    cfg = self.cfg
    if (cache is not None or cfg.attn_softcap or self.window or cfg.qkv_bias or cfg.qk_norm
        or cfg.pos != "rope"):
      return original(self, x, positions, cache, cache_index)
    dt = x.dtype
    q = jnp.einsum("BTD,DNK->BTNK", x, self.q[...].astype(dt))
    k = jnp.einsum("BTD,DMK->BTMK", x, self.k[...].astype(dt))
    v = jnp.einsum("BTD,DMK->BTMK", x, self.v[...].astype(dt))
    q = transformer.rope(q, positions, self.rope_theta, self.rope_scaling)
    k = transformer.rope(k, positions, self.rope_theta, self.rope_scaling)
    scale = cfg.query_scale or 1.0 / math.sqrt(q.shape[-1])
    out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True)
    y = jnp.einsum("BTNK,NKD->BTD", out, self.o[...].astype(dt))
    if cfg.out_bias:
      y = y + self.o_bias[...].astype(dt)
    return y, None

  transformer.Attention.__call__ = call


def _dense(x, w, n_in: int = 1):
  """x [..., *w.shape[:n_in]] @ w as one 2-D matmul: [rows, in] @ [in, out], then reshaped."""
  lead, ins, outs = x.shape[:x.ndim - n_in], w.shape[:n_in], w.shape[n_in:]
  rows, k = math.prod(lead), math.prod(ins)
  y = x.reshape(rows, k) @ w.reshape(k, math.prod(outs))
  return y.reshape(*lead, *outs)


def use_2d_matmuls():
  """Monkeypatch: every projection on activations flattened to [B*T, D].

  With 3-D einsums ("BTD,DF->BTF") the weight gradient contracts over two axes (B and T);
  XLA:CPU then materializes the activation gradient transposed, inside the elementwise fusion
  that produces it (SwiGLU's backward), which walks four [B*T, F] arrays column by column.
  One flattened row axis makes the weight gradient a plain [K, rows] @ [rows, N] GEMM.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from distill.models import transformer  # pylint: disable=import-outside-toplevel
  original_mlp, original_attn = transformer.MLP.__call__, transformer.Attention.__call__

  def mlp(self, x):
    cfg, dt = self.cfg, x.dtype
    if cfg.mlp_bias or cfg.mlp != "swiglu":
      return original_mlp(self, x)
    h = _dense(x, self.up[...].astype(dt)) * jax.nn.silu(_dense(x, self.gate[...].astype(dt)))
    return _dense(h, self.down[...].astype(dt))

  def attention(self, x, positions, cache=None, cache_index=None):
    cfg = self.cfg
    if (cache is not None or cfg.attn_softcap or self.window or cfg.qkv_bias or cfg.qk_norm
        or cfg.pos != "rope" or cfg.out_bias):
      return original_attn(self, x, positions, cache, cache_index)
    dt = x.dtype
    q = _dense(x, self.q[...].astype(dt))
    k = _dense(x, self.k[...].astype(dt))
    v = _dense(x, self.v[...].astype(dt))
    q = transformer.rope(q, positions, self.rope_theta, self.rope_scaling)
    k = transformer.rope(k, positions, self.rope_theta, self.rope_scaling)
    b, t, n, kd = q.shape
    m = k.shape[2]
    scale = cfg.query_scale or 1.0 / math.sqrt(kd)
    if _ATTENTION.value == "dpa":
      out = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True)
    else:
      q = (q * scale).reshape(b, t, m, n // m, kd)
      logits = jnp.einsum("BTMGK,BSMK->BMGTS", q, k, preferred_element_type=jnp.float32)
      allowed = positions[:, None, None, None, :] <= positions[:, None, None, :, None]
      logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(logits, axis=-1).astype(dt)
      out = jnp.einsum("BMGTS,BSMK->BTMGK", probs, v).reshape(b, t, n, kd)
    return _dense(out, self.o[...].astype(dt), n_in=2), None

  transformer.MLP.__call__ = mlp
  transformer.Attention.__call__ = attention


def build(c):
  """(step_fn, state, batch, teacher_params, teacher/student LMs, helpers) as train.run does."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from distill import sharding, train  # pylint: disable=import-outside-toplevel
  from distill.models.transformer import LM, ModelConfig  # pylint: disable=import-outside-toplevel

  def model_cfg(node, dtype):
    return ModelConfig(vocab_size=c.vocab_size, max_len=c.seq_len, dtype=dtype, **dict(node))

  mesh = sharding.make_mesh(c.mesh)
  teacher = LM(model_cfg(c.teacher, c.dtype))
  student = LM(model_cfg(c.student, c.dtype))
  loss_cfg = train.LossConfig.from_config(c.distill)
  loss_fn = functools.partial(train.distill_loss, student=student, teacher=teacher, cfg=loss_cfg)
  tx = train.make_optimizer(lr=1e-3, steps=1000, warmup=10)

  t_shard = sharding.param_shardings(teacher, mesh)
  t_params = jax.jit(lambda k: jax.tree.map(lambda x: x.astype(c.teacher_dtype), teacher.init(k)),
                     out_shardings=t_shard)(jax.random.key(c.seed))

  def init(key):
    params = student.init(key)
    return train.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))

  rng = jax.random.key(c.seed + 1)
  abstract = jax.eval_shape(init, rng)
  s_shard = train.state_shardings(abstract, sharding.param_shardings(student, mesh), mesh)
  state = jax.jit(init, out_shardings=s_shard)(rng)
  repl = sharding.replicated(mesh)
  b_shard = sharding.batch_sharding(mesh)
  step_fn = jax.jit(functools.partial(train.train_step, loss_fn=loss_fn, tx=tx),
                    in_shardings=(s_shard, b_shard, repl, t_shard),
                    out_shardings=(s_shard, repl), donate_argnums=(0,))
  tokens = jax.random.randint(jax.random.key(c.seed + 2), (c.batch_size, c.seq_len + 1), 0,
                              c.vocab_size, jnp.int32)
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
           "mask": jnp.ones((c.batch_size, c.seq_len), jnp.float32)}
  batch = jax.device_put(batch, b_shard)
  return dict(mesh=mesh, teacher=teacher, student=student, loss_fn=loss_fn, tx=tx,
              t_params=t_params, t_shard=t_shard, s_shard=s_shard, state=state, batch=batch,
              step_fn=step_fn, repl=repl, b_shard=b_shard)


def shapes(lm) -> dict:
  cfg = lm.cfg
  return {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
          "n_kv_heads": cfg.n_kv_heads, "d_ff": cfg.d_ff, "vocab": cfg.vocab_size,
          "tied": cfg.tie_embeddings}


def breakdown(b, c, step_s: float) -> dict:
  """Seconds of the step's parts as separate jitted functions, and their share of the step."""
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from distill import losses, train  # pylint: disable=import-outside-toplevel
  student, teacher, tx = b["student"], b["teacher"], b["tx"]
  batch, state, t_params = b["batch"], b["state"], b["t_params"]
  cfg = train.LossConfig.from_config(c.distill)

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


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import jax  # pylint: disable=import-outside-toplevel
  c = _CONFIG.value
  if _MATMULS.value == "2d":
    use_2d_matmuls()
  elif _ATTENTION.value == "dpa":
    use_dot_product_attention()
  b = build(c)
  tokens = c.batch_size * c.seq_len

  def rebuild(args, out):
    return (out[0],) + tuple(args[1:])

  step_args = (b["state"], b["batch"], jax.random.key(0), b["t_params"])
  t0 = time.perf_counter()
  compiled = b["step_fn"].lower(*step_args).compile()
  compile_s = time.perf_counter() - t0
  xla_flops = None
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", 0.0)) or None
  except Exception:  # pylint: disable=broad-except  # not every backend reports costs
    pass
  step_s, step_best, step_cpu, step_args = _timed(compiled, step_args, c.warmup, c.repeats,
                                                  rebuild=rebuild)
  # The state was donated along the way: the breakdown uses the latest one.
  b["state"] = step_args[0]
  t_fwd = jax.jit(b["teacher"].apply, in_shardings=(b["t_shard"], b["b_shard"]))
  teacher_s, _, _, _ = _timed(t_fwd, (b["t_params"], b["batch"]["inputs"]), 1, c.repeats)

  peak, peak_cpu = peak_matmul_flops(c.peak_matmul)
  flops = model_flops_per_token(b["teacher"].cfg, b["student"].cfg, c.seq_len)
  achieved = flops["total"] * tokens / step_s
  result = {
      "bench": "step_throughput", "backend": jax.default_backend(),
      "devices": jax.device_count(), "cpu_count": os.cpu_count(),
      "attention": _ATTENTION.value, "matmuls": _MATMULS.value, "dtype": c.dtype, "teacher_dtype": c.teacher_dtype,
      "seq_len": c.seq_len, "batch": c.batch_size,
      "teacher": shapes(b["teacher"]), "student": shapes(b["student"]),
      "teacher_params": int(sum(x.size for x in jax.tree.leaves(b["t_params"]))),
      "student_params": int(sum(x.size for x in jax.tree.leaves(b["state"].params))),
      "step_s": round(step_s, 4), "step_best_s": round(step_best, 4),
      "cpu_s_per_step": round(step_cpu, 4), "compile_s": round(compile_s, 2),
      "tokens_per_s": round(tokens / step_s, 1),
      "teacher_fwd_s": round(teacher_s, 4), "teacher_share": round(teacher_s / step_s, 3),
      "model_flops_per_token": {k: round(v) for k, v in flops.items()},
      "xla_flops_per_token": round(xla_flops / tokens) if xla_flops else None,
      "flops_per_s": round(achieved, 1), "peak_flops_per_s": round(peak, 1),
      "mfu": round(achieved / peak, 3),
      "mfu_best_step": round(flops["total"] * tokens / step_best / peak, 3),
      # The same ratio in CPU seconds (step and matmul both): what MFU would be if nothing else
      # shared the cores. On a shared CPU this is the stable number; on accelerators use mfu.
      "mfu_cpu": round(flops["total"] * tokens / step_cpu / peak_cpu, 3),
  }
  if _BREAKDOWN.value:
    result["breakdown"] = breakdown(b, c, step_s)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  app.run(main)
