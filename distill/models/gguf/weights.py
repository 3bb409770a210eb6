"""GGUF weights and metadata as what the HF loader reads: the config.json dict
(`hf_config`) and a `Checkpoint` answering HF tensor names, dequantized one tensor at a time."""
from __future__ import annotations

import os
import re

import numpy as np

from distill.errors import LoadError
from distill.models.ops import rope_frequencies
from distill.models.gguf.reader import gguf_module, metadata, open_reader

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
_MODEL_TYPE = {"gemma3": "gemma3_text"}

# GGUF block tensor -> HF name inside model.layers.N (Gemma 2/3 rename the two MLP-side norms).
_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_GEMMA2 = dict(_BLOCK, ffn_norm="pre_feedforward_layernorm",
                     post_attention_norm="post_attention_layernorm",
                     post_ffw_norm="post_feedforward_layernorm")
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Not weights: llama.cpp's Llama 3 rope divisors, turned into rope parameters by `_rope_freqs`.
_IGNORED = ("rope_freqs.weight",)


def hf_config(meta: dict, tensor_names, path: str = "GGUF") -> dict:
  """The config.json dict (`hf.model_config`'s input) that the metadata describes."""
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise LoadError(f"{path}: architecture {arch!r} is not supported; supported: "
                    f"{', '.join(ARCHITECTURES)} (convert another model to one of these)")
  a = lambda key, default=None: meta.get(f"{arch}.{key}", default)

  def need(key):
    if a(key) is None:
      raise LoadError(f"{path}: metadata lacks {arch}.{key}; the file is incomplete, "
                      "re-download or re-convert it")
    return a(key)

  d, heads = int(need("embedding_length")), int(need("attention.head_count"))
  layers = int(need("block_count"))
  head_dim = int(a("attention.key_length") or a("rope.dimension_count") or d // heads)
  rotary = a("rope.dimension_count")
  if rotary is not None and int(rotary) != head_dim:
    raise LoadError(f"{path}: partial rotary embedding ({arch}.rope.dimension_count={rotary} "
                    f"of head size {head_dim}) is not supported")
  kv = a("attention.head_count_kv", heads)
  if isinstance(kv, list):  # per-layer counts: only one value for all layers is supported
    if len(set(kv)) != 1:
      raise LoadError(f"{path}: per-layer key/value head counts {kv} are not supported")
    kv = kv[0]
  vocab = a("vocab_size") or meta.get("tokenizer.ggml.tokens_count")
  if vocab is None:
    raise LoadError(f"{path}: metadata gives no vocabulary size; the file is incomplete")
  gemma = arch.startswith("gemma")
  out = {
      "model_type": _MODEL_TYPE.get(arch, arch), "hidden_size": d, "num_hidden_layers": layers,
      "num_attention_heads": heads, "num_key_value_heads": int(kv), "head_dim": head_dim,
      "intermediate_size": int(need("feed_forward_length")),
      "rms_norm_eps": float(a("attention.layer_norm_rms_epsilon", 1e-6 if gemma else 1e-5)),
      "max_position_embeddings": int(a("context_length", 2048)), "vocab_size": int(vocab),
      # llama.cpp writes output.weight only when the unembedding is not the embedding.
      "tie_word_embeddings": "output.weight" not in tensor_names,
      "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
      "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
      "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
      "hidden_act": "gelu_pytorch_tanh" if gemma else "silu",
      "attention_bias": False,  # qwen2's q/k/v biases come with its family switch
  }
  theta = float(a("rope.freq_base", 1_000_000.0 if arch == "gemma3" else 10_000.0))
  rope = {"rope_type": "default", "rope_theta": theta}
  scaling = a("rope.scaling.type", "none")
  if scaling == "linear" and float(a("rope.scaling.factor", 1.0)) != 1.0:
    rope = {"rope_type": "linear", "factor": float(a("rope.scaling.factor")),
            "rope_theta": theta}
  elif scaling not in ("none", "linear"):
    raise LoadError(f"{path}: rope scaling {scaling!r} is not supported (none, linear are)")
  if arch == "gemma3":  # llama.cpp fixes the local layers' base at 10k
    out["rope_parameters"] = {"full_attention": rope,
                              "sliding_attention": {"rope_type": "default",
                                                    "rope_theta": 10_000.0}}
  else:
    out["rope_parameters"] = rope
  if arch in ("gemma2", "gemma3"):
    _gemma_windows(out, a, arch, d, heads, head_dim, layers)
  return out


def _gemma_windows(out: dict, a, arch: str, d: int, heads: int, head_dim: int, layers: int):
  """Sliding windows, soft-capping and query scale as llama.cpp runs Gemma 2/3."""
  out["sliding_window"] = int(a("attention.sliding_window", 4096))
  every = int(a("attention.sliding_window_pattern", 2 if arch == "gemma2" else 6))
  out["layer_types"] = ["full_attention" if (i + 1) % every == 0 else "sliding_attention"
                        for i in range(layers)]
  # llama.cpp scales queries by 1/sqrt(head size), except the 27B models' d_model / heads;
  # that is what query_pre_attn_scalar says in their config.json.
  big = (d, layers) in ((4608, 46), (5376, 62))
  out["query_pre_attn_scalar"] = d // heads if big else head_dim
  if arch == "gemma2":
    out["attn_logit_softcapping"] = float(a("attn_logit_softcapping", 50.0))
    out["final_logit_softcapping"] = float(a("final_logit_softcapping", 30.0))


# tensors

class Checkpoint:
  """A GGUF's tensors by HF name (`hf.load_params` reads it like safetensors)."""

  def __init__(self, path: str, reader=None):
    gguf = gguf_module()
    self.path = os.path.abspath(os.path.expanduser(path))
    self.reader = reader if reader is not None else open_reader(self.path)
    self.meta = metadata(self.reader)
    tokens = self.reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
      self.meta["tokenizer.ggml.tokens_count"] = len(tokens.data)
    names = {t.name for t in self.reader.tensors}
    self.config = hf_config(self.meta, names, self.path)
    rows = embedding_rows(self.reader)
    if rows is not None:  # the weights decide: a token list may outrun the embedding
      self.config["vocab_size"] = rows
    self.arch = self.meta["general.architecture"]
    block = _BLOCK_GEMMA2 if self.arch in ("gemma2", "gemma3") else _BLOCK
    self.where = {}
    for t in self.reader.tensors:
      if t.name in _IGNORED:
        continue
      hf_name = _hf_name(t.name, block)
      if hf_name is None:
        raise LoadError(f"{self.path}: tensor {t.name!r} has no place in a {self.arch} model; "
                        "is the file a variant this loader does not know?")
      self.where[hf_name] = t
    first = {}  # every quant type checked before anything is placed
    for t in self.reader.tensors:
      first.setdefault(t.tensor_type, t)
    for t in first.values():
      _check_quant(gguf, t, self.path)
    if "rope_freqs.weight" in names:
      self._rope_freqs(next(t for t in self.reader.tensors if t.name == "rope_freqs.weight"))

  def _rope_freqs(self, tensor):
    """Llama 3.1+ files carry llama.cpp's per-frequency rope divisors instead of the
    rope_scaling parameters; find the Llama 3 parameters that give exactly these divisors."""
    stored = self._dequantize(tensor)
    cfg, rope = self.config, self.config["rope_parameters"]
    if np.all(stored == 1.0):
      return
    base = np.asarray(rope_frequencies(cfg["head_dim"], rope["rope_theta"]))
    for factor in (8.0, 32.0, 16.0, 4.0, 2.0):  # Llama 3.1/3.3 use 8, Llama 3.2 uses 32
      params = dict(rope, rope_type="llama3", factor=factor, low_freq_factor=1.0,
                    high_freq_factor=4.0, original_max_position_embeddings=8192)
      scaled = np.asarray(rope_frequencies(cfg["head_dim"], rope["rope_theta"], (
          "llama3", factor, 1.0, 4.0, 8192)))
      if stored.shape == base.shape and np.allclose(base / scaled, stored, rtol=1e-5):
        cfg["rope_parameters"] = params
        return
    raise LoadError(f"{self.path}: rope_freqs.weight holds rope factors that match no Llama 3 "
                    "rope scaling; load the HF checkpoint with 'hf:' instead")

  def __contains__(self, name: str) -> bool:
    return name in self.where

  def shape(self, name: str) -> tuple[int, ...]:
    """HF shape of a tensor, without reading it (GGUF lists the fastest axis first)."""
    return tuple(int(n) for n in reversed(self.where[name].shape))

  def read(self, name: str) -> np.ndarray:
    """One tensor as float32 in HF's layout ([out, in] for linears)."""
    if name not in self.where:
      raise LoadError(f"{self.path} lacks tensor {name!r} that its metadata implies; "
                      "re-download or re-convert it")
    tensor = self.where[name]
    w = self._dequantize(tensor)
    if self.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias",
                                               "k_proj.bias")):
      heads = self.config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
      w = _unpermute(w, heads)
    if self.arch.startswith("gemma") and name.endswith("norm.weight"):
      w = w - np.float32(1.0)
    return w

  def _dequantize(self, tensor) -> np.ndarray:
    gguf = gguf_module()
    raw = np.empty(tensor.data.shape, tensor.data.dtype)
    with open(self.path, "rb") as f:  # pread, like hf.safetensors: page cache never counts as ours
      f.seek(tensor.data_offset)
      if f.readinto(raw) != raw.nbytes:
        raise LoadError(f"{self.path} is truncated (tensor {tensor.name}); re-download it")
    w = gguf.quants.dequantize(raw, tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest axis first
    return np.asarray(w, np.float32).reshape(shape)


def embedding_rows(reader) -> int | None:
  """Rows of `token_embd.weight` (the model's vocabulary size), None without that tensor."""
  for t in reader.tensors:
    if t.name == "token_embd.weight":
      return int(t.shape[-1])  # GGUF lists the fastest axis (d_model) first
  return None


def _hf_name(name: str, block: dict) -> str | None:
  base, _, suffix = name.rpartition(".")
  if suffix not in ("weight", "bias"):
    return None
  if base in _TOP:
    return f"{_TOP[base]}.{suffix}"
  m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
  if m and m.group(2) in block:
    return f"model.layers.{m.group(1)}.{block[m.group(2)]}.{suffix}"
  return None


def _check_quant(gguf, tensor, path: str):
  qtype = tensor.tensor_type
  if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
    return
  try:  # one zero block through the reference dequantizer: it raises for types it lacks
    gguf.quants.dequantize(np.zeros((1, gguf.GGML_QUANT_SIZES[qtype][1]), np.uint8), qtype)
  except NotImplementedError:
    raise LoadError(f"{path}: tensor {tensor.name} uses quant type {qtype.name}, which the gguf "
                    "package cannot dequantize; re-quantize the model to Q8_0/Q4_K/F16 with "
                    "llama.cpp") from None


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """Inverse of llama.cpp's `permute`: per head, rows (pair, half) -> (half, pair)."""
  rows = w.shape[0]
  return (w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))
