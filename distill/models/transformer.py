"""Decoder-only transformer shared by teacher and student (Flax NNX).

One module covers the families the project loads (Llama/Mistral, Qwen2/3, Gemma 1/2/3, GPT-2)
through `ModelConfig` switches instead of subclasses, so teacher and student always run the
same code. Every parameter carries `axes=` logical-axis names; `distill.models.sharding` maps them to
mesh axes with one rules table.

Training code treats parameters as a plain nested dict of arrays ("pure dict"); `LM` is the
functional facade (`init`, `apply`) that merges them back into the NNX graph inside jit.

Shape letters: B batch, T query length, S key length / cache slots, D d_model, N query heads,
M kv heads, G = N // M query heads per kv head, K head dim, F d_ff, V vocab.
"""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from distill.models import layer_scan, ops
from distill.models.model_config import ModelConfig
from distill.models.ops import (apply_rope, project,
                                rope_table)

Params = dict[str, Any]


def _param(rngs, shape, axes, std, dtype):
  value = std * jax.random.truncated_normal(rngs.params(), -2.0, 2.0, shape, jnp.float32)
  return nnx.Param(value.astype(dtype), axes=axes)


def _const(shape, axes, value, dtype):
  return nnx.Param(jnp.full(shape, value, dtype), axes=axes)


