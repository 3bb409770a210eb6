"""Tokenizers that list more tokens than the embedding has rows, and trimming a Gemma-style
vocabulary (thousands of reserved specials) to K = 512.

References: transformers' own reading of a GGUF that lists only the tokens its embedding has
(transformers reads the longer list as is and gives ids past the embedding, which the tests show
too; llama.cpp's vocabulary is the embedding's), a BPE trained to the smaller size on the same
corpus (BPE training is greedy: the smaller vocabulary is the prefix of the larger), and for
the trim, the specials named by hand and the text itself (`decode(encode(text)) == text`).
"""
import json
import os

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
spm = pytest.importorskip("sentencepiece")

import distill  # noqa: E402
from distill.data import tokenizer as tokenizers  # noqa: E402
from distill.data import chat as chat_lib  # noqa: E402
from distill.errors import ConfigError, LoadError  # noqa: E402
from distill.methods.prune import vocab as vocab_lib  # noqa: E402
from distill.models import gguf as dgguf  # noqa: E402
from tests import test_gguf  # noqa: E402
from tests.test_prune import CORPUS, OUTSIDE, _byte_level_bpe, hf_llama_teacher  # noqa: E402

# Runs of spaces spelled with real spaces past the embedding, as Gemma-family GGUFs list them
# (262,174 tokens for 262,144 rows): respelled "▁▁"..., they shadow the in-vocabulary ones.
EXTRA = [" " * n for n in range(2, 10)]
CODE = "def f(x):\n    if x:\n        return  1\n    return x  +  2\n"


@pytest.fixture(scope="module")
def gemma_files(tmp_path_factory):
  """(A, B, rows): a tiny gemma3 GGUF whose tokenizer lists len(EXTRA) tokens past its
  embedding's rows, and the same file listing only the first `rows` tokens."""
  d = tmp_path_factory.mktemp("gemma_gguf")
  (d / "corpus.txt").write_text(test_gguf._pydoc_text(40))
  spm.SentencePieceTrainer.train(
      input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=700, model_type="bpe",
      byte_fallback=True, character_coverage=1.0, minloglevel=2, add_dummy_prefix=False,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      split_by_whitespace=False, allow_whitespace_only_pieces=True)
  sp = spm.SentencePieceProcessor(model_file=str(d / "sp.model"))
  pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  assert {"\u2581" * 2, "\u2581" * 4} <= set(pieces)  # the runs ordinary code uses
  types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 1
           for i in range(len(pieces))]

  def add(w, vocab):
    tokens, kinds = vocab
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * len(tokens))
    w.add_token_types(kinds)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_pad_token_id(sp.unk_id())

  model = test_gguf._tiny("gemma3", len(pieces))  # pylint: disable=protected-access
  a, b = str(d / "extra.gguf"), str(d / "fits.gguf")
  test_gguf._write_model(model, "gemma3", a, (pieces + EXTRA, types + [1] * len(EXTRA)),  # pylint: disable=protected-access
                         add_tokenizer=add)
  test_gguf._write_model(model, "gemma3", b, (pieces, types), add_tokenizer=add)  # pylint: disable=protected-access
  # A metadata vocab_size that counts the token list, not the embedding: the rows still decide.
  c = str(d / "key_counts_tokens.gguf")
  w = gguf.GGUFWriter(c, "llama")
  test_gguf._meta_llama(w, vocab=len(pieces) + len(EXTRA))  # pylint: disable=protected-access
  add(w, (pieces + EXTRA, types + [1] * len(EXTRA)))
  w.add_tensor("token_embd.weight", np.zeros((len(pieces), 32), np.float32))
  test_gguf._close(w)  # pylint: disable=protected-access
  return a, b, len(pieces), c


def _transformers_tok(path):
  return transformers.AutoTokenizer.from_pretrained(os.path.dirname(path),
                                                    gguf_file=os.path.basename(path))


def _texts():
  return test_gguf._texts()[:30] + [CODE, "    return  1", "a" + " " * 9 + "b"]  # pylint: disable=protected-access


def test_gguf_tokenizer_drops_the_tokens_its_embedding_lacks(gemma_files):
  a, b, rows, c = gemma_files
  ours, fits, longer = dgguf.load_tokenizer(a), _transformers_tok(b), _transformers_tok(a)
  assert ours.vocab_size == rows and ours.dropped_tokens == len(EXTRA)
  # transformers reads the longer list as is: ordinary code gets ids the model cannot embed.
  assert max(longer(CODE, add_special_tokens=False).input_ids) >= rows
  for text in _texts():
    ids = ours.encode(text)
    assert ids == fits(text, add_special_tokens=False).input_ids, text
    assert max(ids) < rows
  assert ours.decode(ours.encode(CODE)) == CODE
  assert dgguf.Checkpoint(c).config["vocab_size"] == rows
  keyed = dgguf.load_tokenizer(c)
  assert keyed.vocab_size == rows and max(keyed.encode(CODE + "  x   y")) < rows
  # The model: embedding rows decide its vocabulary; finite logits, the same as the fitting file.
  m, ref = distill.load("gguf:" + a, dtype="float32"), distill.load("gguf:" + b, dtype="float32")
  assert m.config.vocab_size == rows and m.tokenizer.vocab_size == rows
  ids = np.asarray([m.tokenizer.encode(CODE)[:24]])
  got = m.logits(ids)
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(got, ref.logits(ids))


