"""Hugging Face checkpoints (`config.json` + `*.safetensors`) -> the project's transformer.

Families: llama (Llama 2/3, Mistral), qwen2, qwen3, gemma, gemma2, gemma3 (text, including
the language model inside a multimodal `gemma3` checkpoint) and gpt2. Each maps onto
`ModelConfig` switches; no family has its own forward code.

Loading never holds the model whole on one device nor twice on the host: each tensor is read
on its own (`pread` from the file, no mmap, so page cache never counts as resident memory),
reshaped/transposed on the host into the project's layout, cast to the target dtype and put
straight into its shards with `jax.make_array_from_callback`. Peak host memory is about the
loaded model plus a couple of its largest tensor (`bench/hf_load_memory.py` measures it).

Only safetensors are read: pickled weights (`.bin`, `.pt`, `.pth`) are refused because
unpickling runs code. HF's q/k projections use the half-split rotary layout, the same as
`transformer.rope`, so they load without permutation (the parity tests check it).

Public: `load_model(path, dtype=None) -> api.Model`, `load_teacher(path, mesh, dtype)`,
`model_config(hf_config)`, `load_tokenizer(path)`, `align_vocab(...)`.
"""
from __future__ import annotations

import glob
import json
import math
import os
import struct
from typing import Callable

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from distill import sharding, tokenizers
from distill.api import LoadError, Model
from distill.models.transformer import LM, ModelConfig

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3",
            "gpt2")
_GEMMA = ("gemma", "gemma2", "gemma3_text")
_PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}
_CONVERT_HINT = ("convert it once, in a trusted environment, with transformers: "
                 "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT, "
                 "safe_serialization=True)")


# ---------------------------------------------------------------------------------------------
# config.json -> ModelConfig

def read_config(path: str) -> dict:
  """config.json as a dict (a multimodal gemma3 gives its text_config), or a clear LoadError."""
  if not os.path.isdir(path):
    raise LoadError(f"Hugging Face directory {path!r} does not exist; give 'hf:/path/to/dir' "
                    "holding config.json and *.safetensors")
  file = os.path.join(path, "config.json")
  if not os.path.exists(file):
    raise LoadError(f"{path} has no config.json; download the model's config.json next to its "
                    "safetensors")
  try:
    with open(file) as f:
      hf = json.load(f)
    if not isinstance(hf, dict):
      raise ValueError("not a JSON object")
  except (ValueError, UnicodeDecodeError) as e:
    raise LoadError(f"{file} is corrupt ({str(e).splitlines()[0][:120]}); re-download "
                    "config.json") from None
  kind = hf.get("model_type")
  if kind not in FAMILIES:
    raise LoadError(f"{file}: model_type {kind!r} is not supported; supported: "
                    f"{', '.join(FAMILIES)} (or convert the model to one of these)")
  if hf.get("quantization_config"):
    raise LoadError(f"{file}: quantized checkpoints are not supported; use the "
                    "unquantized (bf16/fp32) weights")
  if kind == "gemma3":  # multimodal wrapper: the language model is all distill needs
    text = dict(hf.get("text_config") or {})
    text["model_type"] = "gemma3_text"
    text.setdefault("tie_word_embeddings", hf.get("tie_word_embeddings", True))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
      text.setdefault(key, hf.get(key))
    if "vocab_size" not in text:
      text["vocab_size"] = 262_208
    hf = text
  return hf


def _need(hf: dict, key: str):
  if hf.get(key) is None:
    raise LoadError(f"config.json ({hf.get('model_type')}) lacks {key!r}; re-download "
                    "config.json")
  return hf[key]