class Norm(nnx.Module):

  def __init__(self, cfg: ModelConfig, dim: int, axis_name: str = "embed"):
    pd = jnp.dtype(cfg.param_dtype)
    self.kind, self.eps, self.plus_one = cfg.norm, cfg.norm_eps, cfg.norm_plus_one
    self.scale = _const((dim,), (axis_name,), 0.0 if cfg.norm_plus_one else 1.0, pd)
    if cfg.norm == "layer":
      self.bias = _const((dim,), (axis_name,), 0.0, pd)

  def __call__(self, x):
    # Statistics in fp32 whatever the activation dtype.
    xf = x.astype(jnp.float32)
    if self.kind == "layer":
      xf = xf - xf.mean(-1, keepdims=True)
    y = xf * jax.lax.rsqrt((xf * xf).mean(-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32)
    y = y * (1.0 + scale if self.plus_one else scale)
    if self.kind == "layer":
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, window: int, rngs: nnx.Rngs):
    d, n, m, k = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.k
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg, self.window = cfg, window
    local = bool(window and cfg.rope_local_theta)
    self.rope_theta = cfg.rope_local_theta if local else cfg.rope_theta
    self.rope_scaling = () if local else cfg.rope_scaling
    std = 1.0 / math.sqrt(d)
    self.q = _param(rngs, (d, n, k), ("embed", "heads", "kv"), std, pd)
    self.k = _param(rngs, (d, m, k), ("embed", "kv_heads", "kv"), std, pd)
    self.v = _param(rngs, (d, m, k), ("embed", "kv_heads", "kv"), std, pd)
    self.o = _param(rngs, (n, k, d), ("heads", "kv", "embed"),
                    1.0 / math.sqrt(n * k * 2 * cfg.n_layers), pd)
    if cfg.qkv_bias:
      self.q_bias = _const((n, k), ("heads", "kv"), 0.0, pd)
      self.k_bias = _const((m, k), ("kv_heads", "kv"), 0.0, pd)
      self.v_bias = _const((m, k), ("kv_heads", "kv"), 0.0, pd)
    if cfg.out_bias:
      self.o_bias = _const((d,), ("embed",), 0.0, pd)
    if cfg.qk_norm:
      self.q_norm = Norm(cfg, k, "kv")
      self.k_norm = Norm(cfg, k, "kv")

  def table_key(self):
    """Which rope table this layer reads (global and sliding layers may differ)."""
    return (self.rope_theta, self.rope_scaling)

  def __call__(self, x, positions, cache=None, cache_index=None, tables=None):
    """`tables`: {table_key(): rope_table(...)} built once per forward (else built here)."""
    cfg, dt = self.cfg, x.dtype
    q = project(x, self.q[...], cfg.outlier_channels)  # [B, T, N, K]
    k = project(x, self.k[...], cfg.outlier_channels)  # [B, T, M, K]
    v = project(x, self.v[...], cfg.outlier_channels)
    if cfg.qkv_bias:
      q, k, v = (q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt),
                 v + self.v_bias[...].astype(dt))
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    if cfg.pos == "rope":
      table = (tables or {}).get(self.table_key())
      if table is None:
        table = rope_table(positions, q.shape[-1], self.rope_theta, self.rope_scaling)
      q, k = apply_rope(q, table), apply_rope(k, table)

    if cache is None:
      keys, values, key_pos = k, v, positions
    else:
      # Contiguous write at cache_index: prefill writes T slots, decode writes one. Slots past
      # the query positions may hold stale values; the causal mask below hides them.
      ck, cv = cache
      keys = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, cache_index, 0, 0))
      values = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, cache_index, 0, 0))
      cache = (keys, values)
      key_pos = jnp.broadcast_to(jnp.arange(keys.shape[1]), (x.shape[0], keys.shape[1]))
      keys, values = keys.astype(dt), values.astype(dt)

    b, t, n, kd = q.shape
    m = keys.shape[2]
    scale = cfg.query_scale or 1.0 / math.sqrt(kd)
    fast = cfg.attention in ("cudnn", "dot_product") and cache is None and not cfg.attn_softcap
    if fast and ops.ATTN_MAPS:
      raise ValueError(f"attention maps need the einsum attention path, not attention="
                       f"{cfg.attention!r}: set the model's attention to 'xla'")
    if fast:
      out = jax.nn.dot_product_attention(
          q, keys, values, scale=scale, is_causal=True,
          local_window_size=(self.window - 1, 0) if self.window else None,
          implementation="cudnn" if cfg.attention == "cudnn" else None)
    else:
      q = (q * scale).reshape(b, t, m, n // m, kd)
      if cache is None and not self.window and not ops.ATTN_MAPS and t > ops.ATTENTION_BLOCK:
        out = ops.causal_blocks(q, keys, values, dt, cfg.attn_softcap)
      else:
        out = self._masked(q, keys, values, positions, key_pos, collect=cache is None)
      out = out.reshape(b, t, n, kd)
    y = project(out, self.o[...])  # [B, T, D]
    if cfg.out_bias:
      y = y + self.o_bias[...].astype(dt)
    return y, cache

  def _masked(self, q, keys, values, positions, key_pos, collect: bool):
    """One-shot attention with a position mask (KV cache, sliding windows, attention maps):
    q [B, T, M, G, K] scaled -> [B, T, M, G, K]."""
    dt = q.dtype
    logits = jnp.einsum("BTMGK,BSMK->BMGTS", q, keys, preferred_element_type=jnp.float32)
    logits = ops.softcap(logits, self.cfg.attn_softcap)
    qp, kp = positions[:, None, None, :, None], key_pos[:, None, None, None, :]
    allowed = kp <= qp
    if self.window:
      allowed &= kp > qp - self.window
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)  # fp32 softmax
    if ops.ATTN_MAPS and collect:
      ops.ATTN_MAPS[-1].append(probs.mean(axis=(1, 2)))  # BMGTS -> BTS
    return jnp.einsum("BMGTS,BSMK->BTMGK", probs.astype(dt), values,
                      preferred_element_type=jnp.float32).astype(dt)


