"""Shared builders for tests: tiny configs and models."""

from distill.models.transformer import ModelConfig


def tiny_model_config(**kw) -> ModelConfig:
  base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_len=64)
  base.update(kw)
  return ModelConfig(**base)


def shrunken_config(**overrides):
  """configs/tiny.py shrunk so the whole pipeline runs in seconds."""
  from configs import tiny  # pylint: disable=import-outside-toplevel
  c = tiny.get_config()
  c.data.seq_len = 32
  c.data.batch_size = 8
  c.data.eval_batches = 2
  c.teacher.model = tiny.model(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64)
  c.student.model = tiny.model(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32)
  c.teacher.pretrain.steps = 2
  c.distill.steps = 2
  c.checkpoint_every = 1
  c.log_every = 1
  c.eval.prompts = ("The",)
  c.eval.sample_tokens = 4
  for k, v in overrides.items():
    node = c
    parts = k.split(".")
    for p in parts[:-1]:
      node = node[p]
    node[parts[-1]] = v
  return c


def fit_ce(lm, params, batches, steps: int, lr: float = 3e-3):
  """`steps` of Adam on hard-label CE over `batches` (an iterator of distill.data batches).

  For tests that need a briefly trained model: peaked logits, real text from greedy decoding.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  tx = optax.adam(lr)

  @jax.jit
  def step(params, opt, x, y, m):
    def loss(p):
      logp = jax.nn.log_softmax(lm.apply(p, x))
      nll = -jnp.take_along_axis(logp, y[..., None], -1)[..., 0]
      return (nll * m).sum() / m.sum()
    upd, opt = tx.update(jax.grad(loss)(params), opt, params)
    return optax.apply_updates(params, upd), opt

  opt = tx.init(params)
  for _ in range(steps):
    b = next(batches)
    params, opt = step(params, opt, b["inputs"], b["targets"], b["mask"])
  return params
