"""Quantization inputs: calibration samples for full int8, and int4 blockwise via ai-edge-quantizer.

Modes (see converter.to_tflite for the converter settings):
  fp32          no quantization; the parity reference.
  fp16          fp16 weights, fp32 compute (half the file, near-identical outputs).
  dynamic_int8  int8 per-channel weights, activations quantized on the fly; no data needed.
  int8          static w8a8: int8 per-channel weights and int8 activations with ranges
                calibrated on training text, on every fully connected op (all projections,
                the MLP and the unembedding, i.e. nearly all weights and FLOPs); norms,
                RoPE, softmax, the mask and the cache update stay fp32 (ai-edge-quantizer).
  int4          4-bit weights in blocks of 32 along the input axis with one fp scale per
                block, dynamic-range activations (ai-edge-quantizer on the fp32 file). The
                weight-only blockwise recipe is a no-op on fully connected ops in
                ai-edge-quantizer 0.10, hence the dynamic one.
  int4_head8    int4 as above on every block; the unembedding as int8 per-channel weights
                dequantized at load, with fp32 activations (no per-token int8 rounding of
                the final hidden state, which alone flips ~3% of a small student's top-1).

Why not int8 activations everywhere: on the tiny student, TF's converter with
TFLITE_BUILTINS_INT8 reached 67.6% teacher-forced top-1 agreement and ai-edge-quantizer's
all-ops static int8 83%; int8 on the fully connected ops alone keeps 97% (the acceptance bar
is 95%). The attention scores span a -3.4e38 mask value and the residual stream has outliers,
which one per-tensor int8 scale cannot cover.

Calibration must see every position range the device will: RoPE angles grow with the
position, and a range calibrated only on the first P positions would clip later ones. So each
sample is a prefill chunk (and a decode step) at an offset spread over the whole context,
with the cache filled by the JAX model running the text before that offset.
"""
from __future__ import annotations

import contextlib
import io
import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from distill.export.signatures import DECODE, PREFILL, cache_names

INT4_BLOCK = 32


def _offsets(max_context: int, prefill_len: int, count: int) -> list[int]:
  """`count` chunk offsets from 0 to the last slot a chunk fits at, multiples of P when possible."""
  last = max_context - prefill_len
  raw = np.linspace(0, last, num=max(count, 1))
  return sorted({min(last, int(round(x / prefill_len)) * prefill_len) for x in raw})


def calibration_samples(lm, params, streams, *, max_context: int, prefill_len: int,
                        num_offsets: int = 4) -> list[tuple[str, dict[str, np.ndarray]]]:
  """(signature, inputs) pairs covering offsets across the context, caches from JAX.

  `streams`: int32 token arrays, each at least max_context + 1 long (training text).
  """
  names = cache_names(lm.cfg.n_layers)
  run = jax.jit(lm.apply_cached)
  samples = []
  offsets = _offsets(max_context, prefill_len, num_offsets)
  for i, stream in enumerate(streams):
    stream = np.asarray(stream, np.int32)
    off = offsets[i % len(offsets)]
    cache = lm.init_cache(1, max_context, jnp.float32)
    if off:
      _, cache = run(params, jnp.asarray(stream[None, :off]), cache, 0)
    flat = lambda c: {n: np.asarray(x) for n, x in zip(names, (a for kv in c for a in kv))}
    chunk = stream[off:off + prefill_len]
    samples.append((PREFILL, {"tokens": chunk[None], "input_pos": np.arange(
        off, off + prefill_len, dtype=np.int32), **flat(cache)}))
    pos = off + prefill_len
    if pos < max_context:
      _, cache = run(params, jnp.asarray(chunk[None]), cache, off)
      samples.append((DECODE, {"tokens": stream[None, pos:pos + 1],
                               "input_pos": np.asarray([pos], np.int32), **flat(cache)}))
  return samples


@contextlib.contextmanager
def _quiet():
  """ai-edge-quantizer prints reports and progress bars and warns about debug interpreters."""
  with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
      contextlib.redirect_stderr(io.StringIO()):
    warnings.simplefilter("ignore")
    yield


def _aeq():
  try:
    from ai_edge_quantizer import quantizer, recipe_manager  # pylint: disable=import-outside-toplevel
    from ai_edge_quantizer import recipe  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError("--quant=int8/int4 need ai-edge-quantizer: pip install ai-edge-quantizer"
                     ) from None
  return quantizer, recipe_manager, recipe


