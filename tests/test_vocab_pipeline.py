"""A trimmed-vocabulary student inside the pipeline (`--config.student.vocab=K`).

References: NumPy log-softmax over the teacher's full vocabulary, and the teacher's own logits
on the student's token stream read back through `distill.load`.
"""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import distill
from distill.run import settings
from distill import data, losses
from distill.run import pipeline
from distill.data import tokenizer as tokenizers
from distill.errors import ConfigError
from distill.run.validate import validate
from distill.methods.prune import vocab_teacher as trimmed
from distill.methods.prune import vocab as vocab_lib
from tests.test_prune import (CORPUS, OUTSIDE, _byte_level_bpe, _counts, _model, _text_corpus,
                               hf_llama_teacher)


def _log_softmax(z):
  z = np.float64(z)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def test_trimmed_teacher_targets_match_numpy(tmp_path):
  tok = _byte_level_bpe(str(tmp_path / "t"))
  tr = vocab_lib.trim(tok, _counts(tok, CORPUS), 290, str(tmp_path / "w"))
  lm, params = _model(vocab_size=tok.vocab_size)
  wrapped = trimmed.TrimmedTeacher(lm, tr)
  assert wrapped.cfg.vocab_size == tr.rows.size > tr.kept.size  # padded to a multiple of 8
  s_ids = np.asarray([tr.tokenizer.encode(CORPUS[:60])])
  out = np.asarray(wrapped.apply(params, s_ids))
  ref = _log_softmax(np.asarray(lm.apply(params, tr.kept[s_ids])))
  u = tr.kept.size
  np.testing.assert_allclose(out[..., :u], ref[..., tr.kept], rtol=1e-5, atol=1e-5)
  assert np.all(out[..., u:] == trimmed.PAD_LOGPROB)
  dropped = 1.0 - np.exp(ref[..., tr.kept]).sum(-1)
  assert dropped.min() > 1e-3  # the teacher does put mass on dropped ids here
  # Top-k of normalized log-probs: not renormalized, so the dropped mass stays in the tail.
  ids, lp = losses.topk_targets(jnp.asarray(out), 8, normalized=True)
  np.testing.assert_allclose(np.asarray(lp), np.take_along_axis(ref[..., tr.kept],
                                                                np.asarray(ids), -1), atol=1e-5)
  tail = 1.0 - np.exp(np.asarray(lp, np.float64)).sum(-1)
  assert np.all(tail >= dropped - 1e-5)
  # The teacher's CE of a student label is exactly -log p_teacher(token).
  labels = np.roll(s_ids, -1, 1)
  ce = float(losses.cross_entropy(jnp.asarray(out), labels, normalized=True))
  ref_ce = -np.take_along_axis(ref, tr.kept[labels][..., None], -1).mean()
  np.testing.assert_allclose(ce, ref_ce, rtol=1e-5)


def _hf_teacher(tmp_path):
  chat = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
  return f"hf:{hf_llama_teacher(tmp_path, tie=True, tokenizer_config={'chat_template': chat})}"


def _config(tmp_path, teacher, **over):
  from tests.helpers import shrunken_config  # pylint: disable=import-outside-toplevel
  kw = {"data.name": _text_corpus(str(tmp_path / "text")), "data.tokenizer": "",
        "data.data_dir": str(tmp_path / "data"), "teacher.checkpoint": teacher,
        "student.init": "prune", "student.prune.calib_batches": 2, "student.vocab": 280,
        "student.model.d_model": 16, "student.model.n_heads": 2, "student.model.n_kv_heads": 1,
        "distill.teacher_source": "cache", "distill.top_k": 8, "distill.tail": "tail_bucket",
        "distill.temperature": 1.0, "export.enabled": False, "eval.heldout": ""}
  kw.update(over)
  return shrunken_config(**kw)


