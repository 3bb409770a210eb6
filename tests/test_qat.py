"""QAT fake quantization equals what the export writes, and its gradient is the identity.

The exported-weights check converts one small random student (2 layers, d_model 64) to int4
(ai-edge-quantizer) and dynamic-range int8 (TF converter), dequantizes every quantized
weight tensor in the flatbuffer, and finds each one among `qat.fake_quant`'s matrices.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.run import settings
from distill.models import quant as qat
from distill.methods import qat as qad
from distill.train import objectives
from distill.models.transformer import LM
from distill.models.model_config import ModelConfig

CFG = ModelConfig(vocab_size=264, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192,
                  max_len=64)


def _tflite_weights(flat: bytes, bits: bool = False) -> list:
  """Every int4 / int8 constant of the first subgraph, dequantized, as [out, in] (with
  `bits`: (array, 4 or 8) pairs)."""
  from tensorflow.lite.python import schema_py_generated as schema  # pylint: disable=import-outside-toplevel
  m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flat, 0))
  sub = m.subgraphs[0]

  def buffer(i):  # inline, or (ai-edge-quantizer's larger files) at an offset after the root
    b = m.buffers[i] if i else None
    if b is not None and b.data is None and (b.offset or 0) > 1:
      return np.frombuffer(flat[b.offset:b.offset + b.size], np.uint8)
    return None if b is None else b.data
  out = []
  for t in sub.tensors:
    data = buffer(t.buffer)
    if data is None or t.type not in (schema.TensorType.INT4, schema.TensorType.INT8):
      continue
    shape = tuple(int(d) for d in t.shape)
    q = t.quantization
    raw = np.asarray(data, np.uint8)
    if t.type == schema.TensorType.INT4:
      lo, hi = (raw & 0xF).astype(np.int8), (raw >> 4).astype(np.int8)
      vals = np.stack([lo, hi], -1).reshape(-1)[:np.prod(shape)]
      vals = np.where(vals > 7, vals - 16, vals).astype(np.float32).reshape(shape)
      st = sub.tensors[q.details.scales]
      scales = np.frombuffer(bytes(buffer(st.buffer)), np.float16).astype(np.float32)
      scales = scales.reshape(shape[0], -1)
      out.append((vals * np.repeat(scales, q.details.blockSize, axis=1), 4))
    else:
      vals = raw.view(np.int8).astype(np.float32).reshape(shape)
      out.append((vals * np.asarray(q.scale, np.float32).reshape(-1, 1), 8))
  return out if bits else [w for w, _ in out]


def _candidates(params, mode) -> list[np.ndarray]:
  """fake_quant's matrices as TFLite stores them ([out, in])."""
  body, head = qat.fake_quant(params, mode)
  mats = [np.asarray(head["embed"], np.float32)]  # the unembedding: [V, D] = [out, in]
  for i in range(CFG.n_layers):
    for name, w in body[f"block_{i}"]["attn"].items():
      mats.append(np.asarray(qat._as_matrix(name, w), np.float32).T)  # pylint: disable=protected-access
    for w in body[f"block_{i}"]["mlp"].values():
      mats.append(np.asarray(w, np.float32).T)
  return mats


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  from distill.export import converter  # pylint: disable=import-outside-toplevel
  lm = LM(CFG)
  params = lm.init(jax.random.key(3))
  lm32, p32 = converter.export_lm(lm, params)
  sm = str(tmp_path_factory.mktemp("qat") / "sm")
  converter.save_saved_model(converter.build_module(lm32, p32, vocab=259, max_context=32,
                                                    prefill_len=8), sm)
  return p32, sm


@pytest.mark.parametrize("mode,quant", [("int4_block32", "int4"), ("int8", "dynamic_int8"),
                                       ("int4_block32_head8", "int4_head8")])
