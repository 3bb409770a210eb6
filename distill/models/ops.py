"""The model's functional pieces: projections, RoPE, the training-path causal attention, and
the trace-time contexts that quantization-aware distillation and attention transfer switch on.

Pure functions of arrays (no parameters, no config): `transformer.py` builds its modules from
them, and the export and QAD code reuses them so the exported graph and the trained one agree.
"""
from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np


def rope_frequencies(k: int, theta: float, scaling: tuple = ()):
  """Inverse frequencies [K/2] in fp32, with HF's `linear` / `llama3` scaling when given."""
  freq = theta ** (-jnp.arange(0, k, 2, dtype=jnp.float32) / k)
  if not scaling:
    return freq
  kind, factor = scaling[0], float(scaling[1])
  if kind == "linear":
    return freq / factor
  if kind == "llama3":
    low, high, orig = (float(v) for v in scaling[2:5])
    # Long wavelengths are divided by `factor`, short ones kept, the band between blended.
    wavelen = 2 * math.pi / freq
    scaled = jnp.where(wavelen > orig / low, freq / factor, freq)
    smooth = (orig / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= orig / high) & (wavelen <= orig / low)
    return jnp.where(medium, blended, scaled)
  raise ValueError(f"unknown rope_scaling {scaling!r}; expected () or ('linear', f) or "
                   "('llama3', f, low, high, original_max_len)")


def rope_table(positions, k: int, theta, scaling: tuple = ()):
  """(sin, cos) [B, T, 1, K/2] fp32 for `apply_rope`, computed once per forward pass.

  Behind an optimization barrier: otherwise XLA fuses sin/cos into every consumer and
  evaluates them per element of q and k, per head and per layer (on the CPU bench step that
  recomputation, inside the transposing copies before the attention matmuls, was ~15% of the
  step).
  """
  freq = rope_frequencies(k, theta, scaling)
  ang = positions.astype(jnp.float32)[..., None] * freq  # [B, T, K/2]
  return jax.lax.optimization_barrier((jnp.sin(ang)[:, :, None, :], jnp.cos(ang)[:, :, None, :]))


def apply_rope(x, table):
  """Rotary embedding on [B, T, H, K] from `rope_table` (half-split layout, as HF), in fp32."""
  sin, cos = table
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def rope(x, positions, theta, scaling: tuple = ()):
  """Rotary embedding on [B, T, H, K] with positions [B, T] (half-split layout, as HF)."""
  return apply_rope(x, rope_table(positions, x.shape[-1], theta, scaling))


# Query rows per block of the training path's causal attention (see `_causal_blocks`).
ATTENTION_BLOCK = 64


def causal_blocks(q, keys, values, dt, cap: float):
  """Causal self-attention over query blocks: q [B, T, M, G, K] (scaled), keys/values
  [B, T, M, K] at positions 0..T-1 (one contiguous sequence, the training/eval path).

  Block i's queries only see keys [0, end of block i): the masked upper triangle is never
  computed, and each block's fp32 logits are a fraction of the [T, T] ones. On XLA:CPU the
  attention is memory-bound (mask, softmax, casts and their gradients each pass over the
  logits), so this cut the bench step's attention time by about a third; the result equals
  the full masked softmax (masked logits contribute exp(-inf) = 0 either way).
  """
  t = q.shape[1]
  outs = []
  for start in range(0, t, ATTENTION_BLOCK):
    end = min(t, start + ATTENTION_BLOCK)
    logits = jnp.einsum("BTMGK,BSMK->BMGTS", q[:, start:end], keys[:, :end],
                        preferred_element_type=jnp.float32)
    logits = softcap(logits, cap)
    allowed = jnp.arange(start, end)[:, None] >= jnp.arange(end)[None, :]
    logits = jnp.where(allowed, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)  # fp32 softmax
    outs.append(jnp.einsum("BMGTS,BSMK->BTMGK", probs, values[:, :end],
                           preferred_element_type=jnp.float32).astype(dt))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


# Fake int8 quantization of every fully connected op's input (quantization-aware distillation
# of dynamic-range TFLite files), switched on by `quantized_inputs` around a forward pass.
# A context read while tracing, like flax's logical-axis rules: `on` may be a traced bool.
INPUT_QUANT: list = []


@contextlib.contextmanager
def quantized_inputs(on):
  """Inside, `project` and the unembedding see their input rounded as the dynamic-range
  kernels round it: per token (row), asymmetric int8 over [min(x, 0), max(x, 0)], with a
  straight-through gradient. `on`: a bool or a traced bool (QAD's schedule)."""
  INPUT_QUANT.append(on)
  try:
    yield
  finally:
    INPUT_QUANT.pop()


# Attention maps for attention-transfer distillation, collected while tracing (see
# `collect_attention`), one [B, T, S] map (mean over heads) per block.
ATTN_MAPS: list = []


@contextlib.contextmanager
def collect_attention():
  """Inside, every full-sequence forward appends each block's attention probabilities,
  averaged over heads ([B, T, S] fp32), to the yielded list (teacher and student may have
  different head counts, so maps are compared per block, not per head)."""
  maps: list = []
  ATTN_MAPS.append(maps)
  try:
    yield maps
  finally:
    ATTN_MAPS.pop()


