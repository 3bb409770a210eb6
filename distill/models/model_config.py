"""`ModelConfig`: one frozen, hashable description of every architecture the project runs.

Switches, not subclasses: Llama/Mistral, Qwen2/3, Gemma 1/2/3 and GPT-2 are field values here
(the Hugging Face and GGUF loaders map their configs onto it), and the config's hash keys the
jit and LM caches.
"""
from __future__ import annotations

import dataclasses
import json


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  head_dim: int = 0  # 0: d_model // n_heads
  max_len: int = 2048
  norm: str = "rms"  # rms | layer
  norm_eps: float = 1e-6
  norm_plus_one: bool = False  # Gemma stores (scale - 1)
  pos: str = "rope"  # rope | learned
  rope_theta: float = 10000.0
  # Gemma 3: sliding-window layers use their own theta and no scaling (0: rope_theta).
  rope_local_theta: float = 0.0
  # Frequency scaling of the layers on rope_theta, as HF `rope_scaling`: () none,
  # ("linear", factor) or ("llama3", factor, low_freq_factor, high_freq_factor, original_max_len).
  rope_scaling: tuple = ()
  mlp: str = "swiglu"  # swiglu | geglu | gelu
  tie_embeddings: bool = True
  qkv_bias: bool = False
  mlp_bias: bool = False
  out_bias: bool = False
  qk_norm: bool = False
  post_norms: bool = False  # Gemma 2/3: norms after attention and MLP too
  embed_scale: bool = False  # Gemma: multiply embeddings by sqrt(d_model)
  query_scale: float = 0.0  # 0: 1/sqrt(head_dim)
  attn_softcap: float = 0.0
  final_softcap: float = 0.0
  sliding_window: int = 0  # 0: none
  sliding_pattern: int = 0  # every `pattern`-th layer is global; 0: all layers windowed
  dtype: str = "float32"  # activation dtype
  param_dtype: str = "float32"
  remat: bool = False
  # Run the blocks as one lax.scan (distill/models/layer_scan.py): compile time independent
  # of depth. Same parameters and results as unrolled; the accelerator presets turn it on.
  scan_layers: bool = False
  # Training-path attention: "xla" (einsum + fp32 softmax with GQA groups kept, any backend),
  # "dot_product" (jax.nn.dot_product_attention, XLA implementation), "cudnn" (its fused flash
  # kernel on NVIDIA GPUs). "splash" (TPU presets) runs the "xla" einsum until the Pallas kernel
  # is wired: distill.aot measured XLA's dot_product_attention at 4x the temporaries there.
  # The KV-cache path and attention soft-capping always use the einsum.
  attention: str = "xla"
  # Residual-stream channels (a few, with ~10x the values of the rest) that every d_model-input
  # fully connected op (q/k/v, gate/up, the unembedding) computes apart, in float: the same
  # function, but the export's dynamic-range kernels then round each token's input to int8
  # over the range of the other channels only (ops.project; chosen by QAD, distill/qat.py).
  outlier_channels: tuple = ()

  def __post_init__(self):
    # JSON gives lists; the config must stay hashable (it keys jit and LM caches).
    object.__setattr__(self, "rope_scaling", tuple(self.rope_scaling))
    object.__setattr__(self, "outlier_channels", tuple(int(i) for i in self.outlier_channels))

  @property
  def k(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  def layer_window(self, i: int) -> int:
    if not self.sliding_window:
      return 0
    if self.sliding_pattern and (i + 1) % self.sliding_pattern == 0:
      return 0
    return self.sliding_window

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
      raise ValueError(f"unknown model config fields {sorted(unknown)}; valid: {sorted(names)}")
    return cls(**d)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)