def test_fake_quant_equals_exported_weights(exported, mode, quant):
  from distill.export import converter  # pylint: disable=import-outside-toplevel
  p32, sm = exported
  flat, _ = converter.to_tflite(sm, quant)
  got = _tflite_weights(flat, bits=True)
  want = _candidates(p32, mode)
  # Every fully connected weight (7 projections per layer + the unembedding) is quantized.
  assert len(got) == len(want) == 7 * CFG.n_layers + 1
  if quant == "int4_head8":  # int4 blocks everywhere but the [V, D] unembedding, in int8
    assert sorted(b for _, b in got) == [4] * 7 * CFG.n_layers + [8]
    assert [g.shape for g, b in got if b == 8] == [(CFG.vocab_size, CFG.d_model)]
  for g, b in got:
    diffs = [np.abs(g - w).max() for w in want if w.shape == g.shape]
    # int8: TF / ai-edge-quantizer round half away from zero, we round half to even; a tie
    # is one step (never met here). int4 is bit for bit.
    tol = 0.0 if b == 4 else 1e-6
    assert min(diffs) <= tol + 1e-7 * np.abs(g).max(), (g.shape, min(diffs))
  # Not the identity: the weights really moved to the grid.
  assert max(np.abs(w - np.asarray(p32["embed"])).max() for w in want[:1]) > 0


def test_ste_gradient_is_identity():
  params = LM(CFG).init(jax.random.key(0))
  for mode in ("int8", "int4_block32"):
    def f(p):
      body, head = qat.fake_quant(p, mode)
      return sum(jnp.sum(x * 1.5) for x in jax.tree.leaves(body)) + jnp.sum(head["embed"])
    g = jax.grad(f)(params)
    assert np.allclose(g["block_0"]["mlp"]["up"], 1.5)
    assert np.allclose(g["embed"], 2.5)  # body (1.5) + head (1), both straight through


def test_int4_grid_and_schedule():
  w = jax.random.normal(jax.random.key(1), (64, 8))
  q = qat.int4_blockwise(w)
  blocks = np.asarray(q).reshape(2, 32, 8)
  scale = np.abs(blocks).max(1, keepdims=True) / 7  # max |w| maps to 7 (up to scale rounding)
  assert np.allclose(blocks / scale, np.rint(blocks / scale), atol=0.08)
  params = LM(CFG).init(jax.random.key(0))
  off, _ = qat.fake_quant(params, "int4_block32", on=False)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(off), jax.tree.leaves(params)))
  assert qat.fake_quant(params, "none")[0] is params


def test_loss_config_selects_qat():
  c = objectives.LossConfig(qat="int4_block32", qat_start_step=5, total_steps=10)
  lm = LM(CFG)
  params = lm.init(jax.random.key(0))
  x = jnp.asarray(np.random.default_rng(0).integers(3, 200, (2, 16)), jnp.int32)
  batch = {"inputs": x, "targets": x, "mask": jnp.ones_like(x, jnp.float32)}
  loss = functools.partial(objectives.distill_loss, student=lm, teacher=lm, cfg=c)
  before, _ = loss(params, batch, params, 0)
  after, _ = loss(params, batch, params, 5)
  assert float(before) == pytest.approx(0.0, abs=1e-5)  # student == teacher, QAT not yet on
  assert float(after) > 1e-4  # the quantized student differs from its fp32 self
  with pytest.raises(ValueError, match="qat"):
    from configs import tiny  # pylint: disable=import-outside-toplevel
    d = tiny.get_config().distill
    d.qat = "int3"
    settings.loss_config(d)


def test_final_params_are_the_grid_and_requantize_to_themselves():
  """Saved QAD weights are grid values, so the export's int4 quantization returns them as is;
  the tied embedding is saved untied: the fp32 lookup table and the int4 unembedding."""
  params = LM(CFG).init(jax.random.key(2))
  c = objectives.LossConfig(qat="int4_block32")
  snapped = c.final_params(params)
  again = qat.fake_quant(snapped, "int4_block32")[1]
  assert jax.tree.structure(again) == jax.tree.structure(snapped)
  for a, b in zip(jax.tree.leaves(snapped), jax.tree.leaves(again)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(snapped["embed"], params["embed"])
  np.testing.assert_array_equal(snapped["unembed"], qat.int4_blockwise(params["embed"].T))
  up = params["block_1"]["mlp"]["up"]
  np.testing.assert_array_equal(snapped["block_1"]["mlp"]["up"], qat.int4_blockwise(up))
  assert c.final_lm(LM(CFG)).cfg.tie_embeddings is False
  assert objectives.LossConfig().final_params(params) is params
  assert objectives.LossConfig().final_lm(lm := LM(CFG)) is lm


@pytest.mark.parametrize("mode", ["int4_block32", "int4_block32_head8"])
def test_saved_student_is_the_forward_qad_trained(mode):
  """The saved model computes QAD's training forward: quantized blocks and head, and the lookup
  from the fp32 table (the export keeps its own table for the lookup). Saving the quantized
  table for both would feed the lookup rounding that training never saw."""
  lm = LM(CFG)
  params = lm.init(jax.random.key(4))
  c = objectives.LossConfig(qat=mode)
  body, head = qat.fake_quant(params, mode)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 259, (2, 24)), jnp.int32)
  trained = np.asarray(lm.logits_from_hidden(head, lm.hidden(body, tokens)))
  saved = np.asarray(c.final_lm(lm).apply(c.final_params(params), tokens))
  np.testing.assert_allclose(saved, trained, rtol=1e-5, atol=1e-5)
  all_quantized = np.asarray(lm.apply(head, tokens))  # the quantized table for the lookup too
  assert np.abs(all_quantized - trained).max() > 100 * np.abs(saved - trained).max()