# ~50 s: slow-marked to keep the default run near 15 minutes (tests/test_vocab_fit.py and the
# module's other tests check trimming without the whole pipeline).
@pytest.mark.slow
def test_pipeline_trims_the_student_vocabulary(tmp_path):
  teacher = _hf_teacher(tmp_path)
  # On-policy too: dataset steps read the cache, sampled steps run the teacher through the trim.
  c = _config(tmp_path, teacher, **{"distill.on_policy.fraction": 1.0,
                                    "distill.on_policy.prompt_len": 8})
  validate(c)
  rep = pipeline.run(c, str(tmp_path / "run"))
  rows = [json.loads(l) for l in open(tmp_path / "run" / "student" / "metrics.jsonl")]
  assert rows and all(r["on_policy"] == 1.0 and r["sample_len"] > 0 for r in rows), rows
  for name in ("teacher", "student"):  # each model sampled in its own vocabulary, teacher-scored
    assert 0.0 < rep[name]["sample_teacher_nll"] < 20.0
  student = distill.load(str(tmp_path / "run" / "student"))
  kept = rep["student"]["vocab"]["kept"]
  assert kept <= 280 and student.config.vocab_size == rep["student"]["vocab"]["rows"]
  assert student.config.vocab_size == -(-kept // 8) * 8 < rep["student"]["vocab"]["teacher_vocab"]
  for text in (CORPUS[:120], OUTSIDE):  # the saved tokenizer is the trimmed one and round-trips
    ids = student.tokenizer.encode(text)
    assert student.tokenizer.decode(ids) == text and max(ids) < kept
  assert student.tokenizer.chat_template  # carried over from the teacher
  # Teacher, student and baseline are scored on the student's token stream: the teacher's CE
  # there, recomputed from its own logits on the same tokens (teacher ids), matches the report.
  t = distill.load(teacher, dtype="float32")
  tok = tokenizers.load(str(tmp_path / "run" / "student" / "tokenizer"))
  t_tok = t.tokenizer
  tr = vocab_lib.trim(t_tok, vocab_lib.count_ids(*data.train_windows(
      settings.data_spec(c.data), t_tok, str(tmp_path / "run"), c.distill.transfer_fraction),
      t.config.vocab_size), 280, str(tmp_path / "again"), model_vocab=t.config.vocab_size)
  assert tr.tokenizer.encode(OUTSIDE) == tok.encode(OUTSIDE)  # deterministic trim
  batches = data.eval_batches(settings.data_spec(c.data), tok, str(tmp_path / "run"), split="validation",
                              max_batches=c.data.eval_batches, batch_size=c.data.batch_size,
                              process_index=0, process_count=1)
  total = n = 0.0
  for b in batches:
    lp = _log_softmax(np.asarray(t.logits(tr.kept[b["inputs"]])))
    picked = np.take_along_axis(lp, tr.kept[b["targets"]][..., None], -1)[..., 0]
    total += float(-(picked * b["mask"]).sum())
    n += float(b["mask"].sum())
  np.testing.assert_allclose(rep["teacher"]["val_ce"], total / n, rtol=2e-4)
  assert rep["student"]["val_ce"] < np.log(kept) + 1.0
  cache = json.load(open(tmp_path / "run" / "teacher_cache" / "meta.json"))
  assert cache["vocab_size"] == student.config.vocab_size
  # The pruned, trimmed stage exports: the fp32 .tflite (with the trimmed tokenizer) agrees
  # with the JAX student it came from.
  from distill.export import export_stage  # pylint: disable=import-outside-toplevel
  card = export_stage(str(tmp_path / "run" / "student"), "watch", str(tmp_path / "exp"),
                      quant="fp32", max_context=32, prefill_len=8, data_spec=settings.data_spec(c.data),
                      workdir=str(tmp_path / "run"), level="quick", log=lambda _: None)
  assert card["verification"]["passed"] and card["vocab_size"] == kept
  assert tokenizers.load(str(tmp_path / "exp")).encode(OUTSIDE) == tok.encode(OUTSIDE)


def test_trimmed_vocab_config_errors(tmp_path):
  c = _config(tmp_path, "", **{"distill.teacher_source": "online"})
  with pytest.raises(ConfigError, match="needs --config.distill.teacher_source='cache'"):
    validate(c)
  c = _config(tmp_path, "", **{"student.vocab": -1})
  with pytest.raises(ConfigError, match="student.vocab=-1 must be >= 0"):
    validate(c)


def test_k_below_the_required_tokens_is_one_line_before_any_training(tmp_path):
  teacher = _hf_teacher(tmp_path)
  c = _config(tmp_path, teacher, **{"student.vocab": 100})
  with pytest.raises(ConfigError, match="smaller than the 258 special and byte-fallback"):
    pipeline.run(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "student")


def test_norm_gains_match_numpy_and_are_one_when_nothing_is_dropped():
  from distill.methods.prune import core  # pylint: disable=import-outside-toplevel
  lm, params = _model(vocab_size=64)
  tokens = np.random.default_rng(0).integers(0, 64, (2, 12))
  imp = core.importance(lm, params, [{"inputs": tokens}])
  # Site 0 is block 0's attn-norm input: the embedding rows of the tokens.
  x = np.asarray(params["embed"], np.float64)[tokens].reshape(-1, lm.cfg.d_model)
  np.testing.assert_allclose(imp.norm_sq[0], (x * x).mean(0), rtol=1e-5)
  assert imp.norm_sq.shape == (2 * lm.cfg.n_layers + 1, lm.cfg.d_model)
  keep = np.arange(lm.cfg.d_model)
  assert np.all(core.norm_gains(imp.norm_sq, keep) == 1.0)
  kept = np.sort(np.argsort(-imp.channels)[:lm.cfg.d_model // 2])
  gains = core.norm_gains(imp.norm_sq, kept)
  np.testing.assert_allclose(gains, np.sqrt(imp.norm_sq[:, kept].mean(-1) /
                                            imp.norm_sq.mean(-1)), rtol=1e-6)
  target = core.target_config(lm.cfg, d_model=lm.cfg.d_model // 2)
  p = core.plan(imp, lm.cfg, target)
  plain = core.apply_plan(params, lm.cfg, target, p)
  scaled = core.apply_plan(params, lm.cfg, target, p, gains)
  np.testing.assert_allclose(scaled["block_1"]["mlp_norm"]["scale"],
                             plain["block_1"]["mlp_norm"]["scale"] * gains[3], rtol=1e-6)
  np.testing.assert_allclose(scaled["final_norm"]["scale"],
                             plain["final_norm"]["scale"] * gains[-1], rtol=1e-6)


def test_attention_maps_and_transfer_loss_match_numpy():
  from distill.models import ops  # pylint: disable=import-outside-toplevel
  lm, params = _model(vocab_size=64)  # 2 blocks, 4 query heads in 2 KV groups, head_dim 8
  tokens = np.random.default_rng(0).integers(0, 64, (2, 6))
  with ops.collect_attention() as maps:
    lm.hidden_states(params, jnp.asarray(tokens))
  assert len(maps) == lm.cfg.n_layers and maps[0].shape == (2, 6, 6)
  # Block 0 by hand: RoPE'd q, k from the normed embedding, causal softmax, mean over heads.
  blk = lm.module(params).block_0
  x = blk.attn_norm(jnp.take(params["embed"], jnp.asarray(tokens), axis=0))
  pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
  a = params["block_0"]["attn"]
  q = ops.rope(jnp.einsum("BTD,DNK->BTNK", x, a["q"]), pos, lm.cfg.rope_theta)
  k = ops.rope(jnp.einsum("BTD,DMK->BTMK", x, a["k"]), pos, lm.cfg.rope_theta)
  q, k = np.asarray(q, np.float64), np.repeat(np.asarray(k, np.float64), 2, axis=2)
  s = np.einsum("btnk,bsnk->bnts", q, k) / np.sqrt(8)
  s = np.where(np.tril(np.ones((6, 6), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p = (p / p.sum(-1, keepdims=True)).mean(1)
  np.testing.assert_allclose(np.asarray(maps[0]), p, rtol=1e-4, atol=1e-5)
  # KL(teacher || student) per query row, masked mean; causal zeros contribute nothing.
  rng = np.random.default_rng(1)
  other = rng.random((2, 6, 6)) * np.tril(np.ones((6, 6)))
  other /= other.sum(-1, keepdims=True)
  mask = np.asarray([[1, 1, 1, 1, 0, 0], [1] * 6], np.float32)
  got = float(losses.attention_map_loss(jnp.asarray(other), jnp.asarray(p), mask=mask))
  kl = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(np.where(other > 0, other, 1))),
                0).sum(-1)
  np.testing.assert_allclose(got, (kl * mask).sum() / mask.sum(), rtol=1e-5)
  assert got > 0.01 and float(losses.attention_map_loss(jnp.asarray(p), jnp.asarray(p))) < 1e-6


@pytest.mark.slow  # a training run: keeps the default suite in budget
def test_pipeline_step_with_attention_transfer(tmp_path):
  from tests.helpers import shrunken_config  # pylint: disable=import-outside-toplevel
  c = shrunken_config(**{"data.data_dir": str(tmp_path / "data"), "export.enabled": False,
                         "baseline.enabled": False, "student.init": "prune",
                         "student.prune.calib_batches": 1, "distill.hidden.layers": "auto",
                         "distill.hidden.attention_weight": 1.0})
  validate(c)
  pipeline.run(c, str(tmp_path / "run"))
  rows = [json.loads(l) for l in open(tmp_path / "run" / "student" / "metrics.jsonl")]
  assert rows and all(r["attention"] > 0 for r in rows)
  bad = shrunken_config(**{"distill.hidden.layers": "auto",
                           "distill.hidden.attention_weight": 1.0,
                           "distill.teacher_source": "cache", "distill.top_k": 4})
  with pytest.raises(ConfigError, match="attention maps"):
    validate(bad)