def _rope(hf: dict, default_theta: float) -> tuple[float, tuple]:
  """(theta, scaling tuple) from transformers 5 `rope_parameters` or v4 keys."""
  params = hf.get("rope_parameters")
  if params is None:  # transformers 4: rope_theta + rope_scaling
    params = dict(hf.get("rope_scaling") or {})
    params.setdefault("rope_theta", hf.get("rope_theta", default_theta))
  params = dict(params)
  kind = params.get("rope_type", params.get("type", "default"))
  if params.get("partial_rotary_factor", 1.0) != 1.0:
    raise LoadError("config.json: partial_rotary_factor != 1 is not supported")
  if kind == "default":
    scaling = ()
  elif kind == "linear":
    scaling = ("linear", float(params["factor"]))
  elif kind == "llama3":
    scaling = ("llama3", float(params["factor"]), float(params["low_freq_factor"]),
               float(params["high_freq_factor"]), int(params["original_max_position_embeddings"]))
  else:
    raise LoadError(f"config.json: rope type {kind!r} is not supported (default, linear, "
                    "llama3 are); remove rope scaling or use another checkpoint")
  return float(params.get("rope_theta", default_theta)), scaling


def _windows(hf: dict, kind: str, n_layers: int) -> tuple[int, int]:
  """(sliding_window, sliding_pattern) equal to the per-layer attention types in config.json."""
  # Where config.json omits it, the value transformers' config class defaults to.
  window = hf.get("sliding_window", 4096 if kind in ("mistral", "gemma2", "gemma3_text") else None)
  types = hf.get("layer_types")
  if types is None:
    if kind == "mistral":
      types = ["sliding_attention" if window else "full_attention"] * n_layers
    elif kind in ("gemma2", "gemma3_text"):
      every = int(hf.get("sliding_window_pattern", 2 if kind == "gemma2" else 6))
      types = ["full_attention" if (i + 1) % every == 0 else "sliding_attention"
               for i in range(n_layers)]
    elif kind in ("qwen2", "qwen3") and hf.get("use_sliding_window") and window:
      start = int(hf.get("max_window_layers", 28))
      types = ["sliding_attention" if i >= start else "full_attention" for i in range(n_layers)]
    else:
      types = ["full_attention"] * n_layers
  sliding = [t == "sliding_attention" for t in types]
  if len(sliding) != n_layers or not all(t in ("sliding_attention", "full_attention")
                                         for t in types):
    raise LoadError(f"config.json: layer_types {types!r} do not match {n_layers} layers of "
                    "sliding_attention/full_attention")
  if not any(sliding):
    return 0, 0
  if not window:
    raise LoadError("config.json: sliding_attention layers but no sliding_window")
  if all(sliding):
    return int(window), 0
  every = sliding.index(False) + 1  # first global layer fixes the pattern
  if sliding != [(i + 1) % every != 0 for i in range(n_layers)]:
    raise LoadError(f"config.json: layer_types {types!r} are not 'every k-th layer global'; "
                    "this layout is not supported")
  return int(window), every


