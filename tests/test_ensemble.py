"""Ensemble soft targets against a hand-written NumPy weighted average of probabilities."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import losses
from distill.errors import ConfigError


def test_ensemble_of_one_teacher_is_that_teacher():
  rng = np.random.default_rng(0)
  t = jnp.asarray(rng.normal(size=(2, 5, 11)) * 3, jnp.float32)
  s = jnp.asarray(rng.normal(size=(2, 5, 11)), jnp.float32)
  got = losses.ensemble_logprobs([t], [0.7], temperature=2.0)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jax.nn.log_softmax(t / 2.0, axis=-1)))
  for kind in losses.KINDS:
    logq = jax.nn.log_softmax(s / 2.0, axis=-1)
    a = losses.per_token_from_logprobs(kind, got, logq, beta=0.5, skew=0.1)
    b = losses.divergence_per_token(kind, s, t, temperature=2.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ensemble_target_is_the_weighted_numpy_average():
  rng = np.random.default_rng(1)
  ts = [rng.normal(size=(3, 7)) * 2 for _ in range(3)]
  ws = [0.5, 1.5, 0.0]

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  want = sum(w * softmax(t / 1.5) for w, t in zip(ws, ts)) / sum(ws)
  got = np.exp(np.asarray(losses.ensemble_logprobs([jnp.asarray(t, jnp.float32) for t in ts], ws,
                                                   temperature=1.5)))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("ws", [[0.0, 0.0], [1.0, -2.0], [float("nan")], []])
def test_bad_weights_are_one_clear_line(ws):
  with pytest.raises(ConfigError, match="must be finite, >= 0 and sum to a positive number"):
    losses.check_weights(ws)