def test_fc_inputs_rounded_per_token_like_the_dynamic_kernels():
  """`ops.quantized_inputs`: asymmetric int8 per row (range incl. 0, scale/255,
  int8 zero point) against NumPy, straight-through gradient, and off when `on` is False."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from distill.models import ops  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 8)).astype(np.float32)
  x[0, 0, 0] = 40.0  # an outlier channel coarsens its whole token
  x[1, 2] = np.abs(x[1, 2])  # an all-positive row: the range still starts at 0
  w = rng.normal(size=(8, 5)).astype(np.float32)

  def ref_rows(a):
    lo, hi = np.minimum(a.min(-1, keepdims=True), 0), np.maximum(a.max(-1, keepdims=True), 0)
    scale = (hi - lo) / 255.0
    zero = np.clip(np.round(-128 - lo / scale), -128, 127)
    q = np.clip(np.round(a / scale) + zero, -128, 127)
    return (q - zero) * scale
  want = ref_rows(x.reshape(6, 8)).reshape(2, 3, 8) @ w
  with ops.quantized_inputs(True):
    got = np.asarray(ops.project(jnp.asarray(x), jnp.asarray(w)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.abs(got - x @ w).max() > 1e-2  # the rounding is really there
  with ops.quantized_inputs(jnp.asarray(False)):
    np.testing.assert_allclose(np.asarray(ops.project(jnp.asarray(x), jnp.asarray(w))),
                               x @ w, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(ops.project(jnp.asarray(x), jnp.asarray(w))),
                             x @ w, rtol=1e-5, atol=1e-5)  # outside the context: untouched

  def f(a):
    with ops.quantized_inputs(True):
      return ops.project(a, jnp.asarray(w)).sum()
  g = np.asarray(jax.grad(f)(jnp.asarray(x)))
  np.testing.assert_allclose(g, np.broadcast_to(w.sum(-1), x.shape), rtol=1e-5)  # identity STE


def _litert_logits(flat: bytes, path, ids) -> np.ndarray:
  from ai_edge_litert import interpreter as litert  # pylint: disable=import-outside-toplevel
  from distill.export import card as card_lib, signatures  # pylint: disable=import-outside-toplevel
  from distill.export.runtime import LiteRTModel  # pylint: disable=import-outside-toplevel
  path.write_bytes(flat)
  card = {"signatures": card_lib.signatures(litert.Interpreter(model_path=str(path)),
                                            CFG.n_layers),
          "max_context": 32, "prefill_len": 8, "vocab_size": 259, "kv_cache": {
              "names": signatures.cache_names(CFG.n_layers), "dtype": "float32",
              "shape": [1, 32, CFG.n_kv_heads, CFG.d_model // CFG.n_heads]}}
  return LiteRTModel(str(path), card=card).teacher_forced_logits(ids)


def test_int4_head8_file_runs_its_head_in_float(tmp_path):
  """The int4_head8 unembedding (int8 weights, DEQUANTIZE, fp32 activations) computes exactly
  the JAX unembedding of QAD's int4_block32_head8 weights: a file with only that head
  quantized matches JAX to float rounding. The whole int4_head8 file (int4 blocks, dynamic
  int8 activations there) is then closer to JAX than the plain int4 file, whose unembedding
  input is rounded to int8 per token."""
  from distill.export import converter, quantize  # pylint: disable=import-outside-toplevel
  from ai_edge_quantizer import quantizer, recipe_manager  # pylint: disable=import-outside-toplevel
  lm = LM(CFG)
  lm32, p32 = converter.export_lm(lm, lm.init(jax.random.key(5)))
  c = objectives.LossConfig(qat="int4_block32_head8")
  lm32, grid = c.final_lm(lm32), c.final_params(p32)  # untied: fp32 lookup, int8-grid head
  sm = str(tmp_path / "sm")
  converter.save_saved_model(converter.build_module(lm32, grid, vocab=259, max_context=32,
                                                    prefill_len=8), sm)
  fp32, _ = converter.to_tflite(sm, "fp32")
  ids = np.random.default_rng(0).integers(3, 259, 24).astype(np.int32)
  ref = np.asarray(lm32.apply(grid, jnp.asarray(ids[None])))[0, :, :259]
  rp = recipe_manager.RecipeManager()
  quantize.add_head_int8_weight_only(rp, fp32)
  with quantize._quiet():  # pylint: disable=protected-access
    head_only = bytes(quantizer.Quantizer(fp32, rp.get_quantization_recipe()).quantize(
        enable_progress_bar=False, enable_progress_report=False).quantized_model)
  assert [(w.shape, b) for w, b in _tflite_weights(head_only, bits=True)] == [
      ((CFG.vocab_size, CFG.d_model), 8)]  # the unembedding only, int8
  got = _litert_logits(head_only, tmp_path / "head.tflite", ids)
  np.testing.assert_allclose(got, ref, atol=2e-4 * np.abs(ref).max())
  err = {}
  for quant in ("int4", "int4_head8"):
    flat, _ = converter.to_tflite(sm, quant)
    err[quant] = np.abs(_litert_logits(flat, tmp_path / f"{quant}.tflite", ids) - ref).mean()
  assert err["int4_head8"] < err["int4"], err


def test_head8_mode_quantizes_the_head_int8_and_the_blocks_int4():
  params = LM(CFG).init(jax.random.key(0))
  body, head = qat.fake_quant(params, "int4_block32_head8")
  up = params["block_0"]["mlp"]["up"]
  np.testing.assert_array_equal(body["block_0"]["mlp"]["up"], qat.int4_blockwise(up))
  np.testing.assert_array_equal(head["embed"], qat.int8_per_channel(params["embed"].T).T)
  np.testing.assert_array_equal(body["embed"], params["embed"])  # the lookup stays fp32
  untied = dict(params, unembed=params["embed"].T)
  b2, _ = qat.fake_quant(untied, "int4_block32_head8")
  np.testing.assert_array_equal(b2["unembed"], qat.int8_per_channel(untied["unembed"]))


OUTLIERS = (5, 17)


def _with_outliers(seed=5):
  """A random CFG model whose residual stream has two outlier channels (embedding columns
  scaled 30x and -20x), and the same model computing them apart."""
  params = LM(CFG).init(jax.random.key(seed))
  params["embed"] = params["embed"].at[:, 5].multiply(30.0).at[:, 17].multiply(-20.0)
  return params, LM(CFG.replace(outlier_channels=OUTLIERS))


def test_outlier_channels_are_found_and_computed_apart_out_of_the_rounding():
  """`qad.outlier_channels` finds the two scaled channels; `split_matmul` is the same matmul
  in fp32 (and the same gradient), and under `quantized_inputs` rounds only the other
  channels (NumPy reference: per-row asymmetric int8 of the input with those zeroed)."""
  from distill.models import ops  # pylint: disable=import-outside-toplevel
  params, lm = _with_outliers()
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 259, (2, 24)), jnp.int32)
  assert qad.outlier_channels(LM(CFG), params, [tokens], 2) == OUTLIERS
  with pytest.raises(ValueError, match="d_model"):
    qad.outlier_channels(LM(CFG), params, [tokens], CFG.d_model)
  np.testing.assert_allclose(lm.apply(params, tokens), LM(CFG).apply(params, tokens),
                             rtol=1e-4, atol=1e-4)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 64)).astype(np.float32)
  x[:, 5] *= 40.0
  w = rng.normal(size=(64, 7)).astype(np.float32)
  keep = np.ones(64, bool)
  keep[[5, 17]] = False
  xm = np.where(keep, x, 0.0)
  lo, hi = np.minimum(xm.min(-1, keepdims=True), 0), np.maximum(xm.max(-1, keepdims=True), 0)
  scale = (hi - lo) / 255.0
  zero = np.clip(np.round(-128 - lo / scale), -128, 127)
  want = (np.clip(np.round(xm / scale) + zero, -128, 127) - zero) * scale @ w + x[:, ~keep] @ w[~keep]
  with ops.quantized_inputs(True):
    got = np.asarray(ops.split_matmul(jnp.asarray(x), jnp.asarray(w), OUTLIERS))
    plain = np.asarray(ops.split_matmul(jnp.asarray(x), jnp.asarray(w)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  exact = x @ w
  assert np.abs(got - exact).mean() < 0.3 * np.abs(plain - exact).mean()  # the outlier's cost
  grads = [jax.grad(lambda a, b, s=s: ops.split_matmul(a, b, s).sum(), argnums=(0, 1))(
      jnp.asarray(x), jnp.asarray(w)) for s in ((), OUTLIERS)]
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fake_quant_leaves_outlier_rows_fp32_and_the_file_holds_the_rest(tmp_path):
  """With outlier channels, the d_model-input matrices (q/k/v, gate/up, the unembedding) are
  int4 blocks of the matrix with those rows zeroed, plus the rows in fp32; o and down are
  plain int4. The int4 file of the snapped student holds exactly those int4 matrices, its
  logits follow the JAX forward with int8-rounded inputs (outliers apart), and it is closer to
  the fp32 JAX model than the same student exported without the split."""
  from distill.export import converter  # pylint: disable=import-outside-toplevel
  from distill.models import ops  # pylint: disable=import-outside-toplevel
  params, lm = _with_outliers()
  body, head = qat.fake_quant(params, "int4_block32", outliers=OUTLIERS)
  keep = np.ones(CFG.d_model, bool)
  keep[list(OUTLIERS)] = False
  up = np.asarray(params["block_0"]["mlp"]["up"])
  np.testing.assert_array_equal(body["block_0"]["mlp"]["up"][~keep], up[~keep])
  np.testing.assert_array_equal(body["block_0"]["mlp"]["up"][keep],
                                qat.int4_blockwise(np.where(keep[:, None], up, 0))[keep])
  np.testing.assert_array_equal(body["block_0"]["mlp"]["down"],
                                qat.int4_blockwise(params["block_0"]["mlp"]["down"]))
  np.testing.assert_array_equal(head["embed"][:, ~keep], params["embed"][:, ~keep])
  ids = np.random.default_rng(0).integers(3, 259, 24).astype(np.int32)
  err = {}
  for name, model in (("split", lm), ("plain", LM(CFG))):
    c = objectives.LossConfig(qat="int4_block32", qat_outliers=model.cfg.outlier_channels)
    lm32, p32 = converter.export_lm(model, params)
    lm32, grid = c.final_lm(lm32), c.final_params(p32)
    sm = str(tmp_path / f"sm-{name}")
    converter.save_saved_model(converter.build_module(lm32, grid, vocab=259, max_context=32,
                                                      prefill_len=8), sm)
    flat, _ = converter.to_tflite(sm, "int4")
    if name == "split":  # the file's int4 matrices: the snapped ones with the rows zeroed
      got = _tflite_weights(flat)
      mats = [np.where(keep[:, None], np.asarray(grid["unembed"]), 0).T]
      for i in range(CFG.n_layers):
        for n, w in grid[f"block_{i}"]["attn"].items():
          m = np.asarray(qat._as_matrix(n, w))  # pylint: disable=protected-access
          mats.append((m if n == "o" else np.where(keep[:, None], m, 0)).T)
        for n, w in grid[f"block_{i}"]["mlp"].items():
          mats.append((np.asarray(w) if n == "down" else np.where(keep[:, None], w, 0)).T)
      assert len(got) == len(mats) == 7 * CFG.n_layers + 1
      for g in got:
        assert min(np.abs(g - w).max() for w in mats if w.shape == g.shape) == 0.0
    ref = np.asarray(lm32.apply(grid, jnp.asarray(ids[None])))[0, :, :259]
    with ops.quantized_inputs(True):
      sim = np.asarray(lm32.apply(grid, jnp.asarray(ids[None])))[0, :, :259]
    out = _litert_logits(flat, tmp_path / f"{name}.tflite", ids)
    err[name] = np.abs(out - ref).mean()
    # The file rounds as simulated (up to fp32 summation order feeding later roundings).
    assert np.abs(out - sim).mean() < 0.25 * np.abs(sim - ref).mean(), name
  assert err["split"] < 0.6 * err["plain"], err
