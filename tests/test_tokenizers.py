"""Tokenizers: byte-level round trips, SP / HF wrappers on tiny offline-trained models."""
import json
import os

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from distill.data import tokenizer as tokenizers

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Distillation trains a small student on the outputs of a large teacher.",
    "def f(x):\n    return x + 1  # a comment",
    "Tokenizers split text into pieces; pieces map to integer ids.",
    "Unicode: café, naïve, 東京, emoji 🙂.",
] * 20


# ------------------------------------------------------------------------- byte


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_byte_round_trip(text):
  tok = tokenizers.ByteTokenizer()
  ids = tok.encode(text)
  assert all(3 <= i < tok.vocab_size for i in ids)
  assert len(ids) == len(text.encode("utf-8"))
  assert tok.decode(ids) == text


def test_byte_specials():
  tok = tokenizers.ByteTokenizer()
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 0, 1, 2)
  assert tok.encode("A") == [ord("A") + 3]
  assert tok.encode("hi", add_bos=True, add_eos=True) == [1, ord("h") + 3, ord("i") + 3, 2]
  # Specials vanish on decode, so a padded, framed row prints as its text.
  assert tok.decode([1, ord("h") + 3, 0, 0, ord("i") + 3, 2, 0]) == "hi"


def test_byte_invalid_utf8_replaced():
  tok = tokenizers.ByteTokenizer()
  euro = tok.encode("€")  # Three bytes; cut it in half as a window boundary would.
  assert tok.decode(euro[:2] + tok.encode("x")) == "\ufffdx"
  assert tok.decode([0xFF + 3]) == "\ufffd"


def test_byte_save_load(tmp_path):
  tok = tokenizers.ByteTokenizer()
  path = tok.save(str(tmp_path))
  with open(path) as f:
    desc = json.load(f)
  assert desc["type"] == "byte" and desc["vocab_size"] == 259 and desc["byte_offset"] == 3
  for where in (str(tmp_path), path):
    loaded = tokenizers.load(where)
    assert isinstance(loaded, tokenizers.ByteTokenizer)
    assert loaded.fingerprint == tok.fingerprint


def test_from_config():
  assert isinstance(tokenizers.from_config("byte"), tokenizers.ByteTokenizer)
  tok = tokenizers.ByteTokenizer()
  assert tokenizers.from_config(tok) is tok
  with pytest.raises(ValueError, match="byte"):
    tokenizers.from_config("")
  with pytest.raises(ValueError, match="does not exist"):
    tokenizers.from_config("/nonexistent/tok.model")


def test_load_errors(tmp_path):
  with pytest.raises(ValueError, match="no tokenizer in"):
    tokenizers.load(str(tmp_path))
  bad = tmp_path / tokenizers.DESCRIPTOR_NAME
  bad.write_text(json.dumps({"type": "byte"}))
  assert isinstance(tokenizers.load(str(bad)), tokenizers.ByteTokenizer)


