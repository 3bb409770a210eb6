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
