"""Cross-tokenizer distillation: byte-offset alignment and the loss against NumPy references.

The references are independent of distill/data/alignment.py: a token's bytes come from the
tokenizer libraries' own tables (transformers' GPT-2 byte-to-unicode map for byte-level BPE,
SentencePiece's proto surfaces and byte pieces), cross-checked against the libraries' own
offsets; the alignment is a plain double loop over boundaries and the loss a per-position
loop with dictionaries. The texts are ones where the tokenizers disagree: multi-byte UTF-8 that
a byte-level BPE splits mid-character and a SentencePiece model spells in byte fallbacks,
leading spaces and runs of spaces, digits merged differently by two BPEs.
"""
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

spm = pytest.importorskip("sentencepiece")
transformers = pytest.importorskip("transformers")

from distill import losses  # noqa: E402
from distill.data import alignment  # noqa: E402
from distill.data import tokenizer as tokenizers  # noqa: E402
from distill.errors import ConfigError  # noqa: E402

CORPUS = ("The for statement iterates over the items of any sequence, in the order that they "
          "appear. Handlers for exceptions are written with try and except; 12 classes define "
          "methods and attributes. A function definition is an executable statement. ") * 3
TEXTS = ["Ünïcödé 日本語 ✓ 🎉 done", "   leading spaces\tand  runs  of   spaces",
         "digits 12345 2024-12-03 3.14159 and 1000000", "The for statement iterates over 42 items."]


def _bpe(directory, corpus, vocab_size):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([corpus] * 4, trainer)
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  return tokenizers.HFTokenizer(os.path.join(directory, "tokenizer.json"),
                                eos_token="<|endoftext|>", pad_token="<pad>")


@pytest.fixture(scope="module")
def toks(tmp_path_factory):
  d = tmp_path_factory.mktemp("xtok")
  # Two BPEs that merge digits differently: one saw "12 345 6789", the other "1234 56".
  a = _bpe(str(d / "a"), CORPUS + " 12 345 6789 2024 " * 20, 340)
  b = _bpe(str(d / "b"), CORPUS + " 1234 56 3.14 " * 20, 300)
  (d / "sp.txt").write_text(CORPUS + " digits 12 345 6789 2024 " * 5)
  spm.SentencePieceTrainer.train(
      input=str(d / "sp.txt"), model_prefix=str(d / "sp"), vocab_size=360, model_type="bpe",
      byte_fallback=True, character_coverage=1.0, minloglevel=2, add_dummy_prefix=False,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      split_by_whitespace=False, allow_whitespace_only_pieces=True, hard_vocab_limit=False)
  sp = tokenizers.SentencePieceTokenizer(str(d / "sp.model"))
  return {"byte": tokenizers.ByteTokenizer(), "bpe_a": a, "bpe_b": b, "sp": sp, "dir": d}


def _ref_pieces(tok, text):
  """(ids, bytes of each token) from the libraries' own tables, and their own offsets checked."""
  if isinstance(tok, tokenizers.ByteTokenizer):
    raw = text.encode()
    return [c + 3 for c in raw], [bytes([c]) for c in raw]
  if isinstance(tok, tokenizers.SentencePieceTokenizer):
    proto = tok._sp.encode(text, return_type="proto")  # pylint: disable=protected-access
    ids, pieces, raw = [], [], text.encode()
    for p in proto.pieces:
      ids.append(p.id)
      b = bytes([int(p.piece[3:5], 16)]) if p.piece.startswith("<0x") else p.surface.encode()
      pieces.append(b)
      if not p.piece.startswith("<0x"):
        assert raw[p.begin:p.end] == b  # SentencePiece's own byte offsets
    return ids, pieces
  from transformers.convert_slow_tokenizer import bytes_to_unicode  # pylint: disable=import-outside-toplevel
  inv = {c: b for b, c in bytes_to_unicode().items()}
  enc = tok._tok.encode(text, add_special_tokens=False)  # pylint: disable=protected-access
  pieces = [bytes(inv[c] for c in t) for t in enc.tokens]
  ends = np.cumsum([len(p) for p in pieces])
  for k, (_, e) in enumerate(enc.offsets):  # at character boundaries, HF's own char offsets
    if k + 1 == len(pieces) or enc.offsets[k + 1][0] >= e:
      assert ends[k] == len(text[:e].encode())
  return list(enc.ids), pieces