# ------------------------------------------------------------------ sentencepiece


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  d = tmp_path_factory.mktemp("sp")
  text = d / "corpus.txt"
  text.write_text("\n".join(_CORPUS))
  spm.SentencePieceTrainer.train(
      input=str(text), model_prefix=str(d / "tiny"), vocab_size=340, model_type="bpe",
      character_coverage=1.0, byte_fallback=True, pad_id=3, unk_id=0, bos_id=1, eos_id=2,
      # Identity normalization keeps code's newlines and indentation exact.
      normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
  return str(d / "tiny.model")


def test_sentencepiece_wrapper(sp_model, tmp_path):
  tok = tokenizers.SentencePieceTokenizer(sp_model)
  assert tok.vocab_size == 340
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (3, 1, 2)
  for text in set(_CORPUS):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
  framed = tok.encode("fox", add_bos=True, add_eos=True)
  assert framed[0] == 1 and framed[-1] == 2 and tok.decode(framed) == "fox"

  tok.save(str(tmp_path))
  assert os.path.exists(tmp_path / "tokenizer.model")
  loaded = tokenizers.load(str(tmp_path))
  assert isinstance(loaded, tokenizers.SentencePieceTokenizer)
  assert loaded.encode(_CORPUS[0]) == tok.encode(_CORPUS[0])
  assert loaded.fingerprint == tok.fingerprint
  # A bare .model file loads too.
  assert tokenizers.load(sp_model).encode("dog") == tok.encode("dog")


def test_sentencepiece_missing_specials(tmp_path):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  text = tmp_path / "corpus.txt"
  text.write_text("\n".join(_CORPUS))
  spm.SentencePieceTrainer.train(
      input=str(text), model_prefix=str(tmp_path / "nobos"), vocab_size=60,
      character_coverage=1.0, bos_id=-1, eos_id=-1, minloglevel=2)
  tok = tokenizers.SentencePieceTokenizer(str(tmp_path / "nobos.model"))
  assert tok.bos_id is None and tok.eos_id is None and tok.pad_id is None
  with pytest.raises(ValueError, match="no eos"):
    tok.encode("x", add_eos=True)


# ----------------------------------------------------------------------- HF json


def _train_hf(directory, specials=("<pad>", "<s>", "</s>")):
  # pylint: disable-next=g-import-not-at-top
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  # Byte-level pieces make decode(encode(x)) exact, spaces and unicode included.
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=list(specials),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(_CORPUS, trainer=trainer)
  path = os.path.join(directory, "tokenizer.json")
  tok.save(path)
  return path


def test_hf_wrapper(tmp_path):
  src = tmp_path / "src"
  src.mkdir()
  path = _train_hf(str(src))
  tok = tokenizers.HFTokenizer(path)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.vocab_size <= 300
  for text in set(_CORPUS) | {"unseen wörds ✓"}:
    ids = tok.encode(text)
    assert 0 not in ids and 1 not in ids and 2 not in ids
    assert tok.decode(ids) == text
  framed = tok.encode("fox", add_bos=True, add_eos=True)
  assert framed[0] == 1 and framed[-1] == 2 and tok.decode(framed) == "fox"

  out = tmp_path / "saved"
  tok.save(str(out))
  assert os.path.exists(out / "tokenizer.json")
  assert os.path.exists(out / tokenizers.DESCRIPTOR_NAME)
  for where in (str(out), str(out / tokenizers.DESCRIPTOR_NAME), path):
    loaded = tokenizers.load(where)
    assert isinstance(loaded, tokenizers.HFTokenizer)
    assert loaded.encode(_CORPUS[1]) == tok.encode(_CORPUS[1])
    assert loaded.eos_id == 2
  assert tokenizers.load(str(out)).fingerprint == tok.fingerprint


def test_hf_specials_from_config_and_absent(tmp_path):
  path = _train_hf(str(tmp_path), specials=("<|endoftext|>", "<unk>", "[BOS]"))
  tok = tokenizers.HFTokenizer(path)
  # Guessed from common names: GPT-2 style EOS, nothing for BOS / PAD.
  assert tok.eos_id == 0 and tok.bos_id is None and tok.pad_id is None
  with pytest.raises(ValueError, match="no bos"):
    tok.encode("x", add_bos=True)
  (tmp_path / "tokenizer_config.json").write_text(
      json.dumps({"bos_token": {"content": "[BOS]"}, "pad_token": "<unk>"}))
  tok = tokenizers.HFTokenizer(path)
  assert (tok.bos_id, tok.pad_id, tok.eos_id) == (2, 1, 0)


# ------------------------------------------------------- start-of-sequence convention


def test_add_bos_defaults_and_what_a_saved_stage_records(sp_model, tmp_path):
  """Byte: no BOS; SentencePiece: BOS; HF: tokenizer_config's add_bos_token, else its
  post-processor. A saved descriptor keeps the value set on the tokenizer, and the
  BOS-less descriptor is unchanged (no key), so old stages and data caches stay valid."""
  from tokenizers import processors  # pylint: disable=import-outside-toplevel
  byte = tokenizers.ByteTokenizer()
  assert not byte.add_bos and "add_bos" not in byte.descriptor()
  assert byte.encode_prompt("hi") == byte.encode("hi")
  assert tokenizers.SentencePieceTokenizer(sp_model).add_bos
  src = tmp_path / "hf"
  src.mkdir()
  path = _train_hf(str(src))
  assert not tokenizers.HFTokenizer(path).add_bos  # no flag, no post-processor
  (src / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True}))
  assert tokenizers.HFTokenizer(path).add_bos
  (src / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
  assert not tokenizers.HFTokenizer(path).add_bos
  os.remove(src / "tokenizer_config.json")
  import tokenizers as hf  # pylint: disable=import-outside-toplevel
  t = hf.Tokenizer.from_file(path)
  t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  t.save(path)
  tok = tokenizers.HFTokenizer(path)
  assert tok.add_bos and tok.encode_prompt("fox") == [1] + tok.encode("fox")

  for base in (byte, tok):
    on = base.with_add_bos(True)
    assert on.add_bos and not base.with_add_bos(False).add_bos
    assert on.descriptor()["add_bos"] is True and on.fingerprint != base.with_add_bos(False).fingerprint
    for value in (True, False):
      saved = tmp_path / f"saved_{type(base).__name__}_{value}"
      base.with_add_bos(value).save(str(saved))
      assert tokenizers.load(str(saved)).add_bos is value  # the stage's value, not the file's
  assert byte.descriptor() == tokenizers.ByteTokenizer().with_add_bos(False).descriptor()


def test_add_bos_needs_a_bos_token(tmp_path):
  path = _train_hf(str(tmp_path), specials=("<|endoftext|>", "<unk>"))
  tok = tokenizers.HFTokenizer(path)
  assert tok.bos_id is None and not tok.add_bos
  with pytest.raises(ValueError, match="has no BOS token.*add_bos=False"):
    tok.with_add_bos(True)


def test_packing_follows_the_convention(tmp_path):
  """DataSpec.add_bos None packs with the tokenizer's convention; an explicit value wins."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from distill.data import packing  # pylint: disable=import-outside-toplevel
  from tests.helpers import data_spec  # pylint: disable=import-outside-toplevel
  byte = tokenizers.ByteTokenizer()
  docs = ["ab", "c"]
  for spec_value, tok, want in ((None, byte, False), (None, byte.with_add_bos(True), True),
                                (True, byte, True), (False, byte.with_add_bos(True), False)):
    spec = data_spec("pydoc_topics", add_bos=spec_value)
    first = packing.bos_first(spec, tok)
    assert first is want
    stream, _ = packing.pack(docs, tok, first)
    ref = ([1] if want else []) + [ord("a") + 3, ord("b") + 3, 2] + ([1] if want else []) + [
        ord("c") + 3, 2]
    np.testing.assert_array_equal(stream, ref)
