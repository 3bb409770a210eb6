"""The transformer: KV-cache decode equals the full forward; every parameter names its axes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.models import sharding
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


@pytest.mark.parametrize("name,extra", [
    ("llama", {}),
    ("llama_remat", dict(remat=True)),
    # 7 layers, every 3rd global: two scanned groups of 3 and one unrolled leftover layer.
    ("qwen3_window", dict(n_layers=7)),
    ("gemma2", dict(n_layers=4)),
])
def test_scanned_layers_equal_unrolled(name, extra):
  cfg = tiny_model_config(**{**VARIANTS[name.replace("_remat", "")], **extra})
  if name == "qwen3_window":
    cfg = cfg.replace(sliding_pattern=3)
  unrolled, scanned = LM(cfg), LM(cfg.replace(scan_layers=True))
  params = unrolled.init(jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (2, 12), 0, cfg.vocab_size)
  np.testing.assert_allclose(scanned.apply(params, tokens), unrolled.apply(params, tokens),
                             atol=2e-5, rtol=1e-5)
  loss = lambda lm: jax.grad(lambda p: jax.nn.log_softmax(lm.apply(p, tokens))[..., 3].mean())
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4),
               loss(scanned)(params), loss(unrolled)(params))
  # Feature distillation reads the residual stream after every block: same list, same order.
  _, s_states = scanned.hidden_states(params, tokens)
  _, u_states = unrolled.hidden_states(params, tokens)
  assert len(s_states) == len(u_states) == cfg.n_layers
  for a, b in zip(s_states, u_states):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def test_scanned_program_size_does_not_grow_with_depth():
  """What makes a deep model compile in time: the scanned step's HLO is the same size at 2 and
  8 layers, while the unrolled one grows with depth."""
  def hlo_len(n_layers, scan):
    lm = LM(tiny_model_config(n_layers=n_layers, scan_layers=scan))
    tokens = jnp.zeros((2, 8), jnp.int32)
    grad = jax.grad(lambda p: lm.apply(p, tokens).mean())
    return len(jax.jit(grad).lower(lm.abstract_params()).as_text())

  assert hlo_len(8, False) > 2.5 * hlo_len(2, False)
  # Only the stacking of the per-layer weights (a few lines per layer) grows.
  assert hlo_len(8, True) < 1.3 * hlo_len(2, True)
