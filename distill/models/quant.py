"""The export's quantization grids, fake-quantized in training (QAD) exactly as the file stores them.

`--config.distill.qat=none|int8|int4_block32` (and `qat_start_fraction`, the fraction of the
distill steps after which it switches on; 0 = from the start). The distill losses pass the
params through `fake_quant` before the forward, with a straight-through estimator
(`w + stop_gradient(q(w) - w)`: the forward sees the quantized weight, the gradient reaches
the fp32 master weight unchanged), so the student learns weights whose rounding the exported
file no longer notices.

What the exports do, measured on our .tflite files (tests/test_qat.py checks equality):
  int4_block32  ai-edge-quantizer's dynamic_wi4 recipe (distill/export/quantize.py): every
                fully connected weight, as TFLite stores it ([out, in]), in blocks of 32
                along the input axis; symmetric signed int4 (q in [-8, 7], no narrow range),
                scale = max|w| / 7 per block, rounded to a 7-bit mantissa (bfloat16, then
                stored as float16); q = clip(rint(w / scale)).
  int8          TF's dynamic-range int8 (the `dynamic_int8` export): per output channel,
                symmetric narrow range q in [-127, 127], scale = max|w| / 127 (fp32).
  int4_block32_head8  the `int4_head8` export: int4_block32 on every block's weights, the
                unembedding int8 per channel (ai-edge-quantizer's weight-only int8: symmetric,
                narrow range, scale = max|w| / 127 per vocabulary row), which that file keeps
                with fp32 activations.
The fully connected weights are the attention q/k/v/o projections, the MLP and the
unembedding. The embedding *lookup* stays fp32: with tied embeddings the converter keeps
an fp32 copy for the gather and quantizes only the unembedding's, so `fake_quant` returns
two param trees: `body` (embedding fp32, for the hidden states) and `head` (embedding
quantized, for the logits). Activations (quantized on the fly to int8 by the dynamic
kernels, per token over its [min, max]) are simulated only with `qat_activations`.

Outlier channels (`ModelConfig.outlier_channels`, picked by `distill.methods.qat` on the fp32
student before the QAD stage): a few residual-stream channels carry ~10x the values of the
rest and set each token's int8 range, so the other channels round coarsely. The model computes
them apart in every d_model-input matmul (ops.split_matmul): the file's fully connected op
gets the matrix with those rows zeroed, fp32 rank-1 updates add them back. `fake_quant` does
the same: int4 blocks of the zeroed matrix, the rows fp32. On the SmolLM2 watch student the
rounding of activations, not of weights, capped the int4 QAD file at 94% top-1 agreement
with its JAX self; 8 channels apart took it to 97.4-98.0% (2 seeds; README).

After training the student is saved as the forward QAD trained (`snap`, through
`LossConfig.final_params`): its fp32 master weights sit anywhere inside their rounding bins,
so the saved matrices are the quantized ones. Grid values re-quantize to themselves (the
block maximum is 7 * scale, so the scale comes back bit-identical), so the exported file
holds exactly the saved weights. This holds for fp32 params; bf16 params cannot hold every
grid value. A tied embedding is saved *untied* (`snap_config`): the fp32 lookup table QAD
trained with, and the quantized unembedding. Saving the quantized table for both (as before
27 Nov 2026) fed the lookup rounding that training never saw: on the tiny student it took
the int4 QAD student's CE from 1.628 (its training forward) to 1.660. The export already
stores the lookup as its own table, so the file is no larger.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp

from distill.models import ops
from distill.models.model_config import ModelConfig

QAT_MODES = ("none", "int8", "int4_block32", "int4_block32_head8")
INT4_BLOCK = 32


def _ste(w, q, on):
  """Forward q (when `on`), gradient of the identity."""
  return w + jax.lax.stop_gradient(jnp.where(on, q - w, jnp.zeros_like(w)))


def _fp16_scale(scale):
  # ai-edge-quantizer: scale.astype(bfloat16).astype(float16) (a 7-bit mantissa).
  return scale.astype(jnp.bfloat16).astype(jnp.float16).astype(jnp.float32)


def int4_blockwise(w_in_out, block: int = INT4_BLOCK):
  """Dequantized int4 of a [in, out] matrix, blocks of `block` along `in` per output column."""
  w = w_in_out.astype(jnp.float32)
  d_in, d_out = w.shape
  wb = w.reshape(d_in // block, block, d_out)
  bound = jnp.maximum(jnp.max(jnp.abs(wb), axis=1, keepdims=True), 1e-9)
  scale = _fp16_scale(bound / 7.0)
  q = jnp.clip(jnp.rint(wb / scale), -8.0, 7.0)
  return (q * scale).reshape(d_in, d_out)


def int8_per_channel(w_in_out):
  """Dequantized symmetric int8 of a [in, out] matrix, one scale per output column."""
  w = w_in_out.astype(jnp.float32)
  scale = jnp.maximum(jnp.max(jnp.abs(w), axis=0, keepdims=True), 1e-9) / 127.0
  return jnp.clip(jnp.round(w / scale), -127.0, 127.0) * scale


def _as_matrix(name: str, w):
  """The [in, out] matrix TFLite's fully connected op sees for a parameter, or None."""
  if name in ("q", "k", "v"):          # [D, H, K]: einsum BTD,DHK -> FC over D
    return w.reshape(w.shape[0], -1)
  if name == "o":                      # [H, K, D]: einsum BTHK,HKD -> FC over H*K
    return w.reshape(-1, w.shape[-1])
  if name in ("gate", "up", "down", "unembed") and w.ndim == 2:
    return w
  return None


