"""Checkpoint tensors -> the project's params: layouts per family, placed shard by shard."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from distill.models import sharding
from distill.errors import LoadError
from distill.models.hf.safetensors import Checkpoint
from distill.models.transformer import LM
from distill.models.model_config import ModelConfig


def default_mesh():
  """All local devices on the fsdp axis: weights split, never whole on one device."""
  return sharding.make_mesh(sharding.MeshSpec(data=1, fsdp=-1, tensor=1))


Layout = dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]


def layout(cfg: ModelConfig, kind: str) -> Layout:
  """Every project param path -> (canonical checkpoint name, transform to our shape).

  `kind` is "gpt2" or "llama" (every other family: they share names and differ in switches).
  `distill.to_hf` inverts the "llama" table to write checkpoints.
  """
  d, n, m, k = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.k
  same = lambda w: w
  out: Layout = {}
  if kind == "gpt2":
    out["embed"] = ("wte.weight", same)
    out["pos_embed"] = ("wpe.weight", same)
    for i in range(cfg.n_layers):
      p, b = f"h.{i}.", f"block_{i}."
      for j, name in enumerate("qkv"):  # Conv1D stores [in, out]: columns are q | k | v
        out[b + f"attn.{name}"] = (p + "attn.c_attn.weight",
                                   lambda w, j=j: w[:, j * d:(j + 1) * d].reshape(d, n, k))
        out[b + f"attn.{name}_bias"] = (p + "attn.c_attn.bias",
                                        lambda w, j=j: w[j * d:(j + 1) * d].reshape(n, k))
      out[b + "attn.o"] = (p + "attn.c_proj.weight", lambda w: w.reshape(n, k, d))
      out[b + "attn.o_bias"] = (p + "attn.c_proj.bias", same)
      for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
        out[b + f"{ours}.scale"] = (p + f"{theirs}.weight", same)
        out[b + f"{ours}.bias"] = (p + f"{theirs}.bias", same)
      out[b + "mlp.up"] = (p + "mlp.c_fc.weight", same)
      out[b + "mlp.up_bias"] = (p + "mlp.c_fc.bias", same)
      out[b + "mlp.down"] = (p + "mlp.c_proj.weight", same)
      out[b + "mlp.down_bias"] = (p + "mlp.c_proj.bias", same)
    out["final_norm.scale"] = ("ln_f.weight", same)
    out["final_norm.bias"] = ("ln_f.bias", same)
    if not cfg.tie_embeddings:
      out["unembed"] = ("lm_head.weight", lambda w: w.T)
    return out

  # nn.Linear stores [out, in]: transpose, then split the output features into heads.
  out["embed"] = ("model.embed_tokens.weight", same)
  for i in range(cfg.n_layers):
    p, b = f"model.layers.{i}.", f"block_{i}."
    out[b + "attn.q"] = (p + "self_attn.q_proj.weight", lambda w: w.T.reshape(d, n, k))
    out[b + "attn.k"] = (p + "self_attn.k_proj.weight", lambda w: w.T.reshape(d, m, k))
    out[b + "attn.v"] = (p + "self_attn.v_proj.weight", lambda w: w.T.reshape(d, m, k))
    out[b + "attn.o"] = (p + "self_attn.o_proj.weight", lambda w: w.T.reshape(n, k, d))
    if cfg.qkv_bias:
      out[b + "attn.q_bias"] = (p + "self_attn.q_proj.bias", lambda w: w.reshape(n, k))
      out[b + "attn.k_bias"] = (p + "self_attn.k_proj.bias", lambda w: w.reshape(m, k))
      out[b + "attn.v_bias"] = (p + "self_attn.v_proj.bias", lambda w: w.reshape(m, k))
    if cfg.out_bias:
      out[b + "attn.o_bias"] = (p + "self_attn.o_proj.bias", same)
    if cfg.qk_norm:
      out[b + "attn.q_norm.scale"] = (p + "self_attn.q_norm.weight", same)
      out[b + "attn.k_norm.scale"] = (p + "self_attn.k_norm.weight", same)
    out[b + "attn_norm.scale"] = (p + "input_layernorm.weight", same)
    if cfg.post_norms:  # Gemma 2/3 name the four norms by where they sit
      out[b + "post_attn_norm.scale"] = (p + "post_attention_layernorm.weight", same)
      out[b + "mlp_norm.scale"] = (p + "pre_feedforward_layernorm.weight", same)
      out[b + "post_mlp_norm.scale"] = (p + "post_feedforward_layernorm.weight", same)
    else:
      out[b + "mlp_norm.scale"] = (p + "post_attention_layernorm.weight", same)
    out[b + "mlp.gate"] = (p + "mlp.gate_proj.weight", lambda w: w.T)
    out[b + "mlp.up"] = (p + "mlp.up_proj.weight", lambda w: w.T)
    out[b + "mlp.down"] = (p + "mlp.down_proj.weight", lambda w: w.T)
  out["final_norm.scale"] = ("model.norm.weight", same)
  if not cfg.tie_embeddings:
    out["unembed"] = ("lm_head.weight", lambda w: w.T)
  return out


def flatten(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from flatten(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value


def _set(tree: dict, path: str, value):
  *parents, leaf = path.split(".")
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def load_params(ckpt: Checkpoint, lm: LM, kind: str, shardings) -> dict:
  """Every parameter read, transformed and placed into its shards one tensor at a time."""
  cfg = lm.cfg
  plan = layout(cfg, kind)
  shapes = dict(flatten(lm.abstract_params()))
  flat_shardings = dict(flatten(shardings))
  if set(plan) != set(shapes):
    raise AssertionError(f"layout/param mismatch: {sorted(set(plan) ^ set(shapes))}")
  dtype = np.dtype(jnp.dtype(cfg.param_dtype))
  params: dict = {}
  for path, (name, transform) in plan.items():
    want = shapes[path].shape
    host = transform(ckpt.read(name))
    if path in ("embed", "unembed", "pos_embed") and host.shape != want:
      host = _fit_rows(host, want, path, name)
    if host.shape != want:
      raise LoadError(f"tensor {name} gives shape {host.shape} for {path}, expected {want}; "
                      "config.json does not match the weights")
    host = host.astype(dtype, copy=False)
    params_leaf = jax.make_array_from_callback(want, flat_shardings[path],
                                               lambda idx, h=host: np.ascontiguousarray(h[idx]))
    _set(params, path, params_leaf)
    del host
  return params


def _fit_rows(host, want, path, name):
  """GPT-2 checkpoints may carry more positions than n_positions; nothing else is fixed up."""
  if path == "pos_embed" and host.shape[1:] == want[1:] and host.shape[0] >= want[0]:
    return host[:want[0]]
  raise LoadError(f"tensor {name} has shape {host.shape}, config.json implies {want} for "
                  f"{path}; config.json's vocab_size/hidden_size do not match the weights")