def _gguf_run_config(path, tmp_path):
  from tests.helpers import shrunken_config  # pylint: disable=import-outside-toplevel
  text = tmp_path / "text"
  text.mkdir()
  for i in range(4):  # indented code: the runs of spaces the extra tokens would have taken
    (text / f"doc{i}.txt").write_text((CODE + CORPUS) * 3 + f" doc {i}\n")
  return shrunken_config(**{
      "teacher.checkpoint": "gguf:" + path, "data.name": f"text:{text}/*.txt",
      "data.tokenizer": "", "data.data_dir": str(tmp_path / "data"),
      "distill.teacher_source": "cache", "distill.top_k": 8, "distill.steps": 3,
      "distill.transfer_fraction": 0.25, "baseline.enabled": False, "export.enabled": False,
      "data.eval_batches": 1, "eval.heldout": "", "eval.prompts": (), "eval.sample_prompts": 0})


def test_teacher_cache_on_that_gguf_is_finite(gemma_files, tmp_path):
  from distill import data  # pylint: disable=import-outside-toplevel
  from distill.methods import teacher_cache  # pylint: disable=import-outside-toplevel
  from distill.run import pipeline  # pylint: disable=import-outside-toplevel
  a, _, rows, _ = gemma_files
  ctx = pipeline.Context(_gguf_run_config(a, tmp_path), str(tmp_path / "w"))
  t_lm, t_params, _, _ = pipeline.load_or_train_teacher(ctx)
  assert t_lm.cfg.vocab_size == rows and ctx.tokenizer.vocab_size == rows
  data.prepare(ctx.data, ctx.workdir, tokenizer=ctx.tokenizer)
  ts = ctx.transfer_set()
  windows, read = data.train_windows(ts.data, ts.tokenizer, ts.workdir, ts.fraction)
  inputs = read(list(windows))["inputs"]
  assert inputs.max() < rows
  # The data do use what the extra tokens covered: runs of spaces, now in-vocabulary tokens.
  assert set(ctx.tokenizer.encode("    ")) <= set(np.unique(inputs).tolist())
  out = str(tmp_path / "cache")
  teacher_cache.write(t_lm, t_params, out, 8, ts, ctx.mesh, batch_size=4, show_progress=False)
  ids, lp = np.load(os.path.join(out, "ids.npy")), np.load(os.path.join(out, "logprobs.npy"))
  assert ids.max() < rows and np.all(np.isfinite(lp)) and np.all(lp <= 0)


@pytest.mark.slow  # about a minute here: a gemma3 teacher's cache, 3 steps, evaluation
def test_pipeline_on_that_gguf_is_finite(gemma_files, tmp_path):
  from distill.run import pipeline  # pylint: disable=import-outside-toplevel
  a, _, rows, _ = gemma_files
  workdir = tmp_path / "run"
  rep = pipeline.run(_gguf_run_config(a, tmp_path), str(workdir))
  cache = workdir / "teacher_cache"
  ids, lp = np.load(cache / "ids.npy"), np.load(cache / "logprobs.npy")
  assert ids.max() < rows and np.all(np.isfinite(lp))
  assert json.load(open(cache / "meta.json"))["vocab_size"] == rows
  assert np.isfinite(rep["student"]["val_ce"]) and np.isfinite(rep["teacher"]["val_ce"])
  rows_seen = [json.loads(l) for l in open(workdir / "student" / "metrics.jsonl")]
  assert rows_seen and all(np.isfinite(r["loss"]) for r in rows_seen)
  student = distill.load(str(workdir / "student"))
  assert student.tokenizer.vocab_size == rows
  assert max(student.tokenizer.encode(CODE)) < rows


def _hf_dir(tmp_path, vocab_size):
  """A tiny transformers Llama whose embedding has `vocab_size` rows, its tokenizer 320."""
  d = hf_llama_teacher(tmp_path, tie=True, vocab_size=vocab_size)
  return d, tokenizers.load(str(d / "tokenizer.json"))