class MLP(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.d_ff
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    if cfg.mlp in ("swiglu", "geglu"):
      self.gate = _param(rngs, (d, f), ("embed", "mlp"), 1.0 / math.sqrt(d), pd)
    self.up = _param(rngs, (d, f), ("embed", "mlp"), 1.0 / math.sqrt(d), pd)
    self.down = _param(rngs, (f, d), ("mlp", "embed"), 1.0 / math.sqrt(f * 2 * cfg.n_layers), pd)
    if cfg.mlp_bias:
      self.up_bias = _const((f,), ("mlp",), 0.0, pd)
      self.down_bias = _const((d,), ("embed",), 0.0, pd)

  def __call__(self, x):
    cfg, dt = self.cfg, x.dtype
    h = project(x, self.up[...], cfg.outlier_channels)  # [B, T, F]
    if cfg.mlp_bias:
      h = h + self.up_bias[...].astype(dt)
    if cfg.mlp == "swiglu":
      h = h * jax.nn.silu(project(x, self.gate[...], cfg.outlier_channels))
    elif cfg.mlp == "geglu":
      h = h * jax.nn.gelu(project(x, self.gate[...], cfg.outlier_channels), approximate=True)
    else:
      h = jax.nn.gelu(h, approximate=True)
    y = project(h, self.down[...])  # [B, T, D]
    if cfg.mlp_bias:
      y = y + self.down_bias[...].astype(dt)
    return y


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, index: int, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attn_norm = Norm(cfg, cfg.d_model)
    self.attn = Attention(cfg, cfg.layer_window(index), rngs)
    self.mlp_norm = Norm(cfg, cfg.d_model)
    self.mlp = MLP(cfg, rngs)
    if cfg.post_norms:
      self.post_attn_norm = Norm(cfg, cfg.d_model)
      self.post_mlp_norm = Norm(cfg, cfg.d_model)

  def __call__(self, x, positions, cache=None, cache_index=None, tables=None):
    h, cache = self.attn(self.attn_norm(x), positions, cache, cache_index, tables)
    if self.cfg.post_norms:
      h = self.post_attn_norm(h)
    x = x + h
    h = self.mlp(self.mlp_norm(x))
    if self.cfg.post_norms:
      h = self.post_mlp_norm(h)
    return x + h, cache


class Transformer(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    # Tied: the same matrix makes the logits, so keep them O(1) at init.
    std = 1.0 / math.sqrt(cfg.d_model) if cfg.tie_embeddings else 1.0
    self.embed = _param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), std, pd)
    if cfg.pos == "learned":
      self.pos_embed = _param(rngs, (cfg.max_len, cfg.d_model), ("length", "embed"), 0.02, pd)
    for i in range(cfg.n_layers):
      setattr(self, f"block_{i}", Block(cfg, i, rngs))
    self.final_norm = Norm(cfg, cfg.d_model)
    if not cfg.tie_embeddings:
      self.unembed = _param(rngs, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"),
                            1.0 / math.sqrt(cfg.d_model), pd)

  def unembedding(self):
    """[D, V] matrix mapping final hidden states to logits."""
    return self.embed[...].T if self.cfg.tie_embeddings else self.unembed[...]

  def __call__(self, tokens, positions, cache=None, cache_index=None, states=None, lookup=None):
    """Returns (final-normed hidden [B, T, D], new cache or None).

    `states`, a list, receives the residual stream after each block (feature distillation).
    `lookup(tokens) -> [B, T, D]` replaces the embedding-table read (the export's int8 table).
    """
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    x = (jnp.take(self.embed[...], tokens, axis=0) if lookup is None else lookup(tokens)).astype(dt)
    if cfg.embed_scale:
      x = x * jnp.asarray(math.sqrt(cfg.d_model), dt)
    if cfg.pos == "learned":
      x = x + jnp.take(self.pos_embed[...], positions, axis=0).astype(dt)
    if ops.ATTN_MAPS and cfg.remat and cache is None:
      raise ValueError("attention maps cannot leave a rematerialized block: set remat=False "
                       "for attention-transfer distillation")
    tables = {}
    if cfg.pos == "rope":
      for i in range(cfg.n_layers):
        key = getattr(self, f"block_{i}").attn.table_key()
        if key not in tables:
          tables[key] = rope_table(positions, cfg.k, *key)
    if cfg.scan_layers and cache is None and not ops.ATTN_MAPS:
      # One compiled block body whatever the depth (attention maps and the KV cache unroll).
      blocks = [getattr(self, f"block_{i}") for i in range(cfg.n_layers)]
      period = layer_scan.layer_period(cfg.n_layers, cfg.sliding_window, cfg.sliding_pattern)
      run = lambda blk, y: blk(y, positions, tables=tables)[0]
      x, outs = layer_scan.scan_blocks(blocks, x, run, period, cfg.remat,
                                       collect=states is not None)
      if states is not None:
        states.extend(outs)
      return self.final_norm(x), None
    new_cache = []
    for i in range(cfg.n_layers):
      block = getattr(self, f"block_{i}")
      layer_cache = None if cache is None else cache[i]
      if cfg.remat and cache is None:
        x, c = nnx.remat(lambda blk, y, p, tb: blk(y, p, tables=tb))(block, x, positions, tables)
      else:
        x, c = block(x, positions, layer_cache, cache_index, tables)
      new_cache.append(c)
      if states is not None:
        states.append(x)
    return self.final_norm(x), (None if cache is None else new_cache)