def fake_quant_rows(x2):
  """[X, I] -> the same rows after asymmetric per-row int8 quantize/dequantize (XNNPACK qd8:
  the range always includes 0, scale = range / 255, int8 zero point)."""
  xf = x2.astype(jnp.float32)
  lo = jnp.minimum(xf.min(-1, keepdims=True), 0.0)
  hi = jnp.maximum(xf.max(-1, keepdims=True), 0.0)
  scale = jnp.maximum(hi - lo, 1e-30) / 255.0
  zero = jnp.clip(jnp.round(-128.0 - lo / scale), -128.0, 127.0)
  q = jnp.clip(jnp.round(xf / scale) + zero, -128.0, 127.0)
  return ((q - zero) * scale).astype(x2.dtype)


def maybe_quant_input(x2):
  if not INPUT_QUANT:
    return x2
  on = INPUT_QUANT[-1]
  return x2 + jax.lax.stop_gradient(jnp.where(on, fake_quant_rows(x2) - x2, jnp.zeros_like(x2)))


def project(x, w, split: tuple = ()):
  """x [B, T, *in] @ w [*in, *out] -> [B, T, *out], as one 2-D matmul.

  `split`: input channels computed apart (`split_matmul`), for d_model inputs only.

  Written as 'XI,IO->XO' over flattened tokens (X = B*T) and flattened weight axes: with 3-D
  einsums ('BTD,DF->BTF') XLA:CPU computes the weight gradient, which sums over both B and T,
  through a transposed column-by-column fusion that took ~5x the forward time (measured with
  bench/step_throughput.py); the 2-D form is a plain GEMM on every backend.
  """
  n_in = x.ndim - 2
  lead, d_in = x.shape[:2], math.prod(x.shape[2:])
  # Matmul inputs in the narrower of the two dtypes: bf16 weights under an fp32 residual stream
  # (a read-only teacher) multiply as bf16 without rounding the stream between layers.
  cdt = x.dtype if jnp.finfo(x.dtype).bits <= jnp.finfo(w.dtype).bits else w.dtype
  w2 = w.astype(cdt).reshape(d_in, -1)
  # fp32 accumulation whatever the input dtype: on CPUs with AVX-512 BF16 (and on GPU/TPU)
  # bf16 x bf16 -> fp32 is the fast path (~3x fp32 here); bf16 accumulation is both slower on
  # XLA:CPU and less accurate.
  y = split_matmul(x.reshape(-1, d_in).astype(cdt), w2, split)
  return y.astype(x.dtype).reshape(*lead, *w.shape[n_in:])


def split_matmul(x2, w2, split: tuple = ()):
  """x2 [X, I] @ w2 [I, O] in fp32, with the input channels `split` computed apart.

  The same sum, regrouped: the other channels go through the matmul (whose input the dynamic-
  range kernels, and `quantized_inputs`, round to int8 per token over its [min, max]), the
  `split` ones through fp32 rank-1 updates that stay float in the exported file and never
  set that range. A few residual-stream channels carry ~10x the values of the rest; on the
  SmolLM2 watch student, keeping its 8 largest out of the rounding cut the top-1 predictions
  that int8-rounded inputs flip from 5.2% to 2.6% (fp32 weights; bench/activation_rounding.py,
  ModelConfig.outlier_channels). The
  price on the device: two more small ops per channel and matmul (~650 for 8 channels on the
  8-layer watch student), which cost about half of LiteRT-LM's speed there (README).
  """
  if not split:
    return jnp.einsum("XI,IO->XO", maybe_quant_input(x2), w2, preferred_element_type=jnp.float32)
  keep = kept_channels(x2.shape[-1], split)
  # Host weights are the export's (its params are numpy constants): zeroing the rows here, not
  # in the graph, leaves the file's fully connected op a constant weight (which the quantizers
  # need) whose int4 blocks never see these rows (as qat.fake_quant assumes). Traced weights
  # need no zeros: the input's do it, and these rows learn through the updates below.
  host = isinstance(w2, np.ndarray)
  main = np.where(keep[:, None], w2, 0).astype(w2.dtype) if host else w2
  y = jnp.einsum("XI,IO->XO", maybe_quant_input(x2 * keep.astype(x2.dtype)), main,
                 preferred_element_type=jnp.float32)
  if host:
    # The export: k rank-1 multiply-adds, not a [X, k] @ [k, O] matmul, which the quantizers
    # would take (ai-edge-quantizer cannot block k < 32 inputs; TF's int8 would round them),
    # nor a broadcast [X, k, O] product (a transient of k x the logits on the device).
    for i in split:
      y = y + x2[:, i:i + 1].astype(jnp.float32) * w2[i].astype(np.float32)
    return y
  idx = np.asarray(split)  # fp32 operands: XLA:CPU has no bf16 x bf16 -> fp32 dot for these
  return y + jnp.einsum("XK,KO->XO", jnp.take(x2, idx, axis=1).astype(jnp.float32),
                        w2[idx].astype(jnp.float32))


def kept_channels(n: int, split: tuple) -> np.ndarray:
  """[n] bool: False at the channels `split` computes apart (split_matmul, qat.fake_quant)."""
  keep = np.ones((n,), bool)
  keep[list(split)] = False
  return keep


def softcap(x, cap):
  return cap * jnp.tanh(x / cap) if cap else x