def test_hf_checkpoint_tokenizer_is_cut_to_its_embedding(tmp_path):
  rows = 312
  d, full = _hf_dir(tmp_path, rows)
  smaller = _byte_level_bpe(str(tmp_path / "small"), vocab_size=rows)  # the reference
  m = distill.load(f"hf:{d}", dtype="float32")
  assert m.tokenizer.vocab_size == rows and m.tokenizer.dropped_tokens == 320 - rows
  assert max(full.encode(CORPUS)) >= rows  # the uncut tokenizer does use the missing ids
  for text in (CORPUS, OUTSIDE, CODE):
    ids = m.tokenizer.encode(text)
    assert ids == smaller.encode(text) and max(ids) < rows
    assert m.tokenizer.decode(ids) == text
  assert m.tokenizer.eos_id == full.eos_id and m.tokenizer.pad_id == full.pad_id
  assert np.all(np.isfinite(m.logits(np.asarray([m.tokenizer.encode(CORPUS)[:32]]))))


def test_ids_past_the_model_are_one_clear_error(tmp_path):
  _, full = _hf_dir(tmp_path, 312)
  with pytest.raises(ConfigError, match="the tokenizer has 320 tokens but the teacher embeds "
                                        "only 312"):
    tokenizers.check_fits(full, 312, "the teacher")
  tokenizers.check_fits(full, 320, "the teacher")  # equal: fits
  sp_dir = tmp_path / "sp"
  sp_dir.mkdir()
  (sp_dir / "c.txt").write_text(CORPUS)
  spm.SentencePieceTrainer.train(input=str(sp_dir / "c.txt"), model_prefix=str(sp_dir / "sp"),
                                 vocab_size=120, model_type="bpe", minloglevel=2)
  sp = tokenizers.SentencePieceTokenizer(str(sp_dir / "sp.model"))
  with pytest.raises(LoadError, match="SentencePieceTokenizer lists 120 tokens but the model "
                                      "embeds only 100"):
    tokenizers.fit_vocab(sp, 100, str(tmp_path / "out"))
  assert tokenizers.fit_vocab(sp, 120, str(tmp_path / "out")) is sp


# ------------------------------------------------------------------ a Gemma-style vocabulary

N_UNUSED = 3000
USED = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<unused7>"]
UNUSED_MARKERS = ["<mask>", "[multimodal]", "<start_of_image>", "<end_of_image>"]
GEMMA_CHAT = ("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
              "{{ m['content'] }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
GEMMA_TEXT = (test_gguf._pydoc_text(12) + CODE) * 2  # pylint: disable=protected-access


def gemma_style_tokenizer(directory: str) -> tokenizers.HFTokenizer:
  """Byte-fallback BPE over "▁"-for-space text, as Gemma's tokenizer.json is built: specials,
  thousands of reserved `<unusedN>`, multimodal markers, turn markers, 256 `<0xNN>`, then
  merged pieces; every special an added token."""
  from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,  # pylint: disable=import-outside-toplevel
                          pre_tokenizers, trainers)
  split = pre_tokenizers.Split(Regex("\u2581*[^\u2581]+|\u2581+"), behavior="isolated")
  train = Tokenizer(models.BPE())
  train.normalizer = normalizers.Replace(" ", "\u2581")
  train.pre_tokenizer = split
  train.train_from_iterator([GEMMA_TEXT], trainers.BpeTrainer(vocab_size=1500,
                                                              show_progress=False))
  learned = json.loads(train.to_str())["model"]
  specials = (USED[:4] + UNUSED_MARKERS[:2] + [f"<unused{i}>" for i in range(N_UNUSED)] +
              UNUSED_MARKERS[2:] + USED[4:6])
  head = specials + [f"<0x{b:02X}>" for b in range(256)]
  pieces = head + [t for t in sorted(learned["vocab"], key=learned["vocab"].get) if t not in head]
  tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(pieces)},
                             merges=[tuple(m) for m in learned["merges"]], byte_fallback=True,
                             fuse_unk=True, unk_token="<unk>"))
  tok.normalizer = normalizers.Replace(" ", "\u2581")
  tok.pre_tokenizer = split
  tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                   decoders.Fuse()])
  tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
               "add_bos_token": True, "chat_template": GEMMA_CHAT}, f)
  return tokenizers.HFTokenizer(os.path.join(directory, "tokenizer.json"))