def model_config(hf: dict, dtype: str = "float32") -> ModelConfig:
  """The `ModelConfig` that computes what transformers computes for this config.json."""
  kind = hf["model_type"]
  common = dict(dtype=dtype, param_dtype=dtype, vocab_size=int(_need(hf, "vocab_size")))
  if kind == "gpt2":
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
      raise LoadError(f"config.json (gpt2): activation_function {act!r} is not supported; "
                      "gelu_new (tanh approximation) is")
    if hf.get("scale_attn_by_inverse_layer_idx"):
      raise LoadError("config.json (gpt2): scale_attn_by_inverse_layer_idx is not supported")
    d, n = int(_need(hf, "n_embd")), int(_need(hf, "n_head"))
    return ModelConfig(
        **common, d_model=d, n_layers=int(_need(hf, "n_layer")), n_heads=n, n_kv_heads=n,
        d_ff=int(hf.get("n_inner") or 4 * d), max_len=int(hf.get("n_positions", 1024)),
        norm="layer", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), pos="learned",
        mlp="gelu", tie_embeddings=bool(hf.get("tie_word_embeddings", True)), qkv_bias=True,
        mlp_bias=True, out_bias=True,
        query_scale=0.0 if hf.get("scale_attn_weights", True) else 1.0)

  d, n = int(_need(hf, "hidden_size")), int(_need(hf, "num_attention_heads"))
  head_dim = {"qwen3": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256}.get(kind, d // n)
  head_dim = int(hf.get("head_dim") or head_dim)
  layers = int(_need(hf, "num_hidden_layers"))
  gemma = kind in _GEMMA
  act = hf.get("hidden_activation") or hf.get("hidden_act") or (
      "gelu_pytorch_tanh" if gemma else "silu")
  if gemma and act == "gelu":  # legacy Gemma value that transformers maps to the tanh form
    act = "gelu_pytorch_tanh"
  mlp = {"silu": "swiglu", "swish": "swiglu", "gelu_pytorch_tanh": "geglu",
         "gelu_new": "geglu"}.get(act)
  if mlp is None:
    raise LoadError(f"config.json ({kind}): hidden activation {act!r} is not supported; "
                    "silu or gelu_pytorch_tanh are")
  if hf.get("mlp_bias"):
    raise LoadError(f"config.json ({kind}): mlp_bias=true is not supported")
  if hf.get("use_bidirectional_attention"):
    raise LoadError(f"config.json ({kind}): bidirectional attention is not a causal LM")
  attn_bias = bool(hf.get("attention_bias", False))
  theta, scaling, local_theta = _rope_for(hf, kind)
  window, pattern = _windows(hf, kind, layers)
  scalar = hf.get("query_pre_attn_scalar", 256) if kind in ("gemma2", "gemma3_text") else None
  softcaps = {"gemma2": (50.0, 30.0)}.get(kind, (None, None))
  return ModelConfig(
      **common, d_model=d, n_layers=layers, n_heads=n,
      n_kv_heads=int(hf.get("num_key_value_heads") or n), d_ff=int(_need(hf, "intermediate_size")),
      head_dim=head_dim, max_len=int(hf.get("max_position_embeddings") or 2048),
      norm="rms", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), norm_plus_one=gemma,
      rope_theta=theta, rope_local_theta=local_theta, rope_scaling=scaling, mlp=mlp,
      tie_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
      qkv_bias=attn_bias or kind == "qwen2", out_bias=attn_bias,
      qk_norm=kind in ("qwen3", "gemma3_text"), post_norms=kind in ("gemma2", "gemma3_text"),
      embed_scale=gemma, query_scale=float(scalar) ** -0.5 if scalar else 0.0,
      attn_softcap=float(hf.get("attn_logit_softcapping", softcaps[0]) or 0.0),
      final_softcap=float(hf.get("final_logit_softcapping", softcaps[1]) or 0.0),
      sliding_window=window, sliding_pattern=pattern)


def _rope_for(hf: dict, kind: str) -> tuple[float, tuple, float]:
  """(global theta, global scaling, local theta or 0) for one family."""
  if kind != "gemma3_text":
    theta, scaling = _rope(hf, 10000.0)
    return theta, scaling, 0.0
  params = hf.get("rope_parameters") or {}
  if "full_attention" in params or "sliding_attention" in params:
    full = dict(params.get("full_attention") or {})
    local = dict(params.get("sliding_attention") or {})
  else:  # transformers 4: rope_theta/rope_scaling for global, rope_local_base_freq for local
    full = dict(hf.get("rope_scaling") or {})
    full["rope_theta"] = hf.get("rope_theta", 1_000_000.0)
    local = {"rope_theta": hf.get("rope_local_base_freq", 10_000.0)}
  full.setdefault("rope_theta", 1_000_000.0)
  local.setdefault("rope_theta", 10_000.0)
  theta, scaling = _rope({"rope_parameters": full}, 1_000_000.0)
  local_theta, local_scaling = _rope({"rope_parameters": local}, 10_000.0)
  if local_scaling:
    raise LoadError("config.json (gemma3): rope scaling on sliding layers is not supported")
  return theta, scaling, local_theta