def _ref_align(t_ids, t_pieces, s_ids, s_pieces):
  """Boundaries by a double loop; positions sharing one pair from the last."""
  t_end = np.cumsum([len(p) for p in t_pieces])
  s_end = np.cumsum([len(p) for p in s_pieces])
  index, exact = [], []
  for i in range(len(s_ids)):
    j = -1
    if i + 1 < len(s_ids):
      same_s = [ii for ii in range(len(s_ids) - 1) if s_end[ii] == s_end[i]]
      same_t = [jj for jj in range(len(t_ids) - 1) if t_end[jj] == s_end[i]]
      rank = len(same_s) - 1 - same_s.index(i)
      if rank < len(same_t):
        j = same_t[len(same_t) - 1 - rank]
    index.append(j)
    exact.append(j >= 0 and t_pieces[j + 1] == s_pieces[i + 1])
  return np.array(index), np.array(exact)


PAIRS = [("bpe_a", "byte"), ("bpe_a", "bpe_b"), ("sp", "bpe_a"), ("bpe_b", "sp"), ("sp", "byte")]


@pytest.mark.parametrize("name", ["byte", "bpe_a", "bpe_b", "sp"])
def test_token_bytes_spell_the_text_like_the_libraries(toks, name):
  tok = toks[name]
  keys = alignment.token_keys(tok)
  for text in TEXTS:
    ids, ends = alignment.encode_bytes(tok, keys, text)
    ref_ids, ref_pieces = _ref_pieces(tok, text)
    assert ids.tolist() == ref_ids
    np.testing.assert_array_equal(ends, np.cumsum([len(p) for p in ref_pieces]))


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_alignment_matches_the_reference_where_tokenizers_disagree(toks, teacher, student):
  t, s = toks[teacher], toks[student]
  tk, sk = alignment.token_keys(t, "teacher"), alignment.token_keys(s)
  unaligned = differ = 0
  for text in TEXTS:
    t_ids, t_ends = alignment.encode_bytes(t, tk, text, "teacher")
    s_ids, s_ends = alignment.encode_bytes(s, sk, text)
    index, exact = alignment.align(t_ids, t_ends, s_ids, s_ends, tk, sk)
    ref_index, ref_exact = _ref_align(*_ref_pieces(t, text), *_ref_pieces(s, text))
    np.testing.assert_array_equal(index, ref_index)
    np.testing.assert_array_equal(exact, ref_exact)
    unaligned += int((index[:-1] < 0).sum())
    differ += int(((index >= 0) & ~exact).sum())
  assert unaligned > 0 and differ > 0  # the texts do make them disagree
  # Two documents joined by each side's EOS (zero width): the EOS positions pair, and the
  # positions predicting the EOS pair.
  docs = [(TEXTS[0], TEXTS[2]), (TEXTS[1], TEXTS[3])]
  for d1, d2 in docs:
    rows = []
    for tok, keys, what in ((t, tk, "teacher"), (s, sk, "student")):
      a, ea = alignment.encode_bytes(tok, keys, d1, what)
      b, eb = alignment.encode_bytes(tok, keys, d2, what)
      rows.append((np.concatenate([a, [tok.eos_id], b]),
                   np.concatenate([ea, [ea[-1]], ea[-1] + eb])))
    index, exact = alignment.align(*rows[0], *rows[1], tk, sk)
    tp = _ref_pieces(t, d1)[1] + [b""] + _ref_pieces(t, d2)[1]
    sp = _ref_pieces(s, d1)[1] + [b""] + _ref_pieces(s, d2)[1]
    ref_index, ref_exact = _ref_align(rows[0][0], tp, rows[1][0], sp)
    np.testing.assert_array_equal(index, ref_index)
    np.testing.assert_array_equal(exact, ref_exact)
    k = len(_ref_pieces(s, d1)[1])  # the student's EOS position, and the one before it
    assert index[k] >= 0 and rows[0][0][index[k]] == t.eos_id and exact[k - 1]