class LM:
  """Functional facade over `Transformer`: parameters are a pure dict of arrays."""

  def __init__(self, cfg: ModelConfig):
    self.cfg = cfg
    abstract = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    self.graphdef, self._abstract_state = nnx.split(abstract)

  # Everything here derives from the (frozen, hashable) config, so two LMs of one config are
  # interchangeable: equality by config lets compile caches keyed by LM (api._compiled,
  # evaluate._compiled) serve every stage and report that builds its own LM.
  def __eq__(self, other):
    return isinstance(other, LM) and other.cfg == self.cfg

  def __hash__(self):
    return hash(self.cfg)

  def abstract_params(self) -> Params:
    return nnx.to_pure_dict(self._abstract_state)

  def logical_axes(self) -> Params:
    """Pure dict of logical-axis tuples, same structure as the params."""
    is_var = lambda x: isinstance(x, nnx.Variable)
    axes = jax.tree.map(lambda v: v.get_metadata()["axes"], self._abstract_state, is_leaf=is_var)
    return nnx.to_pure_dict(axes) if isinstance(axes, nnx.State) else axes

  def init(self, rng) -> Params:
    return nnx.to_pure_dict(nnx.state(Transformer(self.cfg, nnx.Rngs(params=rng))))

  def module(self, params: Params) -> Transformer:
    return nnx.merge(self.graphdef, params)

  def hidden(self, params, tokens, positions=None):
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    return self.module(params)(tokens, positions)[0]

  def hidden_states(self, params, tokens):
    """(final-normed hidden [B, T, D], [residual stream [B, T, D] after block i for each i])."""
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    states = []
    hidden = self.module(params)(tokens, positions, states=states)[0]
    return hidden, states

  def unembedding(self, params):
    return self.module(params).unembedding()

  def logits_from_hidden(self, params, hidden):
    # One 2-D GEMM over flattened tokens (see `project`: XLA:CPU's weight gradient of the 3-D
    # form took several times the forward, and this matmul is most of a small student's step).
    w = self.unembedding(params)
    b, t, d = hidden.shape
    logits = ops.split_matmul(hidden.reshape(b * t, d), w.astype(hidden.dtype),
                              self.cfg.outlier_channels).reshape(b, t, -1)
    return ops.softcap(logits, self.cfg.final_softcap)

  def apply(self, params, tokens, positions=None):
    """Full forward: tokens [B, T] -> fp32 logits [B, T, V]."""
    return self.logits_from_hidden(params, self.hidden(params, tokens, positions))

  def init_cache(self, batch: int, length: int, dtype=None):
    cfg = self.cfg
    shape = (batch, length, cfg.n_kv_heads, cfg.k)
    dt = jnp.dtype(dtype or cfg.dtype)
    return [(jnp.zeros(shape, dt), jnp.zeros(shape, dt)) for _ in range(cfg.n_layers)]

  def apply_cached(self, params, tokens, cache, index, lookup=None):
    """Prefill or decode: tokens [B, T] at positions index..index+T-1 -> (logits, cache)."""
    positions = index + jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    hidden, cache = self.module(params)(tokens, positions, cache, index, lookup=lookup)
    return self.logits_from_hidden(params, hidden), cache


def count_params(params) -> int:
  return int(sum(x.size for x in jax.tree.leaves(params)))


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Forward FLOPs per token: 2 x matmul weights + attention scores/values at this length."""
  d, k = cfg.d_model, cfg.k
  attn_w = d * k * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
  mlp_w = d * cfg.d_ff * (3 if cfg.mlp in ("swiglu", "geglu") else 2)
  dense = cfg.n_layers * (attn_w + mlp_w) + d * cfg.vocab_size
  # Causal attention: on average a token attends to (seq_len + 1) / 2 keys.
  ctx = (seq_len + 1) / 2
  if cfg.sliding_window:
    ctx = min(ctx, cfg.sliding_window)
  attn = cfg.n_layers * 2 * 2 * cfg.n_heads * k * ctx
  return float(2 * dense + attn)