# ---------------------------------------------------------------------------------------------
# safetensors files

class _File:
  """One safetensors file: header parsed and checked up front, tensors read on demand."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    try:
      with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
          raise ValueError("shorter than its 8-byte header length")
        n = struct.unpack("<Q", head)[0]
        if n > size - 8:
          raise ValueError("header runs past the end of the file")
        header = json.loads(f.read(n))
      self.base = 8 + n
      header.pop("__metadata__", None)
      for name, t in header.items():
        start, end = t["data_offsets"]
        count = math.prod(t["shape"])
        if t["dtype"] not in _DTYPES:
          raise ValueError(f"tensor {name} has unsupported dtype {t['dtype']}")
        if end - start != count * np.dtype(_DTYPES[t["dtype"]]).itemsize:
          raise ValueError(f"tensor {name} size does not match its shape")
        if self.base + end > size:
          raise ValueError(f"tensor {name} runs past the end of the file (truncated download?)")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
      raise LoadError(f"{path} is truncated or corrupt ({str(e).splitlines()[0][:120]}); "
                      "re-download it") from None
    self.tensors = header

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.tensors[name]["shape"])

  def read(self, name: str) -> np.ndarray:
    t = self.tensors[name]
    start, end = t["data_offsets"]
    buf = np.empty(end - start, np.uint8)
    with open(self.path, "rb") as f:
      f.seek(self.base + start)
      if f.readinto(buf) != buf.size:
        raise LoadError(f"{self.path} is truncated (tensor {name}); re-download it")
    return buf.view(_DTYPES[t["dtype"]]).reshape(t["shape"])


def _canonical(name: str) -> str:
  """Checkpoint tensor name -> the name this module's layouts use."""
  for prefix, repl in (("model.language_model.", "model."), ("language_model.model.", "model."),
                       ("language_model.lm_head.", "lm_head."), ("transformer.", "")):
    if name.startswith(prefix):
      return repl + name[len(prefix):]
  return name


class Checkpoint:
  """All safetensors files of a directory (sharded with an index or not), by canonical name."""

  def __init__(self, path: str):
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.exists(index):
      try:
        with open(index) as f:
          names = sorted(set(json.load(f)["weight_map"].values()))
      except (ValueError, KeyError, TypeError) as e:
        raise LoadError(f"{index} is corrupt ({e}); re-download it") from None
      missing = [n for n in names if not os.path.exists(os.path.join(path, n))]
      if missing:
        raise LoadError(f"{path}: shard(s) {', '.join(missing)} named by "
                        "model.safetensors.index.json are missing; download them")
      files = [os.path.join(path, n) for n in names]
    else:
      files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
      pickles = sorted(os.path.basename(p) for p in os.listdir(path)
                       if p.endswith(_PICKLES) or ".bin." in p)
      if pickles:
        raise LoadError(f"{path} holds only pickled weights ({', '.join(pickles[:3])}), which "
                        f"distill refuses to load because unpickling runs code; "
                        f"{_CONVERT_HINT}")
      raise LoadError(f"{path} has no *.safetensors weights; download model.safetensors "
                      "(or its shards and model.safetensors.index.json)")
    self.where: dict[str, tuple[_File, str]] = {}
    for file in map(_File, files):
      for name in file.tensors:
        self.where.setdefault(_canonical(name), (file, name))
    self._last: tuple[str, np.ndarray] | None = None

  def __contains__(self, name: str) -> bool:
    return name in self.where

  def read(self, name: str) -> np.ndarray:
    if name not in self.where:
      raise LoadError(f"checkpoint lacks tensor {name!r}; is config.json from the same model?")
    # GPT-2's fused c_attn feeds three params: keep the last tensor instead of re-reading it.
    if self._last is None or self._last[0] != name:
      self._last = None  # drop the previous tensor before reading the next
      file, real = self.where[name]
      self._last = (name, file.read(real))
    return self._last[1]