def test_vocab_map_groups_ids_of_the_same_bytes(toks):
  t, s = toks["sp"], toks["bpe_a"]
  vm = alignment.VocabMap.build(t, s)
  tk, sk = alignment.token_keys(t), alignment.token_keys(s)
  for c in range(vm.size):
    keys = {tk[i] for i in vm.teacher[c] if i >= 0} | {sk[i] for i in vm.student[c] if i >= 0}
    assert len(keys) == 1
  # SentencePiece spells a space both as "▁" and as the byte fallback <0x20>: one group of two.
  assert vm.teacher.shape[1] == 2
  assert int((vm.teacher >= 0).sum()) == sum(1 for k in tk if k in set(sk))
  # A byte student: every byte has its column, and the specials meet by role.
  vb = alignment.VocabMap.build(toks["bpe_a"], toks["byte"])
  assert vb.size == 258 and not vb.identity
  assert alignment.VocabMap.build(t, t).identity


def _ref_loss(s_logits, t_logits, labels, index, exact, tk, sk, mask, temp, alpha, uld_w, kind):
  shared = [k for k in dict.fromkeys(sk) if k in set(tk)]
  t_of = [[j for j, k in enumerate(tk) if k == key] for key in shared]
  s_of = [[j for j, k in enumerate(sk) if k == key] for key in shared]
  num = den = ce = 0.0
  for b in range(s_logits.shape[0]):
    for i in range(s_logits.shape[1]):
      sl = s_logits[b, i].astype(np.float64)
      ce += mask[b, i] * (np.log(np.exp(sl).sum()) - sl[labels[b, i]])
      if index[b, i] < 0 or not mask[b, i]:
        continue
      p = np.exp(t_logits[b, index[b, i]] / temp)
      p /= p.sum()
      q = np.exp(sl / temp)
      q /= q.sum()
      if exact[b, i]:
        pg = np.array([sum(p[j] for j in ids) for ids in t_of])
        qg = np.array([sum(q[j] for j in ids) for ids in s_of])
        pg, qg = pg / pg.sum(), qg / qg.sum()
        if kind == "forward_kl":
          val = np.sum(pg * (np.log(pg) - np.log(qg)))
        else:  # tvd
          val = 0.5 * np.abs(pg - qg).sum()
      else:
        n = max(p.size, q.size)
        ps = np.sort(np.pad(p, (0, n - p.size)))[::-1]
        qs = np.sort(np.pad(q, (0, n - q.size)))[::-1]
        val = uld_w * np.abs(ps - qs).sum()
      num += val
      den += 1
  div = num / den * temp * temp
  return (1 - alpha) * div + alpha * ce / mask.sum()


@pytest.mark.parametrize("teacher,student", [("bpe_a", "byte"), ("sp", "bpe_b")])
@pytest.mark.parametrize("kind", ["forward_kl", "tvd"])
def test_loss_equals_its_reference_definition(toks, teacher, student, kind):
  t, s = toks[teacher], toks[student]
  tk, sk = alignment.token_keys(t, "teacher"), alignment.token_keys(s)
  rows = [alignment.encode_bytes(t, tk, x, "teacher") for x in TEXTS[:2]]
  srows = [alignment.encode_bytes(s, sk, x) for x in TEXTS[:2]]
  n_t, n_s = max(len(r[0]) for r in rows), max(len(r[0]) for r in srows)
  index = np.full((2, n_s), -1)
  exact = np.zeros((2, n_s), bool)
  mask = np.zeros((2, n_s), np.float32)
  for b, ((ti, te), (si, se)) in enumerate(zip(rows, srows)):
    index[b, :len(si)], exact[b, :len(si)] = alignment.align(ti, te, si, se, tk, sk)
    mask[b, :len(si)] = 1
  rng = np.random.default_rng(0)
  t_logits = rng.normal(size=(2, n_t, t.vocab_size)).astype(np.float32) * 2
  s_logits = rng.normal(size=(2, n_s, s.vocab_size)).astype(np.float32) * 2
  labels = rng.integers(0, s.vocab_size, size=(2, n_s))
  vm = alignment.VocabMap.build(t, s)
  objective = jax.jit(functools.partial(losses.cross_tokenizer_objective, kind=kind,
                                        alpha=0.25, temperature=1.5, uld_weight=0.7))
  args = (t_logits, labels, index, exact, vm.teacher, vm.student)
  loss, metrics = objective(s_logits, *args, mask=mask)
  ref = _ref_loss(s_logits, t_logits, labels, index, exact, tk, sk, mask, 1.5, 0.25, 0.7, kind)
  np.testing.assert_allclose(float(loss), ref, rtol=2e-5)
  assert 0 < float(metrics["exact_fraction"]) < float(metrics["aligned_fraction"]) < 1
  grads = jax.jit(jax.grad(lambda x, a, m: objective(x, *a, mask=m)[0]))(s_logits, args, mask)
  assert np.isfinite(np.asarray(grads)).all()


