"""Evaluation with one teacher pass: `evaluate_all` against a NumPy reference, the on-disk
teacher targets, the held-out text, and the pipeline's offline-cache path end to end."""
import json
import os

import jax
import numpy as np
from scipy import special

from distill import data
from distill.eval import metrics as evaluate
from distill.run import pipeline
from distill.models import sharding
from distill.data import tokenizer as tokenizers
from distill.models.transformer import LM
from tests.helpers import shrunken_config, tiny_model_config


def _models():
  teacher = LM(tiny_model_config(d_model=32))
  student = LM(tiny_model_config(d_model=16, n_layers=1))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, size=(3, 8, 17)).astype(np.int32)
  mask = (rng.random((3, 8, 16)) > 0.2).astype(np.float32)
  batches = [{"inputs": t[:, :-1], "targets": t[:, 1:], "mask": m} for t, m in zip(tokens, mask)]
  return (teacher, teacher.init(jax.random.key(1)), student, student.init(jax.random.key(2)),
          batches)


def _reference(logits, t_logits, batches):
  """float64 NumPy: CE, KL(teacher || model) and top-1 agreement per masked token."""
  ce = kl = agree = n = 0.0
  for lg, tl, b in zip(logits, t_logits, batches):
    lq = special.log_softmax(lg.astype(np.float64), -1)
    lp = special.log_softmax(tl.astype(np.float64), -1)
    m = b["mask"]
    ce += -(np.take_along_axis(lq, b["targets"][..., None], -1)[..., 0] * m).sum()
    kl += ((np.exp(lp) * (lp - lq)).sum(-1) * m).sum()
    agree += ((lg.argmax(-1) == tl.argmax(-1)) * m).sum()
    n += m.sum()
  return ce / n, kl / n, agree / n


def test_evaluate_all_matches_numpy_and_caches_teacher_targets(tmp_path):
  teacher, tp, student, sp, batches = _models()
  mesh = sharding.make_mesh(sharding.MeshSpec(data=-1, fsdp=1, tensor=1))
  cache = str(tmp_path / "teacher_eval" / "validation-p0.npz")
  out = evaluate.evaluate_all({"student": (student, sp)}, teacher, tp, batches, mesh,
                              n_bytes=1000, cache_file=cache, key="k1")
  s_logits = [np.asarray(student.apply(sp, b["inputs"])) for b in batches]
  t_logits = [np.asarray(teacher.apply(tp, b["inputs"])) for b in batches]
  ce, kl, agree = _reference(s_logits, t_logits, batches)
  # vocab 64 <= EXACT_VOCAB: the stored targets are the teacher's whole distribution.
  np.testing.assert_allclose(out["student"]["val_ce"], ce, rtol=1e-5)
  np.testing.assert_allclose(out["student"]["kl_to_teacher"], kl, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out["student"]["top1_agreement"], agree, rtol=1e-6)
  t_ce, _, _ = _reference(t_logits, t_logits, batches)
  np.testing.assert_allclose(out["teacher"]["val_ce"], t_ce, rtol=1e-5)
  np.testing.assert_allclose(out["student"]["bits_per_byte"],
                             ce * out["student"]["tokens"] / np.log(2) / 1000, rtol=1e-5)
  # Second evaluation: the teacher is never run (its params are not even given).
  again = evaluate.evaluate_all({"student": (student, sp)}, teacher, None, batches, mesh,
                                n_bytes=1000, cache_file=cache, key="k1")
  assert again == out
  # A different key (another teacher/tokenizer/shape) recomputes instead of reusing.
  other = LM(tiny_model_config(d_model=32, n_layers=1))
  changed = evaluate.evaluate_all({"student": (student, sp)}, other,
                                  other.init(jax.random.key(5)), batches, mesh, n_bytes=1000,
                                  cache_file=cache, key="k2")
  assert changed["teacher"]["val_ce"] != out["teacher"]["val_ce"]


def test_heldout_text_batches_hold_the_encoded_docs():
  tok = tokenizers.ByteTokenizer()
  texts = data.heldout_texts("docs")
  assert len(texts) == 1 and "distill" in texts[0]
  batches = data.text_eval_batches(texts, tok, seq_len=64, batch_size=4)
  want = np.asarray(tok.encode(texts[0]) + [tok.eos_id], np.int32)
  got = np.concatenate([np.concatenate([b["inputs"][r, :1], b["targets"][r]])[
      : int(b["mask"][r].sum()) + 1] for b in batches for r in range(4) if b["mask"][r].any()])
  np.testing.assert_array_equal(got, want[:got.size])
  assert got.size == want.size


def test_pipeline_with_offline_cache_and_heldout(tmp_path, small_run):
  # The session's shared run's teacher (tests/conftest.py): the cache and the held-out
  # evaluation are under test here, not teacher pretraining (which that run covers).
  c = shrunken_config(**{"distill.teacher_source": "cache", "distill.top_k": 8,
                         "distill.tail": "tail_bucket", "export.enabled": False,
                         "data.data_dir": small_run.data_dir,
                         "teacher.checkpoint": small_run.teacher, "eval.sample_prompts": 0})
  rep = pipeline.run(c, str(tmp_path / "w"))
  with open(tmp_path / "w" / "teacher_cache" / "meta.json") as f:
    assert json.load(f)["top_k"] == 8
  for m in ("teacher", "student", "baseline"):
    assert rep[m]["heldout"]["tokens"] > 0
    assert np.isfinite(rep[m]["heldout"]["val_ce"])
  assert rep["teacher"]["heldout"]["top1_agreement"] == 1.0
  assert "heldout_gap_closed" in rep
  assert os.path.exists(tmp_path / "w" / "teacher_eval" / "heldout-p0.npz")
  assert "teacher_cache" in rep["wall_seconds"]


def test_target_bytes_counts_the_utf8_bytes_of_masked_targets():
  """The bits/byte denominator: UTF-8 bytes of exactly the masked-in target tokens."""
  tok = tokenizers.ByteTokenizer()
  text = "héllo wörld, ∑ bytes"  # 1-, 2- and 3-byte characters
  ids = np.asarray(tok.encode(text), np.int32)
  targets = np.stack([ids, ids])
  mask = np.ones_like(targets, np.float32)
  mask[1, :7] = 0  # drop "héllo " (7 bytes: é is two) from the second row
  n = evaluate.target_bytes([{"targets": targets, "mask": mask}], tok)
  assert n == 2 * len(text.encode("utf-8")) - 7
  # Byte tokenizer: one token per byte, so bits/byte is CE / ln 2 per token.
  assert n == int(mask.sum())


def test_gap_closed_formula_and_no_better_teacher():
  assert evaluate.gap_closed(1.0, 1.5, 2.0) == 0.5
  assert evaluate.gap_closed(1.0, 2.0, 2.0) == 0.0
  assert np.isnan(evaluate.gap_closed(2.0, 1.0, 2.0))