def test_gemma_style_trim_to_512_keeps_only_used_specials_and_round_trips(tmp_path):
  tok = gemma_style_tokenizer(str(tmp_path / "gemma"))
  assert tok.vocab_size > N_UNUSED + 256 and tok.chat_template == GEMMA_CHAT
  data = GEMMA_TEXT + "<start_of_turn>user\nhi<end_of_turn>\n<unused7>"  # one reserved one used
  counts = np.bincount(tok.encode(data), minlength=tok.vocab_size)
  tr = vocab_lib.trim(tok, counts, 512, str(tmp_path / "w"))
  assert tr.kept.size <= 512 and tr.tokenizer.vocab_size == tr.kept.size
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  raw = Tokenizer.from_file(str(tmp_path / "gemma" / "tokenizer.json"))
  names = {raw.id_to_token(int(i)) for i in tr.kept}
  everything = set(USED) | set(UNUSED_MARKERS) | {f"<unused{i}>" for i in range(N_UNUSED)}
  assert names & everything == set(USED)
  assert {f"<0x{b:02X}>" for b in range(256)} <= names
  new = tr.tokenizer
  assert (new.bos_id, new.eos_id, new.pad_id) == tuple(
      tr.teacher_to_student()[[tok.bos_id, tok.eos_id, tok.pad_id]])
  assert new.add_bos and new.chat_template == GEMMA_CHAT
  outside = OUTSIDE + " 🙂 ß €  <unused99> <start_of_image>"  # dropped specials: plain text now
  for text in (GEMMA_TEXT, CODE, OUTSIDE, outside, GEMMA_TEXT[:80] + outside):
    ids = new.encode(text)
    assert new.decode(ids) == text and max(ids) < tr.kept.size
    if "<" not in text:  # the teacher reads the student's tokens as the same text
      assert tok.decode(np.asarray(tr.teacher_ids(np.asarray(ids))).tolist()) == text
  # The used specials still match whole, and the chat turn encodes to them.
  chat = chat_lib.render_prompt(new, "hi")
  turn = new.encode(chat)
  assert turn[:2] == [new.bos_id, *new.encode("<start_of_turn>")]
  # Without the data's counts, 256 bytes, "▁" and the six named specials must stay: K can be
  # small, where keeping every special would need more than N_UNUSED.
  assert vocab_lib.required_ids(tok).size == 256 + 1 + 6
  with pytest.raises(ConfigError, match="--vocab=200 is smaller than the 263 special"):
    vocab_lib.check_k(tok, 200)


@pytest.mark.slow  # about 50 s here: a brief fit, the .tflite export and the engine's check
def test_trimmed_gemma_style_student_runs_in_litertlm(tmp_path):
  """The K = 512 student (random init, briefly fitted so greedy text is real text) exports,
  its bundle's tokenizer gives our trimmed ids, and the engine's greedy run is JAX's."""
  pytest.importorskip("litert_lm")
  pytest.importorskip("litert_lm_builder")
  import jax  # pylint: disable=import-outside-toplevel
  from distill import data  # pylint: disable=import-outside-toplevel
  from distill.export import export_stage  # pylint: disable=import-outside-toplevel
  from distill.inference import stage  # pylint: disable=import-outside-toplevel
  from distill.models.model_config import ModelConfig  # pylint: disable=import-outside-toplevel
  from distill.models.transformer import LM  # pylint: disable=import-outside-toplevel
  from tests.helpers import data_spec, fit_ce  # pylint: disable=import-outside-toplevel
  tok = gemma_style_tokenizer(str(tmp_path / "gemma"))
  counts = np.bincount(tok.encode(GEMMA_TEXT), minlength=tok.vocab_size)
  tr = vocab_lib.trim(tok, counts, 512, str(tmp_path / "w"))
  text = tmp_path / "text"
  text.mkdir()
  lines = GEMMA_TEXT.splitlines(keepends=True)
  for i in range(8):  # several files: one of them goes to validation by its name's md5
    (text / f"doc{i}.txt").write_text("".join(lines[i::8]))
  spec = data_spec(f"text:{text}/*.txt", seq_len=64, data_dir=str(tmp_path / "data"),
                   add_bos=True)
  cfg = ModelConfig(vocab_size=int(tr.rows.size), d_model=32, n_layers=2, n_heads=4,
                    n_kv_heads=2, d_ff=96, max_len=256)
  lm = LM(cfg)
  it = data.make_train_iterator(spec, tr.tokenizer, str(tmp_path), batch_size=16, seed=0)
  params = fit_ce(lm, lm.init(jax.random.key(0)), it, 60, lr=1e-2)
  stage.save_stage(str(tmp_path / "student"), cfg, tr.tokenizer, params, {})
  card = export_stage(str(tmp_path / "student"), "phone", str(tmp_path / "exp"), quant="fp32",
                      max_context=64, prefill_len=8, data_spec=spec, workdir=str(tmp_path),
                      level="quick", num_threads=1, litertlm=True, log=lambda _: None)
  check = card["litertlm"]["engine_check"]
  assert card["vocab_size"] == tr.kept.size
  assert check["passed"] and check["tokenizer"]["all_identical"], check
  assert check["greedy"]["all_identical"], check["greedy"]
