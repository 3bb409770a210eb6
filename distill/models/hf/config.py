"""config.json -> ModelConfig, per family (no family has its own forward code)."""
from __future__ import annotations

import json
import os

from distill.errors import LoadError
from distill.models.model_config import ModelConfig

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3",
            "gpt2")
_GEMMA = ("gemma", "gemma2", "gemma3_text")


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