def _modes(mode: str) -> tuple[str, str]:
  """(mode of the blocks' weights, mode of the unembedding)."""
  if mode == "int4_block32_head8":
    return "int4_block32", "int8"
  return mode, mode


def _quantizer(mode: str):
  if mode == "int4_block32":
    return int4_blockwise
  if mode == "int8":
    return int8_per_channel
  raise ValueError(f"qat={mode!r}: use one of {QAT_MODES}")


# The matrices whose input is the (normed) residual stream: their rows `outliers` stay fp32.
_D_INPUT = ("q", "k", "v", "gate", "up", "unembed")


def _fq_matrix(mode, m, outliers=()):
  if mode == "int4_block32" and m.shape[0] % INT4_BLOCK:
    return None  # not a whole number of blocks: the quantizer would not block it either
  if not outliers:
    return _quantizer(mode)(m)
  # The export's fully connected op holds the other rows (these zeroed, see ops.split_matmul),
  # the rank-1 updates these rows in fp32.
  keep = ops.kept_channels(m.shape[0], outliers)[:, None]
  return jnp.where(keep, _quantizer(mode)(jnp.where(keep, m, 0)), m)


def fake_quant(params, mode: str, on=True, outliers: tuple = ()):
  """(body, head) params with the export's quantized weights (STE); see the module doc.

  `on` may be a traced bool (the qat_start_fraction schedule); mode "none" is the identity.
  `outliers`: ModelConfig.outlier_channels, rows of the d_model-input matrices left in fp32.
  """
  if mode == "none":
    return params, params
  if mode not in QAT_MODES:
    raise ValueError(f"qat={mode!r}: use one of {QAT_MODES}")
  body_mode, head_mode = _modes(mode)

  def walk(node, name=""):
    if isinstance(node, dict):
      return {k: walk(v, k) for k, v in node.items()}
    m = _as_matrix(name, node) if hasattr(node, "ndim") else None
    if m is None:
      return node
    q = _fq_matrix(head_mode if name == "unembed" else body_mode, m,
                   outliers if name in _D_INPUT else ())
    if q is None:
      return node
    return _ste(node, q.reshape(node.shape).astype(node.dtype), on)

  body = walk(params)
  head = body
  if _tied(params):
    e = params["embed"]  # tied: the unembedding is embed.T ([D, V], FC over D)
    q = _fq_matrix(head_mode, e.T, outliers)
    if q is not None:
      head = dict(body, embed=_ste(e, q.T.astype(e.dtype), on))
  return body, head


def schedule_on(step, start_step: int):
  """Whether fake quantization is active at `step` (traced-safe)."""
  return jnp.asarray(step) >= start_step


def _tied(params) -> bool:
  return isinstance(params, dict) and "embed" in params and "unembed" not in params


def snap(params, mode: str, outliers: tuple = ()):
  """The params of the forward QAD trained, for saving: the quantized matrices, and with tied
  embeddings the fp32 lookup table plus the quantized unembedding as `unembed` ([D, V])."""
  if mode == "none":
    return params
  body, head = fake_quant(params, mode, outliers=outliers)
  if not _tied(params):
    return head
  return dict(body, unembed=head["embed"].T)  # body["embed"]: the fp32 table the lookup read


def snap_config(cfg: ModelConfig, mode: str) -> ModelConfig:
  """The model config of `snap`'s params (untied where the embedding was tied)."""
  if mode == "none" or not cfg.tie_embeddings:
    return cfg
  return cfg.replace(tie_embeddings=False)
