"""Speculative decoding (distill.inference.speculative) against independent references.

- greedy: token for token the teacher's own greedy decoding (`Model.generate_ids`, one token
  per call), with a drafter that disagrees sometimes (a smaller model trained for fewer steps
  on the same text) and with one identical to the teacher (which must accept every draft);
- sampling: the rule's accept / resample probabilities against a NumPy derivation, their mix
  equal to the teacher's distribution exactly; the sampler itself by chi-square on many draws
  at fixed keys; and end to end, the first two tokens' joint distribution against the one the
  teacher's full forward gives.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as scistats

from distill.data import tokenizer as tokenizers
from distill.errors import UsageError
from distill.inference import model as inference
from distill.inference import speculative
from distill.models.model_config import ModelConfig
from distill.models.transformer import LM
from tests.helpers import tiny_model_config, train_byte_lm

TEACHER = ModelConfig(vocab_size=264, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                      max_len=256)
DRAFTER = ModelConfig(vocab_size=264, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                      max_len=256)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  """A briefly trained teacher and a smaller, less trained drafter of the same vocabulary."""
  root = tmp_path_factory.mktemp("speculative")
  teacher = inference.Model(*train_byte_lm(root, TEACHER, 120, 0))
  drafter = inference.Model(*train_byte_lm(root, DRAFTER, 40, 1))
  return teacher, drafter


def _prompts(tok, n, same_length=False):
  texts = ["The for statement", "A class definition", "Exceptions are", "import ", "def f(x):",
           "The while loop", "Assignment statements", "Function calls"]
  return [tok.encode(texts[i % len(texts)])[:4 + (0 if same_length else i % 5)] for i in range(n)]


def _check_greedy(pair, n_prompts, new_tokens, ks, same_length=False):
  teacher, drafter = pair
  total = speculative.Stats()
  for i, ids in enumerate(_prompts(teacher.tokenizer, n_prompts, same_length)):
    want = teacher.generate_ids(ids, new_tokens, stop_at_eos=False)
    got, st = speculative.generate_ids(teacher, drafter, ids, new_tokens, k=ks[i % len(ks)],
                                       stop_at_eos=False)
    assert got == want, f"prompt {i}: speculative greedy differs from the teacher's"
    assert st.new_tokens == new_tokens and st.teacher_calls < new_tokens
    for f in ("teacher_calls", "drafted", "accepted"):
      setattr(total, f, getattr(total, f) + getattr(st, f))
  # The drafter both agrees and disagrees, so acceptance and rejection paths both ran.
  assert 0.05 < total.acceptance_rate < 0.98, total.as_dict()
  return total


def test_greedy_equals_teacher_greedy(pair):
  _check_greedy(pair, 4, 48, ks=(4,), same_length=True)


@pytest.mark.slow
def test_greedy_equals_teacher_greedy_32_prompts_128_tokens(pair):
  """Issue 29's acceptance: 32 prompts x 128 tokens."""
  _check_greedy(pair, 32, 128, ks=(2, 4, 6))


def test_greedy_stops_at_eos_like_the_teacher(pair):
  teacher, drafter = pair
  ids = teacher.tokenizer.encode("The for statement")[:4]  # the shapes the test above compiled
  free = teacher.generate_ids(ids, 48, stop_at_eos=False)
  eos = free[10]  # a token the teacher emits mid-way, made the EOS: both stop right after it

  class Eos(tokenizers.ByteTokenizer):
    eos_id = eos

  t2 = inference.Model(teacher.lm, teacher.params, Eos())
  d2 = inference.Model(drafter.lm, drafter.params, Eos())
  want = t2.generate_ids(ids, 48)
  streamed = []
  got, _ = speculative.generate_ids(t2, d2, ids, 48, k=4, on_token=streamed.append)
  assert got == want == free[:free.index(eos) + 1]
  assert streamed == got[:-1]  # the final EOS is not streamed


def test_identical_drafter_accepts_everything(pair):
  teacher, _ = pair
  ids = teacher.tokenizer.encode("def f(x):")[:4]
  for temperature in (0.0, 1.0):
    got, st = speculative.generate_ids(teacher, teacher, ids, 48, k=4, temperature=temperature,
                                       top_k=8 if temperature else 0, stop_at_eos=False)
    assert st.accepted == st.drafted and st.acceptance_rate == 1.0
    assert st.tokens_per_call == 5.0 and len(got) == 48


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_rule_matches_numpy_and_recovers_the_teachers_distribution():
  rng = np.random.default_rng(0)
  v, k = 6, 3
  p = _softmax(rng.normal(size=(k + 1, v)) * 2)
  q = _softmax(rng.normal(size=(k, v)) * 2)
  q[1, 2] = 0.0  # a drafter that never proposes id 2 at step 1 (as after its own top-k)
  q[1] /= q[1].sum()
  q[2] = p[2]  # a drafter that equals the teacher at step 2: no residual mass there
  for d in np.ndindex(*(v,) * k):
    acc, nxt = jax.device_get(speculative.rule(jnp.asarray(p, jnp.float32),
                                               jnp.asarray(q, jnp.float32), jnp.asarray(d)))
    rows = np.arange(k)
    want_acc = np.where(q[rows, d] > 0, np.minimum(1, p[rows, d] / np.maximum(q[rows, d], 1e-30)), 1)
    np.testing.assert_allclose(acc, want_acc, rtol=1e-5, atol=1e-6)
    resid = np.maximum(p[:k] - q, 0)
    want = np.vstack([np.where(resid.sum(-1, keepdims=True) > 0,
                               resid / np.maximum(resid.sum(-1, keepdims=True), 1e-30), p[:k]),
                      p[k:]])
    np.testing.assert_allclose(nxt, want, rtol=1e-5, atol=1e-6)
  # One step, exactly: a draft x ~ q kept with a(x), else a token from the residual r, is p.
  for i in range(k):
    out = np.zeros(v)
    for d in range(v):
      drafts = np.zeros(k, np.int32)
      drafts[i] = d
      acc, nxt = jax.device_get(speculative.rule(jnp.asarray(p, jnp.float32),
                                                 jnp.asarray(q, jnp.float32), jnp.asarray(drafts)))
      out += q[i, d] * (acc[i] * np.eye(v)[d] + (1 - acc[i]) * nxt[i])
    np.testing.assert_allclose(out, p[i], atol=1e-6)