@pytest.mark.parametrize("name", ["bpe_a", "sp", "byte"])
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "tvd"])
def test_identical_tokenizers_give_exactly_the_ordinary_loss(toks, name, kind):
  tok = toks[name]
  keys = alignment.token_keys(tok)
  ids, ends = alignment.encode_bytes(tok, keys, TEXTS[0] + " " + TEXTS[2])
  index, exact = alignment.align(ids, ends, ids, ends, keys, keys)
  assert (index[:-1] == np.arange(len(ids) - 1)).all() and exact[:-1].all()
  vm = alignment.VocabMap.build(tok, tok)
  n = len(ids) - 1
  rng = np.random.default_rng(1)
  s_logits = jnp.asarray(rng.normal(size=(1, n, tok.vocab_size)), jnp.float32)
  t_logits = jnp.asarray(rng.normal(size=(1, n, tok.vocab_size)) * 3, jnp.float32)
  labels = jnp.asarray(ids[None, 1:])
  mask = jnp.asarray(rng.random((1, n)) < 0.8, jnp.float32)
  kw = dict(mask=mask, kind=kind, alpha=0.3, temperature=2.0, student_softcap=30.0)
  got = losses.cross_tokenizer_objective(s_logits, t_logits, labels, index[None, :n],
                                         exact[None, :n], vm.teacher, vm.student, **kw)
  want = losses.distill_objective(s_logits, t_logits, labels, **kw)
  for k in ("loss", "divergence", "ce"):
    assert float(got[1][k]) == float(want[1][k]), k


def test_uld_is_the_sorted_l1_distance():
  p = np.log(np.array([[0.5, 0.3, 0.2]]))
  q = np.log(np.array([[0.1, 0.6, 0.1, 0.2]]))
  # sorted: [.5 .3 .2 0] vs [.6 .2 .1 .1] -> .1 + .1 + .1 + .1
  np.testing.assert_allclose(np.asarray(losses.uld_per_token(p, q)), [0.4], rtol=1e-6)


def test_unalignable_tokenizers_are_one_clear_line(toks, tmp_path):
  d = toks["dir"]
  # A normalizer that rewrites the text (NFKC + a dummy prefix): not byte-exact.
  spm.SentencePieceTrainer.train(
      input=str(d / "sp.txt"), model_prefix=str(tmp_path / "norm"), vocab_size=360,
      model_type="bpe", byte_fallback=True, minloglevel=2, hard_vocab_limit=False)
  norm = tokenizers.SentencePieceTokenizer(str(tmp_path / "norm.model"))
  keys = alignment.token_keys(norm, "teacher")
  with pytest.raises(ConfigError, match="not byte-exact on the data.*without a normalizer"):
    alignment.encode_bytes(norm, keys, "x  two  spaces", "teacher")
  # A WordPiece decoder has no byte offsets.
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  wp.pre_tokenizer = pre_tokenizers.Whitespace()
  wp.decoder = decoders.WordPiece()
  wp.train_from_iterator([CORPUS], trainers.WordPieceTrainer(vocab_size=200,
                                                             special_tokens=["[UNK]"]))
  wp.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ConfigError, match=r"teacher tokenizer cannot be aligned by byte offsets: "
                     r"its tokenizer.json decoder \['WordPiece'\]"):
    alignment.token_keys(tokenizers.HFTokenizer(str(tmp_path / "tokenizer.json")), "teacher")
  # Text spelling a special token.
  a = toks["bpe_a"]
  with pytest.raises(ConfigError, match="encodes it to '<eos>', a token that stands for no bytes"):
    alignment.encode_bytes(a, alignment.token_keys(a), "end<|endoftext|>")
