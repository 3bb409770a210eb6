"""The jitted KV-cache sampler against independent references: the full forward's argmax,
NumPy top-k / top-p filtering, the one-sequence generate loop, and the unsharded result."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.inference import sampling
from distill.models import sharding
from distill.models.transformer import LM
from tests.helpers import tiny_model_config


def _model(seed=0, **kw):
  lm = LM(tiny_model_config(**kw))
  params = lm.init(jax.random.key(seed))
  # Sharpen the random init so greedy choices are not near-ties (robust argmax comparisons).
  params["embed"] = params["embed"] * 4.0
  return lm, params


def _prompts(b=4, p=5, seed=0):
  return np.random.default_rng(seed).integers(0, 64, size=(b, p)).astype(np.int32)


def test_greedy_equals_argmax_of_full_forward_at_every_step():
  lm, params = _model()
  cfg = sampling.SampleConfig(gen_len=12, temperature=0.0)
  out = jax.device_get(sampling.run(lm, params, _prompts(), jax.random.key(0), cfg))
  tokens = out["tokens"]
  assert tokens.shape == (4, 17) and out["gen_mask"][:, 5:].all() and not out["gen_mask"][:, :5].any()
  logits = np.asarray(lm.apply(params, jnp.asarray(tokens)))
  # Token at position t+1 is the argmax of the full forward's logits at t, for every new token.
  np.testing.assert_array_equal(tokens[:, 5:], logits[:, 4:-1].argmax(-1))
  np.testing.assert_array_equal(tokens[:, :5], _prompts())


def test_variable_prompt_lengths_match_each_row_alone():
  lm, params = _model()
  prompts = _prompts(b=3, p=6)
  lens = np.array([2, 6, 4], np.int32)
  cfg = sampling.SampleConfig(gen_len=5, temperature=0.0)
  out = jax.device_get(sampling.run(lm, params, prompts, jax.random.key(0), cfg,
                                    prompt_lens=lens, prefill=2))
  for r, n in enumerate(lens):
    alone = jax.device_get(sampling.run(lm, params, prompts[r:r + 1, :n], jax.random.key(0), cfg))
    np.testing.assert_array_equal(out["tokens"][r, :n + 5], alone["tokens"][0])
    assert out["gen_mask"][r].sum() == 5 and out["gen_mask"][r, n:n + 5].all()


def test_temperature_sampling_is_per_row_and_matches_reference_draws():
  """Row r's token at pos is categorical(fold_in(fold_in(key, row_id), pos), logits / T)."""
  lm, params = _model()
  cfg = sampling.SampleConfig(gen_len=6, temperature=0.8)
  key = jax.random.key(3)
  out = jax.device_get(sampling.run(lm, params, _prompts(), key, cfg, row_ids=[7, 8, 9, 10]))
  tokens = out["tokens"]
  logits = np.asarray(lm.apply(params, jnp.asarray(tokens)))
  for r in range(4):
    for pos in range(5, 11):
      k = jax.random.fold_in(jax.random.fold_in(key, 7 + r), pos)
      want = int(jax.random.categorical(k, jnp.asarray(logits[r, pos - 1] / 0.8)))
      assert tokens[r, pos] == want, (r, pos)
  # The same row id gives the same sample whatever batch it is in.
  alone = jax.device_get(sampling.run(lm, params, _prompts()[2:3], key, cfg, row_ids=[9]))
  np.testing.assert_array_equal(alone["tokens"][0], tokens[2])