def _chi2_p(counts, probs):
  """p-value of counts against probs, cells with an expected count under 5 pooled."""
  n = counts.sum()
  exp = probs * n
  small = exp < 5
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(exp[~small], exp[small].sum())
  keep = exp > 0
  assert obs[~keep].sum() == 0, "a token of probability 0 was drawn"
  return scistats.chisquare(obs[keep], exp[keep]).pvalue


def test_sampler_output_is_distributed_as_the_teacher():
  """accept() itself, 40000 rounds at fixed keys: the first emitted token follows p_1, the
  second (rounds that kept d_1) p_2, the bonus token (all k kept) p_{k+1}."""
  rng = np.random.default_rng(1)
  v, k, n = 5, 2, 40000
  p = rng.normal(size=(k + 1, v)).astype(np.float32) * 1.5
  q = rng.normal(size=(k, v)).astype(np.float32) * 1.5
  keys = jax.random.split(jax.random.key(0), n)

  def one(key):
    drafts = jax.random.categorical(jax.random.fold_in(key, 7), q, axis=-1).astype(jnp.int32)
    kept, tok = speculative.accept(jnp.asarray(p), jnp.asarray(q), drafts, key, greedy=False)
    return drafts, kept, tok

  drafts, kept, tok = jax.device_get(jax.jit(jax.vmap(one))(keys))
  pp = _softmax(p.astype(np.float64))
  first = np.where(kept >= 1, drafts[:, 0], tok)
  second = np.where(kept >= 2, drafts[:, 1], tok)[kept >= 1]
  bonus = tok[kept == k]
  assert 0.1 < (kept >= 1).mean() < 0.9 and bonus.size > 2000  # both paths ran
  for sample, probs in ((first, pp[0]), (second, pp[1]), (bonus, pp[2])):
    assert _chi2_p(np.bincount(sample, minlength=v), probs) > 1e-3
  # The drafter's own distribution is not the teacher's: the test could tell them apart.
  qq = _softmax(q.astype(np.float64))
  assert _chi2_p(np.bincount(drafts[:, 0], minlength=v), pp[0]) < 1e-6
  np.testing.assert_allclose(np.bincount(drafts[:, 0], minlength=v) / n, qq[0], atol=0.01)


class _SmallVocab:
  """A 6-id tokenizer for models whose whole distribution a test can enumerate."""
  vocab_size, bos_id, eos_id, pad_id, add_bos = 6, 0, None, 0, False

  def encode(self, text, add_bos=False):
    return [1 + ord(c) % 5 for c in text]


@pytest.mark.slow
def test_end_to_end_sampling_matches_the_teachers_joint_distribution():
  """Two tokens after a prompt, 600 seeds, k=2, temperature 0.8, top_k 5: their joint
  distribution against p(x1) p(x2 | x1) from the teacher's full forward."""
  tok = _SmallVocab()
  lm_t, lm_d = LM(tiny_model_config(vocab_size=8)), LM(tiny_model_config(vocab_size=8, n_layers=1))
  pt = lm_t.init(jax.random.key(0))
  teacher = inference.Model(lm_t, pt, tok)
  drafter = inference.Model(lm_d, lm_d.init(jax.random.key(5)), tok)  # accepts ~40% here
  prompt, temp, top_k, v = [1, 2, 3], 0.8, 5, tok.vocab_size

  def dist(z):  # the teacher's sampling distribution: first 6 ids, temperature, top-k
    z = np.asarray(z[:v], np.float64) / temp
    z[np.argsort(z)[:-top_k]] = -np.inf
    return _softmax(z)

  p1 = dist(np.asarray(lm_t.apply(pt, jnp.asarray([prompt])))[0, -1])
  joint = np.zeros((v, v))
  for a in range(v):
    if p1[a] > 0:
      joint[a] = p1[a] * dist(np.asarray(lm_t.apply(pt, jnp.asarray([prompt + [a]])))[0, -1])
  counts, total = np.zeros((v, v)), speculative.Stats()
  for seed in range(600):
    got, st = speculative.generate_ids(teacher, drafter, prompt, 2, k=2, temperature=temp,
                                       top_k=top_k, seed=seed, stop_at_eos=False)
    counts[got[0], got[1]] += 1
    total.drafted += st.drafted
    total.accepted += st.accepted
  assert 0.1 < total.acceptance_rate < 0.95, total.as_dict()
  assert _chi2_p(counts.ravel(), joint.ravel()) > 1e-3


def test_a_drafter_with_another_vocabulary_is_refused(pair):
  teacher, _ = pair
  lm = LM(tiny_model_config(vocab_size=8))
  other = inference.Model(lm, lm.init(jax.random.key(0)), _SmallVocab())
  with pytest.raises(UsageError, match="not the teacher's .*student.vocab=0"):
    speculative.generate_ids(teacher, other, [1, 2], 4)
  with pytest.raises(UsageError, match="draft_k=0"):
    speculative.generate_ids(teacher, teacher, [1, 2], 4, k=0)
