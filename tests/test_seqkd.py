"""SeqKD: `teacher_cache --generate` writes teacher continuations (the full forward's argmax
when greedy; batch-size independent when sampled) that the generated-set iterator feeds back."""
import jax
import numpy as np
import pytest

from distill.inference import sampling
from distill.methods import teacher_cache
from distill.data import tokenizer as tokenizers
from distill.models.transformer import LM
from tests.helpers import tiny_model_config


def _teacher():
  lm = LM(tiny_model_config(vocab_size=264))
  params = lm.init(jax.random.key(0))
  params["embed"] = params["embed"] * 4.0  # peaked logits: no near-ties in argmax
  return lm, params


def _windows(n=6, width=17):
  return np.random.default_rng(0).integers(3, 259, size=(n, width)).astype(np.int32)


@pytest.mark.slow  # a training run: keeps the default suite in budget
def test_greedy_generations_are_the_teachers_argmax_and_iterate_back(tmp_path):
  lm, params = _teacher()
  tok = tokenizers.ByteTokenizer()
  cfg = sampling.SampleConfig(gen_len=13, temperature=0.0, vocab=259)
  out = str(tmp_path / "seqkd")
  meta = teacher_cache.write_generations(lm, params, _windows(), out, cfg, prompt_len=4,
                                         key=jax.random.key(0), batch_size=4,
                                         meta={"tokenizer": tok.fingerprint})
  assert meta["rows"] == 6 and meta["seq_len"] == 16
  seqs = np.load(f"{out}/sequences.npy")
  mask = np.load(f"{out}/mask.npy")
  np.testing.assert_array_equal(seqs[:, :4], _windows()[:, :4])
  logits = np.asarray(lm.apply(params, seqs[:, :-1]))
  np.testing.assert_array_equal(seqs[:, 4:], logits[:, 3:].argmax(-1))
  assert mask.shape == (6, 16) and mask.all()  # prompt targets 1..3 + 13 generated
  it = teacher_cache.generated_iterator(out, seq_len=16, tokenizer=tok, batch_size=4, seed=0)
  b = next(it)
  rows = {tuple(r) for r in seqs[:, :-1].tolist()}
  assert b["inputs"].shape == (4, 16) and all(tuple(r) in rows for r in b["inputs"].tolist())
  np.testing.assert_array_equal(b["targets"][:, :-1], b["inputs"][:, 1:])
  with pytest.raises(teacher_cache.CacheError, match="seq_len=16 but this run has 32"):
    teacher_cache.generated_iterator(out, seq_len=32, tokenizer=tok, batch_size=4, seed=0)


@pytest.mark.slow  # a training run: keeps the default suite in budget
def test_sampled_generations_do_not_depend_on_batch_size(tmp_path):
  lm, params = _teacher()
  cfg = sampling.SampleConfig(gen_len=13, temperature=1.0, vocab=259)
  for bs in (4, 3):
    teacher_cache.write_generations(lm, params, _windows(), str(tmp_path / f"b{bs}"), cfg,
                                    prompt_len=4, key=jax.random.key(1), batch_size=bs)
  np.testing.assert_array_equal(np.load(tmp_path / "b4" / "sequences.npy"),
                                np.load(tmp_path / "b3" / "sequences.npy"))
