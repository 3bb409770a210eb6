"""The transformer: KV-cache decode equals the full forward; every parameter names its axes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import sharding
from distill.models.transformer import LM, count_params, flops_per_token
from tests.helpers import tiny_model_config

VARIANTS = {
    "llama": {},
    "qwen3_window": dict(qk_norm=True, qkv_bias=True, sliding_window=5, sliding_pattern=2),
    "gemma2": dict(norm_plus_one=True, post_norms=True, embed_scale=True, mlp="geglu",
                   attn_softcap=50.0, final_softcap=30.0, tie_embeddings=True),
    "gpt2": dict(norm="layer", pos="learned", mlp="gelu", qkv_bias=True, mlp_bias=True,
                 out_bias=True, n_kv_heads=4),
    "mha_untied": dict(n_kv_heads=4, tie_embeddings=False),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_cached_decode_equals_full_forward(name):
  cfg = tiny_model_config(**VARIANTS[name])
  lm = LM(cfg)
  params = jax.jit(lm.init)(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 13), 0, cfg.vocab_size)
  full = np.asarray(jax.jit(lm.apply)(params, tokens))
  step = jax.jit(lm.apply_cached)
  cache = lm.init_cache(2, 20)
  logits, cache = step(params, tokens[:, :6], cache, 0)  # prefill
  outs = [np.asarray(logits)]
  for i in range(6, 13):  # decode one token at a time
    logits, cache = step(params, tokens[:, i:i + 1], cache, i)
    outs.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(outs, axis=1), full, atol=2e-5, rtol=1e-5)


def test_causality_future_tokens_do_not_change_past_logits():
  lm = LM(tiny_model_config())
  params = lm.init(jax.random.key(0))
  a = jnp.array([[5, 6, 7, 8, 9]])
  b = jnp.array([[5, 6, 7, 1, 2]])
  np.testing.assert_allclose(lm.apply(params, a)[:, :3], lm.apply(params, b)[:, :3], atol=1e-6)


def test_every_parameter_names_its_logical_axes():
  lm = LM(tiny_model_config(qkv_bias=True, qk_norm=True, tie_embeddings=False))
  shapes = lm.abstract_params()
  axes = lm.logical_axes()
  flat_s = jax.tree.leaves(shapes)
  flat_a = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  assert len(flat_s) == len(flat_a) > 0
  rule_names = {r for r, _ in sharding.RULES}
  for s, a in zip(flat_s, flat_a):
    assert len(a) == len(s.shape), (a, s.shape)
    assert set(a) <= rule_names


def test_param_count_and_flops_match_arrays():
  cfg = tiny_model_config(tie_embeddings=False)
  params = LM(cfg).init(jax.random.key(0))
  d, f, k, v = cfg.d_model, cfg.d_ff, cfg.k, cfg.vocab_size
  per_layer = d * k * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + 3 * d * f + 2 * d
  assert count_params(params) == v * d + cfg.n_layers * per_layer + d + d * v
  # 2 FLOPs per weight use (embedding lookup excluded) + attention at this length.
  dense = cfg.n_layers * (per_layer - 2 * d) + d * v
  expect = 2 * dense + cfg.n_layers * 4 * cfg.n_heads * k * (16 + 1) / 2
  assert flops_per_token(cfg, 16) == pytest.approx(expect)


@pytest.mark.parametrize("window", [0, 4])
def test_fused_attention_path_matches_einsum(window):
  """The dot_product_attention path (what the cudnn preset runs) equals the einsum path."""
  cfg = tiny_model_config(sliding_window=window)
  params = LM(cfg).init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 11), 0, cfg.vocab_size)
  ref = LM(cfg).apply(params, tokens)
  got = LM(cfg.replace(attention="dot_product")).apply(params, tokens)
  np.testing.assert_allclose(got, ref, atol=2e-5, rtol=1e-5)
