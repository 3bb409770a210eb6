"""Cross-tokenizer distillation on the tiny pipeline: a byte-level student of a BPE teacher.

`CrossPlan.rows` is checked against the tokenizers' own decoding (HF's decoder for the teacher's
prefix, the raw bytes for the byte student); the pipeline against its report (bits/byte for
every model, gap closed in bits/byte) and the bad inputs against their one-line errors.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tokenizers")

import distill  # noqa: E402
from distill.data import tokenizer as tokenizers  # noqa: E402
from distill.methods import cross_tokenizer as cross  # noqa: E402
from tests.helpers import shrunken_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pydoc_bpe(directory, vocab_size=600):
  """A byte-level BPE trained on the embedded corpus (EOS <|endoftext|>, PAD <pad>)."""
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator([topics[k] for k in sorted(topics)], trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<pad>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  os.makedirs(directory, exist_ok=True)
  tok.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|endoftext|>", "pad_token": "<pad>"}, f)
  return os.path.join(directory, "tokenizer.json")


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory):
  return pydoc_bpe(str(tmp_path_factory.mktemp("bpe")))


def _hf_bytes(tok, i):
  """A byte-level BPE token's bytes through transformers' GPT-2 table; specials b""."""
  from transformers.convert_slow_tokenizer import bytes_to_unicode  # pylint: disable=import-outside-toplevel
  inv = {c: b for b, c in bytes_to_unicode().items()}
  piece = tok._tok.id_to_token(i)  # pylint: disable=protected-access
  return b"" if i in (tok.eos_id, tok.pad_id) else bytes(inv[c] for c in piece)


def test_plan_rows_give_the_teacher_the_same_text(bpe_path):
  teacher, byte = tokenizers.load(bpe_path), tokenizers.ByteTokenizer()
  plan = cross.CrossPlan.build(teacher, byte, teacher_len=64)
  doc1, doc2 = "Ünïcödé 日本語: x = 12345", "  for item in items: 42"
  stream = byte.encode(doc1) + [byte.eos_id] + byte.encode(doc2)
  for start in (0, 1, 2):  # 1 and 2 cut the window inside "Ü" / at its end
    window = np.asarray(stream[start:start + 49])
    batch = {"inputs": window[None, :-1], "targets": window[None, 1:],
             "mask": np.ones((1, 48), np.float32)}
    rows = plan.rows(batch)
    t_ids, index, exact = rows["teacher_inputs"][0], rows["teacher_index"][0], rows["exact"][0]
    raw = [bytes([i - 3]) if i >= 3 else b"" for i in window]  # the byte student's bytes
    skipped = 1 if start == 1 else 0  # a continuation byte the teacher cannot start on
    n_t = int((t_ids != teacher.pad_id).sum())
    t_bytes = [_hf_bytes(teacher, int(i)) for i in t_ids[:n_t]]
    t_prefix = [b"".join(t_bytes[:j + 1]) for j in range(n_t)]
    for p in range(48):
      s_prefix = b"".join(raw[:p + 1])[skipped:]
      # Aligned: the teacher read exactly the student's text (from the first whole character).
      candidates = [j for j in range(n_t - 1) if t_prefix[j] == s_prefix]
      if index[p] >= 0:
        assert index[p] in candidates
        t_next, s_next = t_bytes[index[p] + 1], raw[p + 1]
        both_eos = window[p + 1] == byte.eos_id and t_ids[index[p] + 1] == teacher.eos_id
        assert exact[p] == ((t_next == s_next and s_next != b"") or both_eos)
      elif p != 47 and not (window[p + 1] == byte.eos_id or window[p] == byte.eos_id):
        assert not candidates, p
    assert index.max() > 0 and 0 < exact.sum() < (index >= 0).sum()
    assert teacher.eos_id in t_ids[:n_t].tolist()


@pytest.mark.slow  # three short stages and two evaluations: 5-11 min on the shared 2 cores
def test_byte_student_of_a_bpe_teacher_runs_and_reports_bits_per_byte(bpe_path, tmp_path):
  from distill.run import pipeline  # pylint: disable=import-outside-toplevel
  c = shrunken_config(**{"data.tokenizer": bpe_path, "student.tokenizer": "byte",
                         "export.enabled": False, "distill.alpha": 0.5})
  rep = pipeline.run(c, str(tmp_path))
  for name in ("teacher", "student", "baseline"):
    for part in (rep[name], rep[name]["heldout"]) if "heldout" in rep[name] else (rep[name],):
      assert math.isfinite(part["bits_per_byte"]) and part["bits_per_byte"] > 0
  assert rep["teacher"]["cross_tokenizer"] and math.isnan(rep["student"]["kl_to_teacher"])
  s, b = rep["gap_closed_models"]["gap_closed"]
  bpb = [rep[m]["bits_per_byte"] for m in ("teacher", s, b)]
  np.testing.assert_allclose(rep["gap_closed"], (bpb[2] - bpb[1]) / (bpb[2] - bpb[0]))
  student = distill.load(str(tmp_path / "student"))
  assert isinstance(student.tokenizer, tokenizers.ByteTokenizer)
  assert student.lm.cfg.vocab_size == 264  # 259 byte ids, padded to a multiple of 8
  teacher = distill.load(str(tmp_path / "teacher"))
  assert isinstance(teacher.tokenizer, tokenizers.HFTokenizer)
  with open(tmp_path / "student" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  logged = [r for r in rows if "exact_fraction" in r]
  assert logged and 0 < logged[-1]["exact_fraction"] < logged[-1]["aligned_fraction"] < 1


def _main(tmp_path, *args):
  cmd = [sys.executable, "-m", "distill.main", "--config=configs/tiny.py:small",
         f"--workdir={tmp_path / 'w'}", "--config.export.enabled=False", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _sp_without_byte_fallback(tmp_path):
  spm = pytest.importorskip("sentencepiece")
  (tmp_path / "c.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 50)
  spm.SentencePieceTrainer.train(input=str(tmp_path / "c.txt"), model_prefix=str(tmp_path / "sp"),
                                 vocab_size=40, model_type="bpe", minloglevel=2,
                                 add_dummy_prefix=False, normalization_rule_name="identity",
                                 remove_extra_whitespaces=False, hard_vocab_limit=False)
  return str(tmp_path / "sp.model")


@pytest.mark.slow  # a CLI process each, about 75 s (the errors themselves: test_cross_tokenizer)
@pytest.mark.parametrize("case", ["student_cannot_spell", "teacher_cannot_align"])
def test_bad_tokenizers_are_one_line_exit_2(tmp_path, bpe_path, case):
  if case == "student_cannot_spell":
    args = [f"--config.data.tokenizer={bpe_path}",
            f"--config.student.tokenizer={_sp_without_byte_fallback(tmp_path)}"]
    want = ["student tokenizer cannot spell the data byte for byte", "'<unk>'",
            "use a tokenizer with byte fallback"]
  else:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.pre_tokenizer = pre_tokenizers.Whitespace()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(["the quick brown fox"], trainers.WordPieceTrainer(
        vocab_size=100, special_tokens=["[UNK]", "[SEP]"]))
    wp.save(str(tmp_path / "tokenizer.json"))
    args = [f"--config.data.tokenizer={tmp_path / 'tokenizer.json'}",
            "--config.student.tokenizer=byte"]
    want = ["teacher tokenizer cannot be aligned by byte offsets", "WordPiece",
            "give a byte-level, SentencePiece or byte-exact tokenizer.json"]
  res = _main(tmp_path, *args)
  errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
  assert res.returncode == 2, res.stderr[-2000:]
  assert len(errors) == 1 and all(w in errors[0] for w in want), res.stderr[-2000:]
  assert "Traceback" not in res.stderr
  assert not os.path.exists(tmp_path / "w" / "teacher" / "stage.json")  # nothing trained
