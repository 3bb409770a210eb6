"""Pruning (width, depth), importance, vocabulary trimming, pruned stages (distill.prune)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distill
from distill.inference import stage
from distill.data import tokenizer as tokenizers
from distill.errors import ConfigError
from distill.models.transformer import LM
from distill.methods.prune import core
from distill.run import student_init as pipeline_init
from distill.methods.prune import vocab as vocab_lib
from tests.helpers import tiny_model_config

FEATURES = dict(qkv_bias=True, mlp_bias=True, out_bias=True, post_norms=True, qk_norm=True,
                tie_embeddings=False, mlp="geglu", norm="layer")


def _model(seed=0, **kw):
  cfg = tiny_model_config(**kw)
  lm = LM(cfg)
  params = lm.init(jax.random.key(seed))
  # Random norms and biases: init leaves them at 1/0, which would hide slicing mistakes.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [x + 0.1 * jax.random.normal(k, x.shape) if x.ndim == 1 else x
            for x, k in zip(leaves, keys)]
  return lm, jax.tree.unflatten(tree, leaves)


def _tokens(b=2, t=16, seed=3):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, 64)


@pytest.mark.parametrize("kw", [{}, FEATURES], ids=["llama", "features"])
def test_instrumented_forward_is_the_model(kw):
  lm, params = _model(**kw)
  toks = _tokens()
  logits, stats = core.instrumented_forward(lm, params, toks)
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(lm.apply(params, toks)))
  assert stats["heads"].shape == (2, 4) and stats["neurons"].shape == (2, 64)
  assert float(stats["count"]) == toks.size


@pytest.mark.parametrize("kw", [{}, FEATURES], ids=["llama", "features"])
def test_keeping_everything_reproduces_teacher_logits_exactly(kw):
  lm, params = _model(**kw)
  toks = _tokens()
  pruned, plan, _ = core.prune(lm, params, core.target_config(lm.cfg), [{"inputs": toks}])
  np.testing.assert_array_equal(np.asarray(LM(lm.cfg.replace(head_dim=lm.cfg.k)).apply(
      pruned, toks)), np.asarray(lm.apply(params, toks)))
  assert plan.layers.tolist() == [0, 1]


def test_plan_slices_like_a_numpy_reference():
  lm, params = _model(**FEATURES)
  t = lm.cfg
  target = core.target_config(t, n_layers=1, d_model=16, d_ff=24, n_heads=2)
  plan = core.Plan(layers=np.array([1]), channels=np.arange(0, 32, 2),
                   groups=np.array([[1]]), neurons=np.array([np.arange(40, 64)]))
  got = core.apply_plan(params, t, target, plan)
  p = jax.tree.map(np.asarray, params)
  c, heads, f = np.arange(0, 32, 2), np.array([2, 3]), np.arange(40, 64)  # group 1 = heads 2, 3
  b, nb = p["block_1"], got["block_0"]
  ref = {
      "embed": p["embed"][:, c], "unembed": p["unembed"][c],
      "q": b["attn"]["q"][c][:, heads], "k": b["attn"]["k"][c][:, [1]],
      "v": b["attn"]["v"][c][:, [1]], "o": b["attn"]["o"][heads][:, :, c],
      "q_bias": b["attn"]["q_bias"][heads], "k_bias": b["attn"]["k_bias"][[1]],
      "o_bias": b["attn"]["o_bias"][c], "q_norm": b["attn"]["q_norm"]["scale"],
      "gate": b["mlp"]["gate"][c][:, f], "up": b["mlp"]["up"][c][:, f],
      "down": b["mlp"]["down"][f][:, c], "up_bias": b["mlp"]["up_bias"][f],
      "down_bias": b["mlp"]["down_bias"][c], "attn_norm": b["attn_norm"]["scale"][c],
      "post_mlp_norm_bias": b["post_mlp_norm"]["bias"][c],
      "final_norm": p["final_norm"]["scale"][c],
  }
  new = {
      "embed": got["embed"], "unembed": got["unembed"], "q": nb["attn"]["q"],
      "k": nb["attn"]["k"], "v": nb["attn"]["v"], "o": nb["attn"]["o"],
      "q_bias": nb["attn"]["q_bias"], "k_bias": nb["attn"]["k_bias"],
      "o_bias": nb["attn"]["o_bias"], "q_norm": nb["attn"]["q_norm"]["scale"],
      "gate": nb["mlp"]["gate"], "up": nb["mlp"]["up"], "down": nb["mlp"]["down"],
      "up_bias": nb["mlp"]["up_bias"], "down_bias": nb["mlp"]["down_bias"],
      "attn_norm": nb["attn_norm"]["scale"], "post_mlp_norm_bias": nb["post_mlp_norm"]["bias"],
      "final_norm": got["final_norm"]["scale"],
  }
  for k in ref:
    np.testing.assert_array_equal(new[k], ref[k], err_msg=k)
  assert LM(target).apply(got, _tokens()).shape == (2, 16, 64)


def test_dropping_heads_and_neurons_equals_zeroing_them():
  # Independent of the slicing code: a dropped head (neuron) is one whose o rows (down rows)
  # are zero in the teacher.
  lm, params = _model()
  t = lm.cfg
  target = core.target_config(t, d_ff=40, n_heads=2)
  plan = core.Plan(layers=np.array([0, 1]), channels=np.arange(32),
                   groups=np.array([[0], [1]]), neurons=np.array([np.arange(40), np.arange(24, 64)]))
  pruned = core.apply_plan(params, t, target, plan)
  masked = jax.tree.map(np.array, params)
  masked["block_0"]["attn"]["o"][2:] = 0
  masked["block_1"]["attn"]["o"][:2] = 0
  masked["block_0"]["mlp"]["down"][40:] = 0
  masked["block_1"]["mlp"]["down"][:24] = 0
  toks = _tokens()
  np.testing.assert_allclose(np.asarray(LM(target).apply(pruned, toks)),
                             np.asarray(lm.apply(masked, toks)), rtol=1e-5, atol=1e-5)


def test_importance_ranks_dead_units_last_and_drops_them():
  lm, params = _model()
  p = jax.tree.map(np.array, params)
  p["block_0"]["mlp"]["up"][:, 5] = 0  # neuron 5 of block 0: h = up * silu(gate) = 0
  p["block_1"]["attn"]["v"][:, 0] = 0  # kv group 0 of block 1: heads 0 and 1 output 0
  p["embed"][:, 7] = 0  # channel 7 stays 0 in the residual stream
  for i in range(2):
    p[f"block_{i}"]["attn"]["o"][..., 7] = 0
    p[f"block_{i}"]["mlp"]["down"][:, 7] = 0
  toks = [{"inputs": _tokens(seed=s)} for s in range(2)]
  imp = core.importance(lm, p, toks)
  assert np.argmin(imp.neurons[0]) == 5 and imp.neurons[0, 5] == 0
  assert np.argmin(imp.groups(lm.cfg)[1]) == 0
  assert np.argmin(imp.channels) == 7 and imp.channels[7] == 0
  target = core.target_config(lm.cfg, d_model=31, d_ff=63, n_heads=2)
  plan = core.plan(imp, lm.cfg, target)
  assert 7 not in plan.channels and 5 not in plan.neurons[0] and plan.groups[1].tolist() == [1]
  # A block that adds nothing (o and down zero) has 1 - cos = 0 and is the one dropped.
  p["block_0"]["attn"]["o"][:] = 0
  p["block_0"]["mlp"]["down"][:] = 0
  imp = core.importance(lm, p, toks)
  assert imp.blocks[0] == pytest.approx(0.0, abs=1e-6) and imp.blocks[1] > 1e-3
  assert core.plan(imp, lm.cfg, core.target_config(lm.cfg, n_layers=1)).layers.tolist() == [1]


def test_random_plan_is_seeded_and_differs_from_ranking():
  lm, _ = _model()
  target = core.target_config(lm.cfg, d_ff=32)
  a = core.plan(None, lm.cfg, target, method="random", seed=1)
  b = core.plan(None, lm.cfg, target, method="random", seed=1)
  np.testing.assert_array_equal(a.neurons, b.neurons)
  assert a.neurons.shape == (2, 32)


@pytest.mark.parametrize("kw, msg", [
    (dict(n_heads=8), "heads=8 is larger than the teacher's 4"),
    (dict(n_heads=3), "not a multiple of the teacher's KV group size 2"),
    (dict(d_ff=65), "d_ff=65 is larger than the teacher's 64"),
    (dict(n_layers=3), "depth=3 is larger"),
    (dict(d_model=0), "d_model=0 must be >= 1"),
])
def test_impossible_targets_are_one_line_errors(kw, msg):
  with pytest.raises(ConfigError, match=msg):
    core.target_config(tiny_model_config(), **kw)


# ------------------------------------------------------------------------- vocabulary trimming

CORPUS = ("The for statement iterates over the items of any sequence, in the order that they "
          "appear. Handlers for exceptions are written with try and except; classes define "
          "methods and attributes. A function definition is an executable statement. ") * 3
OUTSIDE = "Ünïcödé 日本語 ✓ 🎉 tabs\tand\nnewlines ~`|{}"


def _byte_level_bpe(directory, vocab_size=400):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([CORPUS] * 4, trainer)
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  return tokenizers.HFTokenizer(os.path.join(directory, "tokenizer.json"),
                                eos_token="<|endoftext|>", pad_token="<pad>")


def _counts(tok, text):
  return np.bincount(tok.encode(text), minlength=tok.vocab_size)


def test_vocab_trim_round_trips_corpus_and_unseen_text(tmp_path):
  tok = _byte_level_bpe(str(tmp_path / "t"))
  required = vocab_lib.required_ids(tok).size
  assert required == 258  # 256 byte-level characters + 2 specials
  k = required + 40
  tr = vocab_lib.trim(tok, _counts(tok, CORPUS), k, str(tmp_path / "w"))
  new = tr.tokenizer
  assert tr.kept.size <= k and new.vocab_size == tr.kept.size
  assert new.eos_id == tr.teacher_to_student()[tok.eos_id]
  for text in (CORPUS, OUTSIDE, CORPUS[:50] + OUTSIDE):
    ids = new.encode(text)
    assert new.decode(ids) == text
    assert max(ids) < tr.kept.size
    # The student's ids are the kept teacher tokens: the teacher decodes them to the same text.
    assert tok.decode(np.asarray(tr.teacher_ids(np.asarray(ids))).tolist()) == text
  # The most frequent multi-byte tokens survive, so the corpus still compresses.
  assert len(new.encode(CORPUS)) < len(CORPUS.encode()) * 0.8
  assert len(tok.encode(CORPUS)) <= len(new.encode(CORPUS))
  # And the trimmed tokenizer reloads from its saved descriptor.
  new.save(str(tmp_path / "saved"))
  again = tokenizers.load(str(tmp_path / "saved"))
  assert again.encode(OUTSIDE) == new.encode(OUTSIDE) and again.eos_id == new.eos_id


def test_vocab_k_below_required_and_byte_tokenizer(tmp_path):
  tok = _byte_level_bpe(str(tmp_path / "t"))
  with pytest.raises(ConfigError, match="smaller than the 258 special and byte-fallback"):
    vocab_lib.check_k(tok, 100)
  byte = tokenizers.ByteTokenizer()
  with pytest.raises(ConfigError, match="--vocab=10 is smaller than the 259"):
    vocab_lib.check_k(byte, 10)
  tr = vocab_lib.trim(byte, np.ones(264, np.int64), 259, str(tmp_path), model_vocab=264)
  assert tr.kept.size == 259 and tr.rows.size == 264 and tr.tokenizer is byte


def test_vocab_trim_params_and_targets_match_numpy(tmp_path):
  tok = _byte_level_bpe(str(tmp_path / "t"))
  tr = vocab_lib.trim(tok, _counts(tok, CORPUS), 300, str(tmp_path / "w"))
  lm, params = _model(vocab_size=tok.vocab_size, tie_embeddings=False)
  new, cfg = vocab_lib.trim_params(params, lm.cfg, tr)
  assert cfg.vocab_size == tr.rows.size and cfg.vocab_size % 8 == 0
  np.testing.assert_array_equal(new["embed"], np.asarray(params["embed"])[tr.rows])
  np.testing.assert_array_equal(new["unembed"], np.asarray(params["unembed"])[:, tr.rows])
  # Same embedding rows: student logits on its ids are the teacher's logits on those tokens.
  s_ids = np.asarray(tr.tokenizer.encode(CORPUS[:40]))[None]
  t_logits = np.asarray(lm.apply(params, np.asarray(tr.teacher_ids(s_ids))))
  s_logits = np.asarray(LM(cfg).apply(new, s_ids))
  np.testing.assert_allclose(s_logits, t_logits[..., tr.rows], rtol=1e-5, atol=1e-5)
  # Targets: teacher log-probs on the kept ids; dropped mass is the sparse-target tail.
  ids, lp = vocab_lib.student_targets(jnp.asarray(t_logits), tr.kept)
  ref = t_logits - np.log(np.exp(t_logits - t_logits.max(-1, keepdims=True)).sum(-1, keepdims=True)
                          ) - t_logits.max(-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(lp), ref[..., tr.kept], rtol=1e-5, atol=1e-5)
  # The trimmed-vocab objective against NumPy forward KL (T = 1, no CE).
  from distill.train import objectives  # pylint: disable=import-outside-toplevel
  batch = {"inputs": s_ids, "targets": np.roll(s_ids, -1, 1), "mask": np.ones(s_ids.shape)}
  u = tr.kept.size
  # A student that is not the teacher's exact slice, so the divergence is not ~0.
  noise = np.random.default_rng(0).normal(size=new["unembed"].shape).astype(np.float32)
  new = dict(new, unembed=new["unembed"] + 0.5 * noise)
  s_logits = np.asarray(LM(cfg).apply(new, s_ids))

  def softmax(z):
    e = np.exp(np.float64(z) - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  for tail in ("renormalize", "tail_bucket"):
    cfg_l = objectives.LossConfig(temperature=1.0, scale_by_t2=False, tail=tail)
    loss, _ = vocab_lib.distill_loss(new, batch, params, 0, student=LM(cfg), teacher=lm,
                                     cfg=cfg_l, kept=tr.kept)
    if tail == "renormalize":
      p, q = softmax(t_logits[..., tr.kept]), softmax(s_logits[..., :u])
    else:  # kept ids + one bucket: the teacher's dropped mass, the student's padding rows
      pt, qs = softmax(t_logits)[..., tr.kept], softmax(s_logits)
      p = np.concatenate([pt, 1 - pt.sum(-1, keepdims=True)], -1)
      q = np.concatenate([qs[..., :u], qs[..., u:].sum(-1, keepdims=True)], -1)
    ref = (p * np.log(p / q)).sum(-1).mean()
    assert ref > 0.01
    np.testing.assert_allclose(float(loss), ref, rtol=1e-4)


# ------------------------------------------------------------------------------ pruned stages


def _text_corpus(directory):
  os.makedirs(directory, exist_ok=True)
  for i in range(6):
    with open(os.path.join(directory, f"doc{i}.txt"), "w") as f:
      f.write(CORPUS * 4 + f" document {i}\n")
  return f"text:{directory}/*.txt"


def _data_cfg(name, tokenizer="byte"):
  from tests.helpers import data_spec  # pylint: disable=import-outside-toplevel
  return data_spec(name, tokenizer=tokenizer, seq_len=16)


def test_pruned_stage_loads_and_keeps_logits(tmp_path):
  lm, params = _model(vocab_size=264)
  teacher_dir = str(tmp_path / "teacher")
  stage.save_stage(teacher_dir, lm.cfg, tokenizers.ByteTokenizer(), params, {})
  data_cfg = _data_cfg(_text_corpus(str(tmp_path / "text")))
  keep_all = pipeline_init.prune_to_stage(
      teacher_dir, str(tmp_path / "same"), core.target_config(lm.cfg), data_spec=data_cfg, batch_size=4,
      fraction=1.0, workdir=str(tmp_path / "w"), calib_batches=2)
  assert keep_all["params"] == keep_all["teacher_params"]
  toks = np.asarray(_tokens(t=8)) + 3
  np.testing.assert_array_equal(distill.load(str(tmp_path / "same")).logits(toks),
                                distill.load(teacher_dir).logits(toks))
  target = core.target_config(lm.cfg, n_layers=1, d_model=16, d_ff=32, n_heads=2)
  info = pipeline_init.prune_to_stage(
      teacher_dir, str(tmp_path / "small"), target, data_spec=data_cfg, batch_size=4, fraction=1.0,
      workdir=str(tmp_path / "w"), calib_batches=2, vocab=259)
  m = distill.load(str(tmp_path / "small"))
  assert m.config.n_layers == 1 and m.config.d_model == 16 and m.config.head_dim == 8
  assert m.logits(toks).shape == (2, 8, 264) and info["calibration_tokens"] == 2 * 4 * 16
  assert json.load(open(tmp_path / "small" / "stage.json"))["plan"]["layers"] in ([0], [1])


def hf_llama_teacher(tmp_path, *, tie: bool, tokenizer_config: dict | None = None,
                     vocab_size: int | None = None):
  """A 2-layer transformers Llama with a byte-level BPE tokenizer (320 tokens), saved as an HF
  directory; its embedding has `vocab_size` rows (default: the tokenizer's)."""
  transformers = pytest.importorskip("transformers")
  torch = pytest.importorskip("torch")
  hf_dir = tmp_path / "hf"
  tok = _byte_level_bpe(str(hf_dir), vocab_size=320)
  cfg = transformers.LlamaConfig(vocab_size=vocab_size or tok.vocab_size, hidden_size=32,
                                 intermediate_size=48,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
                                 tie_word_embeddings=tie, eos_token_id=tok.eos_id)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(cfg).save_pretrained(str(hf_dir), safe_serialization=True)
  with open(hf_dir / "tokenizer_config.json", "w") as f:
    json.dump({"eos_token": "<|endoftext|>", "pad_token": "<pad>", **(tokenizer_config or {})}, f)
  return hf_dir


def test_hf_llama_teacher_prunes_with_trimmed_vocab(tmp_path):
  hf_dir = hf_llama_teacher(tmp_path, tie=False)
  data_cfg = _data_cfg(_text_corpus(str(tmp_path / "text")))
  teacher = distill.load(f"hf:{hf_dir}")
  target = core.target_config(teacher.config, n_layers=1, d_model=16, d_ff=24, n_heads=2)
  out = str(tmp_path / "pruned")
  info = pipeline_init.prune_to_stage(f"hf:{hf_dir}", out, target, data_spec=data_cfg, batch_size=4,
                                      fraction=1.0, workdir=str(tmp_path / "w"), calib_batches=2,
                                      vocab=280)
  m = distill.load(out)
  assert info["vocab"]["kept"] <= 280 and m.config.vocab_size == -(-info["vocab"]["kept"] // 8) * 8
  for text in (CORPUS[:80], OUTSIDE):
    assert m.tokenizer.decode(m.tokenizer.encode(text)) == text
  assert m.logits(np.asarray([m.tokenizer.encode(CORPUS[:30])])).shape[-1] == m.config.vocab_size
  assert isinstance(m.generate("The for", max_new_tokens=3), str)


# --------------------------------------------------------------------- feature losses in the step


def test_hidden_state_objective_matches_numpy():
  from distill.methods import features  # pylint: disable=import-outside-toplevel
  from distill.train import objectives  # pylint: disable=import-outside-toplevel
  t_lm, t_params = _model(seed=0, n_layers=3)
  s_lm, s_params = _model(seed=5, d_model=16, n_heads=2, n_kv_heads=1, d_ff=32, head_dim=16)
  pairs = features.pairs("0:1,1:2", 2, 3)
  assert pairs == ((0, 1), (1, 2)) and features.pairs("auto", 2, 3) == ((0, 1), (1, 2))
  assert features.pairs("auto", 2, 3, source_layers=[0, 2]) == ((0, 0), (1, 2))
  with pytest.raises(ConfigError, match="outside the student's 2"):
    features.pairs("2:0", 2, 3)
  rng = np.random.default_rng(0)
  projs = {f"proj_{n}": np.float32(rng.normal(size=(16, 32))) for n in range(2)}
  toks = np.asarray(_tokens())
  mask = np.float32(rng.uniform(size=toks.shape) > 0.2)
  batch = {"inputs": toks, "targets": np.roll(toks, -1, 1), "mask": mask}
  for kind in ("mse", "cosine"):
    cfg = objectives.LossConfig(hidden_pairs=pairs, hidden_weight=0.5, hidden_kind=kind)
    loss, metrics = objectives.distill_loss(dict(s_params, features=projs), batch, t_params, 0,
                                       student=s_lm, teacher=t_lm, cfg=cfg)
    base, _ = objectives.distill_loss(s_params, batch, t_params, 0, student=s_lm, teacher=t_lm,
                                 cfg=objectives.LossConfig())
    _, s_states = s_lm.hidden_states(s_params, toks)
    _, t_states = t_lm.hidden_states(t_params, toks)
    ref = []
    for n, (i, j) in enumerate(pairs):
      proj = np.float64(s_states[i]) @ np.float64(projs[f"proj_{n}"])
      t = np.float64(t_states[j])
      if kind == "mse":
        per = ((proj - t) ** 2).mean(-1)
      else:
        per = 1 - (proj * t).sum(-1) / (np.linalg.norm(proj, axis=-1) * np.linalg.norm(t, axis=-1))
      ref.append((per * mask).sum() / mask.sum())
    np.testing.assert_allclose(float(metrics["hidden"]), np.mean(ref), rtol=1e-4)
    np.testing.assert_allclose(float(loss), float(base) + 0.5 * np.mean(ref), rtol=1e-4)
  # The last state is the stream the final norm reads: hidden_states agrees with hidden.
  h, states = t_lm.hidden_states(t_params, toks)
  np.testing.assert_array_equal(np.asarray(h), np.asarray(t_lm.hidden(t_params, toks)))
  assert len(states) == 3


def test_pruned_projection_starts_as_channel_selection():
  from distill.methods import features  # pylint: disable=import-outside-toplevel
  p = features.projection(3, 5, channels=[0, 2, 4])
  x = np.float32([[1.0, 2.0, 3.0]])
  np.testing.assert_array_equal(x @ p, [[1.0, 0.0, 2.0, 0.0, 3.0]])


@pytest.mark.slow
def test_pipeline_prune_init_with_feature_loss(tmp_path):
  from distill.run import pipeline  # pylint: disable=import-outside-toplevel
  from tests.helpers import shrunken_config  # pylint: disable=import-outside-toplevel
  over = {"data.data_dir": str(tmp_path / "data"), "export.enabled": False,
          "student.init": "prune", "student.prune.calib_batches": 2}
  c = shrunken_config(**over, **{"distill.steps": 0})
  rep = pipeline.run(c, str(tmp_path / "zero"))
  # Zero steps: student and baseline are the pruned init itself, the same one.
  assert rep["student"]["val_ce"] == pytest.approx(rep["baseline"]["val_ce"], rel=1e-6)
  c = shrunken_config(**over, **{"distill.hidden.layers": "auto", "distill.hidden.weight": 1.0})
  pipeline.run(c, str(tmp_path / "run"))
  rows = [json.loads(l) for l in open(tmp_path / "run" / "student" / "metrics.jsonl")]
  assert all("hidden" in r for r in rows)
  m = distill.load(str(tmp_path / "run" / "student"))  # no projections in the saved stage
  assert m.config.head_dim == 8 and m.logits(np.ones((1, 4), np.int32)).shape[-1] == 264


def test_config_validation_for_prune_init():
  from distill.run.validate import validate  # pylint: disable=import-outside-toplevel
  from tests.helpers import shrunken_config  # pylint: disable=import-outside-toplevel
  c = shrunken_config(**{"student.init": "prune"})
  c.student.model.d_model = 15  # fine: the pruned student keeps the teacher's head_dim
  validate(c)
  for field, value, msg in [("student.model.d_ff", 65, "d_ff=65 is larger than the teacher's 64"),
                            ("student.prune.method", "magnitude", "must be 'activation'"),
                            ("student.prune.calib_batches", 0, "must be >= 1"),
                            ("distill.hidden.kind", "l1", "must be 'mse' or 'cosine'")]:
    bad = shrunken_config(**{"student.init": "prune", field: value})
    with pytest.raises(ConfigError, match=msg):
      validate(bad)