# ---------------------------------------------------------------------------------------------
# tensor layouts: project param path -> (checkpoint name, host transform)

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


def _flatten(tree, prefix=""):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f"{prefix}{key}.")
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
  shapes = dict(_flatten(lm.abstract_params()))
  flat_shardings = dict(_flatten(shardings))
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


# ---------------------------------------------------------------------------------------------
# tokenizer

def load_tokenizer(path: str, hf: dict | None = None) -> tokenizers.Tokenizer:
  """tokenizer.json, tokenizer.model or distill's descriptor, with BOS/EOS and `chat_template`.

  BOS/EOS come from tokenizer_config.json when it names them, else from the ids in
  generation_config.json / config.json. `tok.chat_template` is the Jinja template string from
  chat_template.jinja or tokenizer_config.json (None when the model has none).
  """
  hf = hf if hf is not None else read_config(path)
  tok_cfg = _json_or_empty(os.path.join(path, "tokenizer_config.json"))
  gen = _json_or_empty(os.path.join(path, "generation_config.json"))
  json_file, sp_file = os.path.join(path, "tokenizer.json"), os.path.join(path, "tokenizer.model")
  try:
    if os.path.exists(json_file):
      names = {}
      raw = None
      for kind in ("bos", "eos", "pad"):
        if tok_cfg.get(f"{kind}_token"):
          continue  # HFTokenizer reads it from tokenizer_config.json itself
        i = _first_id(gen.get(f"{kind}_token_id", hf.get(f"{kind}_token_id")))
        if i is not None:
          if raw is None:
            import tokenizers as hf_tokenizers  # pylint: disable=import-outside-toplevel
            raw = hf_tokenizers.Tokenizer.from_file(json_file)
          names[f"{kind}_token"] = raw.id_to_token(i)
      tok = tokenizers.HFTokenizer(json_file, **names)
    elif os.path.exists(sp_file):
      tok = tokenizers.SentencePieceTokenizer(sp_file)
    elif os.path.exists(os.path.join(path, tokenizers.DESCRIPTOR_NAME)):
      tok = tokenizers.load(path)  # written by distill.to_hf (e.g. the byte tokenizer)
    else:
      raise LoadError(f"{path} has no tokenizer.json or tokenizer.model; download the model's "
                      "tokenizer files next to config.json")
  except LoadError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise LoadError(f"tokenizer in {path} is unreadable ({str(e).splitlines()[0][:120]}); "
                    "re-download tokenizer.json / tokenizer.model") from None
  template = tok_cfg.get("chat_template")
  jinja = os.path.join(path, "chat_template.jinja")
  if os.path.exists(jinja):
    with open(jinja) as f:
      template = f.read()
  tok.chat_template = template
  return tok


def _json_or_empty(file: str) -> dict:
  if not os.path.exists(file):
    return {}
  try:
    with open(file) as f:
      data = json.load(f)
    return data if isinstance(data, dict) else {}
  except ValueError as e:
    raise LoadError(f"{file} is corrupt ({e}); re-download it") from None


def _first_id(value) -> int | None:
  if isinstance(value, list):
    value = value[0] if value else None
  return None if value is None else int(value)


# ---------------------------------------------------------------------------------------------
# entry points

def load(path: str, mesh, dtype: str = "bfloat16", *, with_tokenizer: bool = True):
  """(LM, params sharded over `mesh` in `dtype`, tokenizer or None)."""
  path = os.path.abspath(os.path.expanduser(path))
  hf = read_config(path)
  ckpt = Checkpoint(path)  # first: refusing pickles beats complaining about their config
  cfg = model_config(hf, jnp.dtype(dtype).name)
  tok = load_tokenizer(path, hf) if with_tokenizer else None
  lm = LM(cfg)
  params = load_params(ckpt, lm, "gpt2" if hf["model_type"] == "gpt2" else "llama",
                       sharding.param_shardings(lm, mesh))
  return lm, params, tok


