"""A trained stage as a GGUF file that llama.cpp (llama-cpp-python, ollama, LM Studio) runs.

  python -m distill.export --workdir=runs/tiny --preset=phone --format=gguf --quant=f16

writes `<workdir>/export/<preset>-gguf/student-<quant>.gguf` (`--out` picks another folder).
The preset sets the file's context length (`<arch>.context_length`, which llama.cpp takes as
its default context: phone 1024, watch 256, capped at the model's max_len); nothing else about
the weights depends on it.

What is written, following llama.cpp's convert_hf_to_gguf.py:
- architecture: "llama" for RMSNorm/RoPE/SwiGLU students (the tiny configs, SmolLM2 and its
  pruned students), "qwen2" (q/k/v biases), "qwen3" (q/k norms), with llama.cpp's metadata keys;
  Llama 3 rope scaling as its `rope_freqs.weight` divisors, linear scaling as keys. Students
  `distill.to_hf` cannot express (Gemma switches, sliding windows, learned positions) are
  refused with one line.
- tensors: the Hugging Face names of `export.hf.tensors`, renamed by the gguf package's own
  table (`gguf.get_tensor_name_map`); for "llama" the Q and K rows (and biases) are permuted
  per head from HF's half-split rotary layout to the interleaved one llama.cpp's kernels use.
  A tied unembedding is not written (llama.cpp then reuses token_embd).
- quant: f32 (all F32), f16 (2-D weights F16), q8_0 (2-D weights Q8_0 by `gguf.quants`, F16
  where a row is not a multiple of 32), q4_k_m (llama.cpp's own quantizer through
  llama-cpp-python, from an f32 file: the gguf package cannot write k-quants; requirements-
  llamacpp.txt). 1-D tensors (norms, biases) stay F32 in every mode.
- tokenizer: `gguf_vocab` (byte-level, byte-level BPE incl. trimmed vocabularies, SentencePiece).

The file is written as `.<name>.tmp-<pid>` in the output folder and renamed when complete, so an
error leaves nothing behind; an existing file of the same name is replaced.
"""
from __future__ import annotations

import ctypes
import os

import jax
import numpy as np

from distill.data import tokenizer as tokenizers
from distill.errors import UsageError
from distill.export import gguf_vocab
from distill.export import hf as hf_export
from distill.export.presets import GGUF_QUANTS
from distill.inference.stage import load_stage_params, read_model_config
from distill.models.model_config import ModelConfig
from distill.models.ops import rope_frequencies
from distill.models.transformer import LM

_ARCHS = ("llama", "qwen2", "qwen3")
_LLAMACPP = "pip install -r requirements-llamacpp.txt"


def file_name(quant: str) -> str:
  return f"student-{quant}.gguf"


def check_quant(quant: str) -> None:
  """Refuses a quant type this writer lacks, or one whose quantizer is not installed."""
  if quant not in GGUF_QUANTS:
    raise UsageError(f"--quant={quant} is not a GGUF quant type here; use one of "
                     f"{', '.join(GGUF_QUANTS)}")
  if quant == "q4_k_m":
    import importlib.util  # pylint: disable=import-outside-toplevel
    if importlib.util.find_spec("llama_cpp") is None:
      raise UsageError(f"--quant={quant} needs llama.cpp's quantizer (the gguf package cannot "
                       f"write k-quants): {_LLAMACPP}")


def architecture(cfg: ModelConfig) -> str:
  """llama.cpp's architecture name for the student, or a UsageError naming why none fits."""
  try:
    kind = hf_export.hf_config(cfg)["model_type"]
  except hf_export.ExportError as e:
    raise UsageError(f"the student has no llama.cpp architecture: {e}") from None
  if kind not in _ARCHS:
    raise UsageError(f"{kind} students (sliding-window attention) are not written to GGUF: "
                     "llama.cpp's llama architecture has no sliding window")
  return kind


def permute(w: np.ndarray, heads: int) -> np.ndarray:
  """convert_hf_to_gguf's Q/K permutation: per head, rows (half, pair) -> (pair, half)."""
  rows = w.shape[0]
  return (w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def gguf_tensors(cfg: ModelConfig, params) -> dict[str, np.ndarray]:
  """GGUF name -> float32 array ([out, in] for linears) as the file stores it before quant."""
  import gguf  # pylint: disable=import-outside-toplevel
  arch = architecture(cfg)
  names = gguf.get_tensor_name_map(
      next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), cfg.n_layers)
  out = {}
  for hf_name, w in hf_export.tensors(cfg, params).items():
    w = np.asarray(w, np.float32)
    if arch == "llama" and ".q_proj." in hf_name:
      w = permute(w, cfg.n_heads)
    elif arch == "llama" and ".k_proj." in hf_name:
      w = permute(w, cfg.n_kv_heads)
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
      raise UsageError(f"tensor {hf_name} has no name in llama.cpp's {arch} architecture")
    out[name] = w
  if cfg.rope_scaling and cfg.rope_scaling[0] == "llama3":  # llama.cpp's divisors per frequency
    base = np.asarray(rope_frequencies(cfg.k, cfg.rope_theta))
    scaled = np.asarray(rope_frequencies(cfg.k, cfg.rope_theta, cfg.rope_scaling))
    out["rope_freqs.weight"] = (base / scaled).astype(np.float32)
  return out