def int8_static(fp32_model: bytes, calibration) -> tuple[bytes, str]:
  """Static w8a8 on the fully connected ops, ranges from `calibration` (see module doc)."""
  quantizer, recipe_manager, recipe = _aeq()
  rp = recipe_manager.RecipeManager()
  rp.add_static_config(regex=".*", operation_name=recipe.TFLOperationName.FULLY_CONNECTED,
                       activation_num_bits=8, weight_num_bits=8)
  by_sig: dict[str, list] = {}
  for key, inputs in calibration:
    by_sig.setdefault(key, []).append(inputs)
  q = quantizer.Quantizer(fp32_model, rp.get_quantization_recipe())
  with _quiet():
    ranges = q.calibrate(by_sig)
    result = q.quantize(ranges, enable_progress_bar=False, enable_progress_report=False)
  return bytes(result.quantized_model), (
      "static int8: int8 per-channel weights and int8 activations (ranges calibrated on "
      "training text) on all fully connected ops; norms, RoPE, attention softmax and the "
      "cache update in fp32; int32 tokens, fp32 logits and caches at the interface")


def _head_scopes(fp32_model: bytes) -> list[str]:
  """ai-edge-quantizer scope names of the unembedding: the last fully connected op of each
  signature's subgraph (our graphs end norm -> unembedding -> logits)."""
  from ai_edge_quantizer.utils import tfl_flatbuffer_utils as tfu  # pylint: disable=import-outside-toplevel
  model = tfu.read_model(fp32_model)
  fc = [i for i, c in enumerate(model.operatorCodes)
        if tfu.TFL_OP_CODE_TO_NAME.get(max(c.builtinCode, c.deprecatedBuiltinCode))
        == "FULLY_CONNECTED"]
  scopes = []
  for sub in model.subgraphs:
    last = [op for op in sub.operators if op.opcodeIndex in fc][-1:]
    scopes += [tfu.get_op_scope(op, sub.tensors) for op in last]
  return scopes


def add_head_int8_weight_only(rp, fp32_model: bytes) -> None:
  """Adds to RecipeManager `rp`: the unembedding as int8 per-channel weights with a DEQUANTIZE
  to fp32 (done once at load for a constant) and fp32 activations. Later configs win
  (RecipeManager.get_quantization_configs), so add it after any catch-all."""
  _, _, recipe = _aeq()
  scopes = _head_scopes(fp32_model)
  rp.add_weight_only_config(regex="^(" + "|".join(re.escape(s) for s in scopes) + ")$",
                            operation_name=recipe.TFLOperationName.FULLY_CONNECTED,
                            num_bits=8, granularity=recipe.QuantGranularity.CHANNELWISE)


def int4_blockwise(fp32_model: bytes, head8: bool = False) -> tuple[bytes, str]:
  """4-bit blockwise quantization of an fp32 .tflite with ai-edge-quantizer (dynamic range).

  `head8` (the `int4_head8` mode): the unembedding instead gets int8 per-channel weights
  that a DEQUANTIZE op turns back to fp32 once at load (ai-edge-quantizer's weight-only
  recipe), so its input is never rounded to int8. On the real watch student that rounding,
  at the unembedding alone, flipped ~3% of top-1 predictions (per-token int8 of the final
  norm's output; README, "Quantization-aware distillation"). int4 weight-only is no option
  there: ai-edge-quantizer allows it per channel only (61% agreement on that student), and a
  blockwise weight-only file (forced past its policy check) runs in LiteRT but its
  DEQUANTIZE returns zeros.
  """
  quantizer, recipe_manager, recipe = _aeq()
  rp = recipe_manager.RecipeManager()
  # The weight-only recipe with BLOCKWISE_32 leaves fully connected ops untouched in
  # ai-edge-quantizer 0.10 (the file comes back the same size); the dynamic recipe applies.
  rp.add_dynamic_config(regex=".*", operation_name=recipe.TFLOperationName.ALL_SUPPORTED,
                        num_bits=4, granularity=recipe.QuantGranularity.BLOCKWISE_32)
  if head8:  # after the catch-all: the latest matching config wins
    add_head_int8_weight_only(rp, fp32_model)
  q = quantizer.Quantizer(fp32_model, rp.get_quantization_recipe())
  with _quiet():
    result = q.quantize(enable_progress_bar=False, enable_progress_report=False)
  out = bytes(result.quantized_model)
  if len(out) > 0.8 * len(fp32_model):
    raise RuntimeError(f"int4 quantization changed almost nothing ({len(fp32_model)} -> "
                       f"{len(out)} bytes); this ai-edge-quantizer cannot int4 these ops")
  if head8:
    return out, (
        f"int4 weights in blocks of {INT4_BLOCK} along the input axis (one fp scale per block) "
        "on the fully connected ops of every block, activations quantized on the fly "
        "(ai-edge-quantizer dynamic_wi4 blockwise recipe); the unembedding int8 per-channel "
        "weights dequantized to fp32 at load, fp32 activations (weight-only recipe); "
        "embedding and norms fp32")
  return out, (
      f"int4 weights in blocks of {INT4_BLOCK} along the input axis (one fp scale per block) "
      "on the fully connected ops, activations quantized on the fly (ai-edge-quantizer "
      "dynamic_wi4 blockwise recipe); embedding and norms fp32")