def test_top_k_and_top_p_filters_match_numpy():
  z = np.random.default_rng(1).normal(size=(3, 40)).astype(np.float32) * 3
  for top_k, top_p in ((5, 1.0), (0, 0.7), (8, 0.5)):
    cfg = sampling.SampleConfig(gen_len=1, temperature=0.5, top_k=top_k, top_p=top_p, vocab=37)
    got = np.asarray(sampling.filter_logits(jnp.asarray(z), cfg)) > -1e30
    for r in range(3):
      zz = z[r, :37] / 0.5
      keep = np.ones(37, bool)
      if top_k:
        keep &= zz >= np.sort(zz)[-top_k]
      order = np.argsort(-np.where(keep, zz, -np.inf))
      p = np.exp(zz - zz.max()) * keep
      p /= p.sum()
      kept, mass = set(), 0.0
      for i in order:
        if mass >= top_p or not keep[i]:
          break
        kept.add(i)
        mass += p[i]
      want = np.zeros(40, bool)
      want[list(kept)] = True
      np.testing.assert_array_equal(got[r], want, err_msg=f"top_k={top_k} top_p={top_p}")


def test_eos_stops_a_row_and_pads_after_it():
  lm, params = _model()
  cfg0 = sampling.SampleConfig(gen_len=8, temperature=0.0)
  free = jax.device_get(sampling.run(lm, params, _prompts(), jax.random.key(0), cfg0))["tokens"]
  eos = int(free[1, 7])  # row 1's third new token becomes the stop token
  cfg = sampling.SampleConfig(gen_len=8, temperature=0.0, eos_id=eos, pad_id=63)
  out = jax.device_get(sampling.run(lm, params, _prompts(), jax.random.key(0), cfg))
  for r in range(4):
    hits = np.flatnonzero(free[r, 5:] == eos)
    n = hits[0] + 1 if hits.size else 8
    np.testing.assert_array_equal(out["tokens"][r, :5 + n], free[r, :5 + n])
    assert (out["tokens"][r, 5 + n:] == 63).all() and out["lengths"][r] == n
    assert out["gen_mask"][r].sum() == n


def test_matches_the_one_sequence_generate_loop():
  from distill.inference import model as inference
  from distill.data import tokenizer as tokenizers
  lm, params = _model(vocab_size=264)
  model = inference.Model(lm, params, tokenizers.from_config("byte"))
  ids = [72, 105, 32]
  loop = model.generate_ids(ids, 10, stop_at_eos=False)
  batched = model.generate_batch_ids([ids, ids[:2]], 10, stop_at_eos=False)
  assert batched[0] == loop
  assert batched[1] == model.generate_ids(ids[:2], 10, stop_at_eos=False)


def test_too_long_raises():
  lm, params = _model()
  with pytest.raises(ValueError, match="exceeds the model's context"):
    sampling.run(lm, params, _prompts(p=60), jax.random.key(0), sampling.SampleConfig(gen_len=8))


def test_repeat_rate_counts_repeated_4grams():
  toks = np.array([[1, 2, 3, 4, 1, 2, 3, 4, 9], [5, 6, 7, 8, 9, 0, 0, 0, 0]])
  mask = np.array([[1] * 9, [1] * 5 + [0] * 4])
  # row 0: 6 grams, (1,2,3,4) once repeated -> 1; row 1: 2 grams, none repeated.
  assert sampling.repeat_rate(toks, mask) == pytest.approx(1 / 8)


def _sharded_run(mesh):
  lm, params = _model()
  prompts = _prompts(b=8, p=5)
  cfg = sampling.SampleConfig(gen_len=10, temperature=1.0, top_k=20, top_p=0.9)
  p = jax.device_put(params, sharding.param_shardings(lm, mesh))
  out = sampling.run(lm, p, prompts, jax.random.key(5), cfg, mesh=mesh)
  return np.asarray(out["tokens"]), len(out["tokens"].sharding.device_set)


def test_same_samples_on_one_device_and_on_eight():
  """conftest gives 8 fake CPU devices: a mesh on the first one vs meshes over all eight."""
  one, n = _sharded_run(sharding.make_mesh(sharding.MeshSpec(data=1, fsdp=1, tensor=1),
                                           devices=jax.devices()[:1]))
  assert n == 1
  for shape in ((8, 1, 1), (2, 2, 2)):
    eight, n = _sharded_run(sharding.make_mesh(sharding.MeshSpec(*shape)))
    assert n == 8
    np.testing.assert_array_equal(eight, one, err_msg=str(shape))