def _tensor_type(gguf, name: str, w: np.ndarray, quant: str):
  q = gguf.GGMLQuantizationType
  if quant == "f32" or w.ndim == 1:
    return q.F32
  if quant == "q8_0" and w.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0:
    return q.Q8_0
  return q.F16


def _write(path: str, cfg: ModelConfig, params, tok, quant: str, context_length: int,
           name: str) -> dict[str, str]:
  """One GGUF at `path` in f32 / f16 / q8_0; returns {tensor: type name}."""
  import gguf  # pylint: disable=import-outside-toplevel
  arch = architecture(cfg)
  vocab = gguf_vocab.vocab(tok, cfg.vocab_size)
  tensors = gguf_tensors(cfg, params)
  w = gguf.GGUFWriter(path, arch)
  w.add_name(name)
  w.add_context_length(int(context_length))
  w.add_embedding_length(cfg.d_model)
  w.add_block_count(cfg.n_layers)
  w.add_feed_forward_length(cfg.d_ff)
  w.add_head_count(cfg.n_heads)
  w.add_head_count_kv(cfg.n_kv_heads)
  w.add_rope_dimension_count(cfg.k)
  w.add_key_length(cfg.k)  # as convert_hf_to_gguf writes a config's head_dim (transformers'
  w.add_value_length(cfg.k)  # Qwen3 reads it; its default is 128)
  w.add_rope_freq_base(float(cfg.rope_theta))
  if cfg.rope_scaling and cfg.rope_scaling[0] == "linear":
    w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    w.add_rope_scaling_factor(float(cfg.rope_scaling[1]))
  w.add_layer_norm_rms_eps(float(cfg.norm_eps))
  w.add_vocab_size(cfg.vocab_size)
  ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
           "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[quant]
  w.add_file_type(int(ftype))
  if quant == "q8_0":
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
  gguf_vocab.add_to(w, vocab)
  types = {}
  for tname, x in tensors.items():
    qtype = _tensor_type(gguf, tname, x, quant)
    types[tname] = qtype.name
    if qtype == gguf.GGMLQuantizationType.F32:
      w.add_tensor(tname, x)
    elif qtype == gguf.GGMLQuantizationType.F16:
      w.add_tensor(tname, x.astype(np.float16))
    else:
      w.add_tensor(tname, gguf.quants.quantize(x, qtype), raw_dtype=qtype)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return types


def _llama_quantize(src: str, dst: str, quant: str) -> None:
  """llama.cpp's quantizer (llama-cpp-python): `src` (f32 GGUF) -> `dst`."""
  try:
    import llama_cpp  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UsageError(f"--quant={quant} needs llama.cpp's quantizer: {_LLAMACPP}") from None
  params = llama_cpp.llama_model_quantize_default_params()
  params.ftype = {"q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
  params.nthread = max(1, min(4, os.cpu_count() or 1))
  rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
  if rc != 0 or not os.path.isfile(dst):
    raise RuntimeError(f"llama.cpp's quantizer failed on {src} (code {rc})")


def writable_dir(out_dir: str, flag: str = "--out") -> str:
  """`out_dir`, created if needed, or a UsageError when it cannot be written."""
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  try:
    os.makedirs(out_dir, exist_ok=True)
    probe = os.path.join(out_dir, f".write-probe-{os.getpid()}")
    with open(probe, "wb"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"cannot write to {out_dir} ({e.strerror or e}); give a writable {flag}"
                     ) from None
  return out_dir


def write(out_dir: str, cfg: ModelConfig, params, tok, quant: str = "f16", *,
          context_length: int | None = None, name: str = "distill student") -> dict:
  """Writes `out_dir/student-<quant>.gguf` atomically; returns {file, bytes, quant, tensors}."""
  check_quant(quant)
  architecture(cfg)  # refused before anything is written
  gguf_vocab.vocab(tok, cfg.vocab_size)
  out_dir = writable_dir(out_dir)
  path = os.path.join(out_dir, file_name(quant))
  tmp = os.path.join(out_dir, f".{file_name(quant)}.tmp-{os.getpid()}")
  src = tmp + ".f32" if quant == "q4_k_m" else tmp
  ctx = min(int(context_length or cfg.max_len), cfg.max_len)
  try:
    types = _write(src, cfg, params, tok, "f32" if quant == "q4_k_m" else quant, ctx, name)
    if quant == "q4_k_m":
      _llama_quantize(src, tmp, quant)
      types = _tensor_types(tmp)
    os.replace(tmp, path)
  finally:
    for leftover in {src, tmp}:
      if os.path.exists(leftover):
        os.remove(leftover)
  return {"file": path, "bytes": os.path.getsize(path), "quant": quant, "tensors": types,
          "context_length": ctx}


def _tensor_types(path: str) -> dict[str, str]:
  import gguf  # pylint: disable=import-outside-toplevel
  return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def export_stage(stage_dir: str, out_dir: str, quant: str = "f16", *,
                 context_length: int | None = None) -> dict:
  """A finished stage directory -> `out_dir/student-<quant>.gguf` (see `write`)."""
  check_quant(quant)  # before the stage loads: a missing quantizer fails in a second
  cfg = read_model_config(stage_dir)
  lm = LM(cfg)
  params = jax.device_get(load_stage_params(stage_dir, lm))
  tok = tokenizers.load(os.path.join(stage_dir, "tokenizer"))
  name = os.path.basename(os.path.dirname(os.path.abspath(stage_dir))) or "distill student"
  return write(out_dir, cfg, params, tok, quant, context_length=context_length, name=name)
