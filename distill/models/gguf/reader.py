"""GGUF files (llama.cpp, ollama) -> the project's transformer, through the HF loader.

  lm, params, tok = gguf.load("SmolLM2-135M-Instruct.Q4_1.gguf", mesh, "float32")
  distill.load("gguf:/path/model.gguf")          # api.Model
  config.teacher.checkpoint = "gguf:/path/model.gguf"

A GGUF holds what an HF directory holds, under llama.cpp's names: the config as metadata keys
(`llama.embedding_length`, ...), the tokenizer as metadata arrays, and the weights, often
quantized. This module turns the metadata into the config.json dict `hf.model_config` reads
and presents the weights as a `Checkpoint` that answers HF names, so `hf.load_params` places
them exactly as it places safetensors: one tensor read (`pread`, no mmap), dequantized with
the `gguf` package's reference `gguf.quants.dequantize`, cast and put into its shards, then
dropped. The tokenizer is rebuilt as a tokenizer.json (`gguf_tokenizer`).

What llama.cpp's converter changed and is undone here:
- Llama (and Mistral, which it writes as llama): Q and K rows permuted per head from HF's
  half-split rotary layout to the interleaved one its kernels use -> permuted back.
- Gemma 1/2/3: every RMSNorm weight stored as 1 + w (its kernels multiply by the stored value);
  HF's and our Gemma norms compute (1 + w) -> 1 is subtracted.
- GGUF shapes list the fastest axis first; the reader's arrays are already [out, in] like HF's.

Families: llama (mistral), qwen2, qwen3, gemma, gemma2, gemma3. `gguf` is an optional
dependency (requirements-real.txt); it is imported only when a GGUF is loaded.
"""
from __future__ import annotations

import os
import re

import jax.numpy as jnp
import numpy as np

from distill.models import sharding
from distill.errors import LoadError
from distill.models import hf
from distill.models.transformer import LM

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")
_MODEL_TYPE = {"gemma3": "gemma3_text"}
_INSTALL = "pip install 'gguf>=0.14'"

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


def _gguf():
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise LoadError(f"reading GGUF files needs the gguf package; {_INSTALL}") from None
  return gguf


def open_reader(path: str):
  """`gguf.GGUFReader` over `path`, or a LoadError naming what is wrong with the file."""
  gguf = _gguf()
  if not os.path.isfile(path):
    raise LoadError(f"GGUF file {path!r} does not exist; give 'gguf:/path/to/model.gguf'")
  try:
    reader = gguf.GGUFReader(path)
  except Exception as e:  # pylint: disable=broad-except
    m = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", str(e))
    if m:
      raise LoadError(f"{path}: unknown quant type {m.group(1)} (newer than the gguf package?); "
                      f"upgrade it ({_INSTALL} -U) or re-quantize the model to Q8_0/Q4_K/"
                      "F16 with llama.cpp") from None
    raise LoadError(f"{path} is truncated or corrupt ({_first_line(e)}); re-download it"
                    ) from None
  size = os.path.getsize(path)
  for t in reader.tensors:  # the reader maps the file lazily: check every range up front
    if t.data_offset + t.n_bytes > size:
      raise LoadError(f"{path} is truncated (tensor {t.name} runs past the end of the file); "
                      "re-download it")
  return reader


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0][:120]


def metadata(reader) -> dict:
  """Scalar and short-array metadata by key; the tokenizer's long arrays are read on demand."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "merges", "scores",
                                                           "token_type")):
      continue
    try:
      out[key] = field_value(field)
    except Exception:  # pylint: disable=broad-except
      continue  # a key we cannot decode is one we do not need
  return out


def field_value(field):
  """A metadata field as Python (str, int, float, bool or a list of them).

  Decoded from the reader's parts rather than `ReaderField.contents()`, which older gguf
  releases (0.14) lack: a string is its bytes part, a scalar its one-element part, an array
  one part each.
  """
  kind = int(field.types[0]) if field.types else -1
  string, array, boolean = 8, 9, 7  # GGUFValueType ids, fixed by the file format
  inner = int(field.types[-1]) if kind == array else kind

  def one(part):
    if inner == string:
      return bytes(part).decode("utf-8")
    value = part.tolist()[0]
    return bool(value) if inner == boolean else value
  if kind == array:
    return [one(field.parts[i]) for i in field.data]
  return one(field.parts[field.data[0]])


# ---------------------------------------------------------------------------------------------
# metadata -> config.json dict

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


# ---------------------------------------------------------------------------------------------
# tensors

class Checkpoint:
  """A GGUF's tensors by HF name (`hf.load_params` reads it like safetensors)."""

  def __init__(self, path: str, reader=None):
    gguf = _gguf()
    self.path = os.path.abspath(os.path.expanduser(path))
    self.reader = reader if reader is not None else open_reader(self.path)
    self.meta = metadata(self.reader)
    tokens = self.reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
      self.meta["tokenizer.ggml.tokens_count"] = len(tokens.data)
    names = {t.name for t in self.reader.tensors}
    self.config = hf_config(self.meta, names, self.path)
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
    # pylint: disable-next=import-outside-toplevel
    from distill.models.transformer import rope_frequencies
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
    if self.arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
      heads = self.config["num_attention_heads" if "q_proj" in name else "num_key_value_heads"]
      w = _unpermute(w, heads)
    if self.arch.startswith("gemma") and name.endswith("norm.weight"):
      w = w - np.float32(1.0)
    return w

  def _dequantize(self, tensor) -> np.ndarray:
    gguf = _gguf()
    raw = np.empty(tensor.data.shape, tensor.data.dtype)
    with open(self.path, "rb") as f:  # pread, like hf._File: page cache never counts as ours
      f.seek(tensor.data_offset)
      if f.readinto(raw) != raw.nbytes:
        raise LoadError(f"{self.path} is truncated (tensor {tensor.name}); re-download it")
    w = gguf.quants.dequantize(raw, tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest axis first
    return np.asarray(w, np.float32).reshape(shape)


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


# ---------------------------------------------------------------------------------------------
# entry points

def load(path: str, mesh, dtype: str = "bfloat16", *, with_tokenizer: bool = True):
  """(LM, params sharded over `mesh` in `dtype`, tokenizer or None)."""
  from distill.models import gguf_tokenizer  # pylint: disable=import-outside-toplevel
  ckpt = Checkpoint(path)
  cfg = hf.model_config(ckpt.config, jnp.dtype(dtype).name)
  # Tokenizer before weights: a file without one fails in seconds, not after the weights.
  tok = gguf_tokenizer.load(ckpt.reader, ckpt.meta, ckpt.path) if with_tokenizer else None
  lm = LM(cfg)
  params = hf.load_params(ckpt, lm, "llama", sharding.param_shardings(lm, mesh))
  return lm, params, tok


def load_tokenizer(path: str):
  """The tokenizer of a GGUF file alone (an HFTokenizer over a generated tokenizer.json)."""
  from distill.models import gguf_tokenizer  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.path.expanduser(path))
  reader = open_reader(path)
  return gguf_tokenizer.load(reader, metadata(reader), path)


def load_teacher(path: str, mesh, dtype: str = "bfloat16"):
  """For `config.teacher.checkpoint = "gguf:/path"`: (LM, params in `dtype`, tokenizer)."""
  return load(path, mesh, dtype)