def load_teacher(path: str, mesh, dtype: str = "bfloat16"):
  """For `config.teacher.checkpoint = "hf:/path"`: (LM, params in `dtype` on `mesh`, tokenizer)."""
  return load(path, mesh, dtype)


def default_mesh():
  """All local devices on the fsdp axis: weights split, never whole on one device."""
  return sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})


def load_model(path: str, dtype: str | None = None) -> Model:
  """`distill.load("hf:/path")`: fp32 unless `dtype` says otherwise, sharded over all devices."""
  lm, params, tok = load(path, default_mesh(), dtype or "float32")
  return Model(lm, params, tok)


# ---------------------------------------------------------------------------------------------
# vocab alignment

class VocabMismatchError(ValueError):
  """Two models whose tokenizers differ: distillation over shared ids would be meaningless."""


def same_tokenizer(a: tokenizers.Tokenizer, b: tokenizers.Tokenizer) -> bool:
  """True when both map the shared ids to the same strings (same file, or same pieces)."""
  if a.fingerprint == b.fingerprint:
    return True
  if type(a) is not type(b) or a.vocab_size != b.vocab_size:
    return False
  if (a.bos_id, a.eos_id) != (b.bos_id, b.eos_id):
    return False
  return all(a.decode([i]) == b.decode([i]) for i in range(a.vocab_size))


def align_vocab(lm: LM, params: dict, vocab_size: int, *, tokenizer=None, other_tokenizer=None,
                mesh=None):
  """Resize `lm`'s embedding (and unembedding) to `vocab_size` rows; returns (LM, params).

  Checkpoints of one tokenizer family often pad their embeddings differently (Qwen2.5: 151936
  rows for small models, 152064 for 7B+, over 151665 real tokens). Distilling between them
  needs one vocab axis: the rows beyond the tokenizer are padding no text ever maps to, so
  they are dropped (shrinking) or added (growing; embedding rows zero, unembedding columns
  zero, i.e. logit 0 -- mask ids >= tokenizer.vocab_size in the loss when that matters).

  With `tokenizer` and `other_tokenizer` given, they must be the same tokenizer
  (`same_tokenizer`) and `vocab_size` must cover every real id, else `VocabMismatchError`:
  different tokenizers give different meanings to the same id and cannot be aligned.
  """
  cfg = lm.cfg
  if tokenizer is not None and other_tokenizer is not None:
    if not same_tokenizer(tokenizer, other_tokenizer):
      raise VocabMismatchError(
          f"teacher and student tokenizers differ ({type(tokenizer).__name__} "
          f"{tokenizer.vocab_size} ids vs {type(other_tokenizer).__name__} "
          f"{other_tokenizer.vocab_size} ids); distill with the teacher's tokenizer "
          "(config.data.tokenizer = the teacher's tokenizer.json)")
  if tokenizer is not None and vocab_size < tokenizer.vocab_size:
    raise VocabMismatchError(f"vocab_size {vocab_size} would cut real tokens "
                             f"(tokenizer has {tokenizer.vocab_size})")
  if vocab_size == cfg.vocab_size:
    return lm, params
  new = LM(cfg.replace(vocab_size=vocab_size))
  shard = sharding.param_shardings(new, mesh or default_mesh())

  def resize(x, axis, target_sharding):
    # Whole-matrix reshuffle in one jit: stays sharded, never gathered on one device.
    def fn(x):
      if x.shape[axis] >= vocab_size:
        return jax.lax.slice_in_dim(x, 0, vocab_size, axis=axis)
      pad = [(0, 0)] * x.ndim
      pad[axis] = (0, vocab_size - x.shape[axis])
      return jnp.pad(x, pad)
    return jax.jit(fn, out_shardings=target_sharding)(x)

  out = dict(params)
  out["embed"] = resize(params["embed"], 0, shard["embed"])
  if not cfg.tie_embeddings:
    out["unembed"] = resize(params["unembed"], 1, shard["unembed"])
  return new, out
