"""JAX student -> tf.Module with `prefill`/`decode` tf.functions -> SavedModel -> TFLite bytes.

The two signatures follow the LiteRT generative-model convention, so the same app code that
drives other on-device LLMs drives ours:

  prefill(tokens int32 [1, P], input_pos int32 [P], kv_cache_{k,v}_{i} f32 [1, S, M, K])
      -> logits f32 [1, P, V], kv_cache_{k,v}_{i}
  decode(tokens int32 [1, 1], input_pos int32 [1], kv_cache_{k,v}_{i})
      -> logits f32 [1, 1, V], kv_cache_{k,v}_{i}

input_pos[0] is the cache slot of the first token (positions are contiguous from there), so
the graph is `lm.apply_cached(params, tokens, cache, input_pos[0])` with the weights baked in
as constants. jax2tf's native serialization wraps the StableHLO in XlaCallModule ops, which
TF's TFLite converter lowers to builtin TFLite ops (no Flex/Select ops; checked below).

V is the tokenizer's usable vocabulary: the embedding rows padded for sharding are sliced
off, so an argmax over the logits can never pick an id the tokenizer cannot decode.
"""
from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from distill.export import quiet_tf
from distill.export import quantize
from distill.export.signatures import DECODE, PREFILL, cache_names
from distill.models.transformer import LM



def export_lm(lm: LM, params):
  """An fp32 copy of the model for export: weights and activations fp32, no remat.

  Quantization is the converter's job; exporting bf16 activations would make the fp32 file
  disagree with itself and XNNPACK has no bf16 kernels anyway.
  """
  cfg = lm.cfg.replace(dtype="float32", param_dtype="float32", remat=False,
                        scan_layers=False)
  host = jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)
  return LM(cfg), host


def int8_rows(table) -> tuple[np.ndarray, np.ndarray]:
  """Symmetric int8 per row: (q [V, D] int8, scale [V] fp32) with table ~= q * scale[:, None]."""
  t = np.asarray(table, np.float32)
  scale = np.maximum(np.abs(t).max(-1), 1e-30) / 127.0
  return np.clip(np.round(t / scale[:, None]), -127, 127).astype(np.int8), scale.astype(np.float32)


def step_fn(lm: LM, params, vocab: int, *, int8_embedding: bool = False):
  """(tokens, input_pos, *flat_cache) -> (logits[..., :vocab], *flat_cache); params baked in.

  `int8_embedding`: the token lookup reads an int8 copy of the table with one fp32 scale per
  row. TFLite's quantizers (TF's dynamic range, ai-edge-quantizer's recipes) only quantize
  the table where it feeds a matmul, never a GATHER, so without this a quantized file still
  carries the whole fp32 table (for a trimmed 4.4k x 320 watch student: 5.7 of 12 MB).
  """
  n = lm.cfg.n_layers
  # Host constants: ops.split_matmul folds its zeroed rows into numpy weights at trace time.
  params = jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)
  lookup = None
  if int8_embedding:
    q, scale = int8_rows(params["embed"])

    def lookup(tokens):
      return (jnp.take(jnp.asarray(q), tokens, axis=0).astype(jnp.float32) *
              jnp.take(jnp.asarray(scale), tokens, axis=0)[..., None])

  def fn(tokens, input_pos, *flat):
    cache = [(flat[2 * i], flat[2 * i + 1]) for i in range(n)]
    logits, cache = lm.apply_cached(params, tokens, cache, input_pos[0], lookup=lookup)
    return (logits[..., :vocab],) + tuple(x for kv in cache for x in kv)

  return fn


