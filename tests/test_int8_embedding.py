"""The export's int8 token-lookup table (`converter.step_fn(int8_embedding=True)`)."""
import jax
import jax.numpy as jnp
import numpy as np

from distill.export import converter
from distill.models.transformer import LM
from tests.helpers import tiny_model_config


def test_int8_rows_against_numpy():
  t = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
  t[3] = 0.0  # an all-zero row must not divide by zero
  q, scale = converter.int8_rows(t)
  assert q.dtype == np.int8 and scale.shape == (10,)
  np.testing.assert_allclose(scale[:3], np.abs(t[:3]).max(-1) / 127.0, rtol=1e-6)
  np.testing.assert_array_equal(q[3], 0)
  # Round to nearest: every entry within half a step of the original.
  assert np.all(np.abs(q * scale[:, None] - t) <= scale[:, None] / 2 + 1e-7)
  assert np.abs(q).max() == 127


def test_step_with_int8_lookup_equals_model_with_dequantized_table():
  lm = LM(tiny_model_config(vocab_size=64))
  params = jax.tree.map(np.asarray, lm.init(jax.random.key(0)))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 64, (1, 5)), jnp.int32)
  cache = [a for kv in lm.init_cache(1, 16, jnp.float32) for a in kv]
  got = converter.step_fn(lm, params, 64, int8_embedding=True)(tokens, jnp.arange(5), *cache)[0]
  q, scale = converter.int8_rows(params["embed"])
  deq = q.astype(np.float32) * scale[:, None]

  def lookup(ids):  # the dequantized table for the lookup only; the unembedding keeps fp32
    return jnp.take(jnp.asarray(deq), ids, axis=0)
  want, _ = lm.apply_cached(params, tokens, lm.init_cache(1, 16, jnp.float32), 0, lookup=lookup)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  plain = converter.step_fn(lm, params, 64)(tokens, jnp.arange(5), *cache)[0]
  assert 0 < np.abs(np.asarray(plain) - np.asarray(got)).max() < 0.05  # close, not identical