def build_module(lm: LM, params, *, vocab: int, max_context: int, prefill_len: int,
                 int8_embedding: bool = False):
  """tf.Module with `prefill` and `decode` tf.functions whose in/out names follow the convention."""
  tf = quiet_tf.import_tensorflow()
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel

  cfg = lm.cfg
  names = cache_names(cfg.n_layers)
  cache_spec = [tf.TensorSpec([1, max_context, cfg.n_kv_heads, cfg.k], tf.float32, name=nm)
                for nm in names]
  # One conversion serves both lengths: jax2tf traces per input signature.
  converted = jax2tf.convert(step_fn(lm, params, vocab, int8_embedding=int8_embedding),
                             with_gradient=False)

  def signature(t: int):
    spec = [tf.TensorSpec([1, t], tf.int32, name="tokens"),
            tf.TensorSpec([t], tf.int32, name="input_pos")] + cache_spec

    @tf.function(input_signature=spec, autograph=False)
    def fn(tokens, input_pos, *flat):
      outs = converted(tokens, input_pos, *flat)
      result = {"logits": outs[0]}
      result.update(zip(names, outs[1:]))
      return result

    return fn

  module = tf.Module()
  module.prefill = signature(prefill_len)
  module.decode = signature(1)
  return module


def save_saved_model(module, directory: str) -> None:
  tf = quiet_tf.import_tensorflow()
  tf.saved_model.save(module, directory, signatures={
      PREFILL: module.prefill.get_concrete_function(),
      DECODE: module.decode.get_concrete_function()})


def _converter(saved_model_dir: str):
  tf = quiet_tf.import_tensorflow()
  conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, signature_keys=[PREFILL, DECODE])
  # Builtin ops only: a Flex (Select TF) op would need the 6 MB Flex delegate on device.
  conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  return conv


def _convert(conv) -> bytes:
  # The converter's C++ warns on every healthy conversion (quiet_tf.HARMLESS): filtered.
  with quiet_tf.native_stderr():
    return conv.convert()


def to_tflite(saved_model_dir: str, mode: str, calibration=None) -> tuple[bytes, str]:
  """(flatbuffer, one-line description of what was quantized) for a quantization mode.

  `calibration` (int8 only): [(signature_key, {input name: array})] from training text.
  fp16 and dynamic_int8 are TF converter options; int8, int4 and int4_head8 run ai-edge-quantizer on the
  fp32 flatbuffer, because its recipes can pick the ops (see quantize.py for why).
  """
  tf = quiet_tf.import_tensorflow()

  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    conv = _converter(saved_model_dir)
    if mode in ("fp32", "int4", "int4_head8", "int8"):
      flat = _convert(conv)
      if mode == "fp32":
        return flat, "none: fp32 weights and activations"
      if mode in ("int4", "int4_head8"):
        return quantize.int4_blockwise(flat, head8=mode == "int4_head8")
      if not calibration:
        raise ValueError("int8 needs calibration samples (training text)")
      return quantize.int8_static(flat, calibration)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
      conv.target_spec.supported_types = [tf.float16]
      return _convert(conv), "fp16 weights (dequantized to fp32 at load), fp32 activations"
    if mode == "dynamic_int8":
      return _convert(conv), ("int8 per-channel weights, activations quantized on the fly "
                              "(dynamic range); fp32 interface")
  raise ValueError(f"unknown quantization mode {mode!r}")


def op_counts(model_path: str) -> dict[str, int]:
  """{op name: count} over both signatures, read lazily from the flatbuffer (no weight copy)."""
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
  with open(model_path, "rb") as f:
    model = schema.Model.GetRootAsModel(f.read(), 0)
  by_code = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
  names = []
  for i in range(model.OperatorCodesLength()):
    code = model.OperatorCodes(i)
    custom = code.CustomCode()
    op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    names.append(custom.decode() if custom else by_code.get(op, str(op)))
  counts: dict[str, int] = {}
  for s in range(model.SubgraphsLength()):
    sub = model.Subgraphs(s)
    for o in range(sub.OperatorsLength()):
      name = names[sub.Operators(o).OpcodeIndex()]
      counts[name] = counts.get(name, 0) + 1
  return dict(sorted(counts.items()))
