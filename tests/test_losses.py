"""distill.losses against an independent float64 NumPy/SciPy reference."""

import functools

from hypothesis import given, settings, strategies as st
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from distill import losses

KINDS = losses.KINDS
TEMPS = (0.5, 1.0, 2.0, 4.0)
FAST = settings(max_examples=20, deadline=None)
# Few distinct shapes, so compiled functions are reused across examples.
VOCABS = (2, 17, 300)
LEADS = ((3, 5),)


def _all_kinds(fn, static=()):
  """Jitted fn evaluated for every kind at once: one compile per shape."""
  return jax.jit(lambda *a, **kw: {k: fn(k, *a, **kw) for k in KINDS},
                 static_argnames=static)


j_divergence = _all_kinds(losses.divergence, ("scale_by_t2",))
j_per_token = _all_kinds(losses.divergence_per_token)
j_objective = _all_kinds(
    lambda kind, *a, **kw: losses.distill_objective(*a, kind=kind, **kw))
j_sparse = _all_kinds(losses.sparse_divergence, ("tail", "scale_by_t2"))
j_cross_entropy = jax.jit(losses.cross_entropy)
j_topk = jax.jit(losses.topk_targets, static_argnames=("k",))


# ---------------------------------------------------------------------------
# Reference: straightforward float64 formulas.
# ---------------------------------------------------------------------------


def _xlogy_ratio(a, b):
  """sum a * log(a / b) with 0 log 0 = 0."""
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0)
  return terms.sum(-1)


def ref_per_token_probs(kind, p, q, beta=0.5, skew=0.1):
  if kind == "forward_kl":
    return _xlogy_ratio(p, q)
  if kind == "reverse_kl":
    return _xlogy_ratio(q, p)
  if kind == "jsd":
    m = beta * p + (1 - beta) * q
    return beta * _xlogy_ratio(p, m) + (1 - beta) * _xlogy_ratio(q, m)
  if kind == "tvd":
    return 0.5 * np.abs(p - q).sum(-1)
  if kind == "skew_forward_kl":
    return _xlogy_ratio(p, skew * p + (1 - skew) * q)
  if kind == "skew_reverse_kl":
    return _xlogy_ratio(q, skew * q + (1 - skew) * p)
  raise AssertionError(kind)


def ref_per_token(kind, s, t, temperature=1.0, beta=0.5, skew=0.1):
  p = special.softmax(np.float64(t) / temperature, axis=-1)
  q = special.softmax(np.float64(s) / temperature, axis=-1)
  return ref_per_token_probs(kind, p, q, beta, skew)


def ref_mean(values, mask):
  mask = np.ones(values.shape) if mask is None else np.float64(mask)
  total = mask.sum()
  return 0.0 if total == 0 else float((values * mask).sum() / total)


def ref_ce(s, labels):
  logq = special.log_softmax(np.float64(s), axis=-1)
  return -np.take_along_axis(logq, labels[..., None], -1)[..., 0]


def _close(actual, expected, rtol=1e-5, atol=2e-6):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                             rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Random inputs.
# ---------------------------------------------------------------------------


@st.composite
def cases(draw, vocabs=VOCABS):
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  lead = draw(st.sampled_from(LEADS))
  vocab = draw(st.sampled_from(vocabs))
  scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
  s = (rng.normal(size=lead + (vocab,)) * scale).astype(np.float32)
  t = (rng.normal(size=lead + (vocab,)) * scale).astype(np.float32)
  # Masks are float here (one compile per shape); None and bool masks are
  # covered by the unit tests below.
  mask_kind = draw(st.sampled_from(["ones", "random", "zero", "row", "float"]))
  if mask_kind == "ones":
    mask = np.ones(lead, np.float32)
  elif mask_kind == "zero":
    mask = np.zeros(lead, np.float32)
  elif mask_kind == "row":
    mask = (rng.uniform(size=lead) > 0.3).astype(np.float32)
    mask[0] = 0.0  # one fully masked row
  elif mask_kind == "float":
    mask = rng.uniform(size=lead).astype(np.float32)
  else:
    mask = (rng.uniform(size=lead) > 0.4).astype(np.float32)
  return dict(s=s, t=t, mask=mask, rng=rng, vocab=vocab,
              temperature=draw(st.sampled_from(TEMPS)),
              beta=draw(st.sampled_from([0.1, 0.5, 0.9])),
              skew=draw(st.sampled_from([0.0, 0.1, 0.5])))


def _kw(c):
  return dict(temperature=c["temperature"], beta=c["beta"], skew=c["skew"])


# ---------------------------------------------------------------------------
# Dense divergences.
# ---------------------------------------------------------------------------


@FAST
@given(cases())
def test_divergence_matches_reference(c):
  got = j_divergence(c["s"], c["t"], mask=c["mask"], **_kw(c))
  for kind in KINDS:
    assert got[kind].dtype == jnp.float32 and got[kind].shape == ()
    want = ref_mean(ref_per_token(kind, c["s"], c["t"], **_kw(c)), c["mask"])
    _close(got[kind], want)


@pytest.mark.parametrize("mask", [None, "bool"])
def test_none_and_bool_masks(mask):
  rng = np.random.default_rng(9)
  s, t = np.float32(rng.normal(size=(2, 3, 8))), np.float32(
      rng.normal(size=(2, 3, 8)))
  if mask == "bool":
    mask = rng.uniform(size=(2, 3)) > 0.5
  got = j_divergence(s, t, mask=mask, temperature=2.0, scale_by_t2=True)
  for kind in KINDS:
    _close(got[kind], 4.0 * ref_mean(ref_per_token(kind, s, t, 2.0), mask))


@jax.jit
def _stacked_divergences(s, t, mask, temperature, beta, skew):
  # Every kind in one vector output, so one compile covers them all.
  return jnp.stack([
      losses.divergence(k, s, t, mask=mask, temperature=temperature,
                        beta=beta, skew=skew) for k in KINDS])


SMOOTH_KINDS = tuple(k for k in KINDS if k != "tvd")


@jax.jit
def _stacked_smooth(s, t, mask, temperature, beta, skew):
  return jnp.stack([
      losses.divergence(k, s, t, mask=mask, temperature=temperature,
                        beta=beta, skew=skew) for k in SMOOTH_KINDS])


@settings(max_examples=8, deadline=None)
@given(cases(vocabs=(2, 17)))
def test_divergence_gradients(c):
  # TVD = 1/2 sum |P - Q| has kinks where P_i = Q_i, so finite differences there disagree
  # with any (sub)gradient; it gets its own check away from the kinks below.
  with jax.enable_x64(True):
    mask = np.float64(c["mask"])
    f = lambda s, t: _stacked_smooth(s, t, mask, *_kw(c).values())
    jtu.check_grads(f, (np.float64(c["s"]), np.float64(c["t"])), order=1,
                    modes=("rev",), atol=1e-5, rtol=1e-5)


def test_tvd_gradient_away_from_kinks():
  rng = np.random.default_rng(7)
  s, t = rng.normal(size=(2, 3, 11)) * 2.0, rng.normal(size=(2, 3, 11)) * 2.0
  p, q = special.softmax(t, -1), special.softmax(s, -1)
  assert np.abs(p - q).min() > 1e-5  # eps=1e-7 steps stay on one side of every kink
  with jax.enable_x64(True):
    jtu.check_grads(lambda s, t: losses.divergence("tvd", s, t), (s, t), order=1,
                    modes=("rev",), eps=1e-7, atol=1e-5, rtol=1e-5)


def test_gradients_finite_when_probabilities_underflow():
  rng = np.random.default_rng(0)
  s = np.float32(rng.normal(size=(2, 3, 40)) * 500.0)
  t = np.float32(rng.normal(size=(2, 3, 40)) * 500.0)
  f = jax.jit(jax.value_and_grad(
      lambda s, t, temp: sum(losses.divergence(k, s, t, temperature=temp)
                             for k in KINDS), argnums=(0, 1)))
  for temperature in TEMPS:
    value, grads = f(s, t, temperature)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("kind", KINDS)
def test_all_zero_mask_gives_zero_with_finite_zero_grads(kind):
  s = np.float32(np.random.default_rng(1).normal(size=(2, 4, 7)))
  t = np.float32(np.random.default_rng(2).normal(size=(2, 4, 7)))
  mask = np.zeros((2, 4), bool)
  f = lambda s, t: losses.divergence(kind, s, t, mask=mask, temperature=2.0,
                                     scale_by_t2=True)
  value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(s, t)
  assert float(value) == 0.0
  for g in grads:
    np.testing.assert_array_equal(g, 0.0)
  loss, metrics = losses.distill_objective(s, t, np.zeros((2, 4), int),
                                           mask=mask, kind=kind, alpha=0.5)
  assert float(loss) == 0.0 and float(metrics["ce"]) == 0.0


@FAST
@given(cases())
def test_invariants(c):
  s, t = c["s"], c["t"]
  per_token = j_per_token(s, t, **_kw(c))
  same = j_per_token(t, t, **_kw(c))
  # Changing logits under the mask changes nothing.
  keep = c["mask"] != 0
  noise = c["rng"].normal(size=s.shape).astype(np.float32) * 10
  s2 = np.where(keep[..., None], s, s + noise)
  t2 = np.where(keep[..., None], t, t - noise)
  a = j_divergence(s, t, mask=c["mask"], **_kw(c))
  b = j_divergence(s2, t2, mask=c["mask"], **_kw(c))
  for kind in KINDS:
    assert (np.asarray(per_token[kind]) >= -1e-6).all()
    np.testing.assert_allclose(same[kind], 0.0, atol=1e-6)
    np.testing.assert_allclose(a[kind], b[kind], rtol=1e-6, atol=1e-7)


@FAST
@given(cases())
def test_jsd_and_tvd_symmetric(c):
  kw = dict(mask=c["mask"], temperature=c["temperature"], beta=0.5)
  a = j_divergence(c["s"], c["t"], **kw)
  b = j_divergence(c["t"], c["s"], **kw)
  np.testing.assert_allclose(a["jsd"], b["jsd"], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(a["tvd"], b["tvd"], rtol=1e-5, atol=1e-7)


@settings(max_examples=12, deadline=None)
@given(cases())
def test_bf16_inputs_give_fp32_results(c):
  s16 = jnp.asarray(c["s"] * 3, jnp.bfloat16)
  t16 = jnp.asarray(c["t"] * 3, jnp.bfloat16)
  got = j_divergence(s16, t16, mask=c["mask"], **_kw(c))
  want = j_divergence(np.float32(s16), np.float32(t16), mask=c["mask"],
                      **_kw(c))
  for kind in KINDS:
    assert got[kind].dtype == jnp.float32
    np.testing.assert_allclose(got[kind], want[kind], rtol=1e-6, atol=1e-7)
    ref = ref_mean(ref_per_token(kind, np.float64(s16), np.float64(t16),
                                 **_kw(c)), c["mask"])
    _close(got[kind], ref)


def test_unknown_kind_names_valid_kinds():
  x = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match="forward_kl"):
    losses.divergence("kl", x, x)
  with pytest.raises(ValueError, match="skew_reverse_kl"):
    losses.distill_objective(x, x, np.zeros(2, int), kind="nope")


# ---------------------------------------------------------------------------
# Cross-entropy and the combined objective.
# ---------------------------------------------------------------------------


@FAST
@given(cases())
def test_cross_entropy_and_objective(c):
  labels = c["rng"].integers(0, c["vocab"], size=c["s"].shape[:-1])
  ce = j_cross_entropy(c["s"], labels, mask=c["mask"])
  want_ce = ref_mean(ref_ce(c["s"], labels), c["mask"])
  _close(ce, want_ce)
  alpha = 0.3
  out = j_objective(c["s"], c["t"], labels, mask=c["mask"], alpha=alpha,
                    **_kw(c))
  for kind in KINDS:
    loss, metrics = out[kind]
    want_div = ref_mean(ref_per_token(kind, c["s"], c["t"], **_kw(c)),
                        c["mask"]) * c["temperature"]**2
    # x T^2 scales fp32's rounding of sum p (log p - log q) too (seen: 2.3e-6 at V = 300).
    _close(metrics["divergence"], want_div, atol=2e-6 * max(1.0, c["temperature"]**2))
    _close(metrics["ce"], want_ce)
    _close(loss, (1 - alpha) * want_div + alpha * want_ce)
    assert all(v.dtype == jnp.float32 and v.shape == () for v in
               metrics.values())


def test_objective_accepts_traced_alpha_and_temperature():
  rng = np.random.default_rng(3)
  s, t = np.float32(rng.normal(size=(2, 3, 11))), np.float32(
      rng.normal(size=(2, 3, 11)))
  labels = rng.integers(0, 11, size=(2, 3))
  alpha_fn = losses.schedule("linear", 0.0, 1.0, 10)
  temp_fn = losses.schedule("cosine", 4.0, 1.0, 10)

  @jax.jit
  def step(i):
    return losses.distill_objective(s, t, labels, kind="jsd",
                                    alpha=alpha_fn(i), temperature=temp_fn(i))

  loss, metrics = step(jnp.int32(10))
  want_ce = ref_ce(s, labels).mean()
  _close(loss, want_ce)
  loss0, metrics0 = step(jnp.int32(0))
  _close(loss0, ref_per_token("jsd", s, t, 4.0).mean() * 16.0)


def test_softcap_in_dense_objective():
  rng = np.random.default_rng(4)
  s, t = np.float32(rng.normal(size=(3, 9)) * 20), np.float32(
      rng.normal(size=(3, 9)) * 20)
  labels = rng.integers(0, 9, size=3)
  _, m = losses.distill_objective(s, t, labels, student_softcap=10.0,
                                  teacher_softcap=5.0, scale_by_t2=False)
  s_c, t_c = 10.0 * np.tanh(s / 10.0), 5.0 * np.tanh(t / 5.0)
  _close(m["divergence"], ref_per_token("forward_kl", s_c, t_c).mean())
  _close(m["ce"], ref_ce(s_c, labels).mean())


# ---------------------------------------------------------------------------
# Chunked == dense.
# ---------------------------------------------------------------------------


def _hidden_case(seed, b, t_len, d_s, d_t, vocab):
  rng = np.random.default_rng(seed)
  return (np.float32(rng.normal(size=(b, t_len, d_s))),
          np.float32(rng.normal(size=(d_s, vocab)) / np.sqrt(d_s) * 3),
          np.float32(rng.normal(size=(b, t_len, d_t))),
          np.float32(rng.normal(size=(d_t, vocab)) / np.sqrt(d_t) * 3),
          rng.integers(0, vocab, size=(b, t_len)),
          rng.uniform(size=(b, t_len)) > 0.25)


@pytest.mark.parametrize("kind,chunk,caps", [
    ("forward_kl", 4, (None, None)),
    ("reverse_kl", 5, (None, None)),
    ("jsd", 3, (8.0, None)),
    ("skew_forward_kl", 7, (None, 6.0)),
    ("skew_reverse_kl", 1, (5.0, 5.0)),
])
def test_chunked_matches_dense(kind, chunk, caps):
  hs, ws, ht, wt, labels, mask = _hidden_case(hash(kind) % 1000, 2, 13, 6, 10,
                                              37)
  kw = dict(mask=mask, kind=kind, alpha=0.25, temperature=2.0, beta=0.3,
            skew=0.2, student_softcap=caps[0], teacher_softcap=caps[1])

  def dense(hs, ws, ht, wt):
    s = losses.logits_from_hidden(hs, ws)
    t = losses.logits_from_hidden(ht, wt)
    return losses.distill_objective(s, t, labels, **kw)

  def chunked(hs, ws, ht, wt):
    return losses.chunked_distill_objective(hs, ws, ht, wt, labels,
                                            chunk_size=chunk, **kw)

  args = (hs, ws, ht, wt)
  (a, ma), ga = jax.jit(jax.value_and_grad(dense, argnums=(0, 1, 2, 3),
                                           has_aux=True))(*args)
  (b, mb), gb = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2, 3),
                                           has_aux=True))(*args)
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for key in ma:
    np.testing.assert_allclose(ma[key], mb[key], rtol=1e-5)
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  # And both agree with the float64 reference.
  s = np.float64(hs) @ np.float64(ws)
  t = np.float64(ht) @ np.float64(wt)
  if caps[0]:
    s = caps[0] * np.tanh(s / caps[0])
  if caps[1]:
    t = caps[1] * np.tanh(t / caps[1])
  want_div = ref_mean(ref_per_token(kind, s, t, 2.0, 0.3, 0.2), mask) * 4.0
  _close(mb["divergence"], want_div)
  _close(mb["ce"], ref_mean(ref_ce(s, labels), mask))


def test_chunked_all_masked_and_chunk_larger_than_length():
  hs, ws, ht, wt, labels, _ = _hidden_case(5, 1, 3, 4, 4, 11)
  mask = np.zeros((1, 3))
  f = lambda hs, ws: losses.chunked_distill_objective(
      hs, ws, ht, wt, labels, mask=mask, chunk_size=64)[0]
  value, grads = jax.value_and_grad(f, argnums=(0, 1))(hs, ws)
  assert float(value) == 0.0
  assert all(np.array_equal(g, np.zeros_like(g)) for g in grads)


def test_chunked_bf16_inputs_match_dense():
  hs, ws, ht, wt, labels, mask = _hidden_case(6, 2, 10, 8, 8, 19)
  args = [jnp.asarray(x, jnp.bfloat16) for x in (hs, ws, ht, wt)]
  dense_loss, _ = losses.distill_objective(
      losses.logits_from_hidden(args[0], args[1]),
      losses.logits_from_hidden(args[2], args[3]), labels, mask=mask,
      kind="jsd")
  loss, _ = losses.chunked_distill_objective(*args, labels, mask=mask,
                                             chunk_size=3, kind="jsd")
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, dense_loss, rtol=1e-5)


# ---------------------------------------------------------------------------
# Sparse teacher targets.
# ---------------------------------------------------------------------------


def ref_sparse(kind, s, ids, lp, temperature, tail, beta=0.5, skew=0.1):
  s = np.float64(s)
  lp = np.float64(lp)
  if tail == "renormalize":
    q = special.softmax(np.take_along_axis(s, ids, -1) / temperature, -1)
    p = special.softmax(lp / temperature, -1)
  else:
    q_full = special.softmax(s, -1)
    q_top = np.take_along_axis(q_full, ids, -1)
    q1 = np.concatenate([q_top, 1 - q_top.sum(-1, keepdims=True)], -1)
    p_top = np.exp(lp)
    p_rest = np.maximum(1 - p_top.sum(-1, keepdims=True), losses.TAIL_FLOOR)
    p1 = np.concatenate([p_top, p_rest], -1)
    q = special.softmax(np.log(q1) / temperature, -1)
    p = special.softmax(np.log(p1) / temperature, -1)
  return ref_per_token_probs(kind, p, q, beta, skew)


@FAST
@given(cases(), st.sampled_from(losses.TAIL_RULES))
def test_sparse_full_k_equals_dense(c, tail):
  ids, lp = j_topk(c["t"], k=c["vocab"])
  got = j_sparse(c["s"], ids, lp, mask=c["mask"], tail=tail, **_kw(c))
  want = j_divergence(c["s"], c["t"], mask=c["mask"], **_kw(c))
  for kind in KINDS:
    np.testing.assert_allclose(got[kind], want[kind], rtol=1e-5, atol=2e-6)


@FAST
@given(cases(vocabs=(17,)), st.sampled_from(losses.TAIL_RULES),
       st.sampled_from(["one", "half", "all_but_one"]))
def test_sparse_matches_reference(c, tail, k_rule):
  k = {"one": 1, "half": max(c["vocab"] // 2, 1),
       "all_but_one": max(c["vocab"] - 1, 1)}[k_rule]
  ids, lp = j_topk(c["t"], k=k)
  assert ids.dtype == jnp.int32 and lp.dtype == jnp.float32
  np.testing.assert_array_equal(
      ids, np.argsort(-np.float64(c["t"]), -1, kind="stable")[..., :k])
  _close(lp, np.take_along_axis(special.log_softmax(np.float64(c["t"]), -1),
                                np.asarray(ids), -1))
  # The teacher's rest mass 1 - sum(exp(lp)) is ill-conditioned in fp32 (it
  # can be ~1e-7 of noise), so compare the formulas in float64.
  s, t = np.float64(c["s"]), np.float64(c["t"])
  with jax.enable_x64(True):
    ids, lp = j_topk(t, k=k)
    got = j_sparse(s, ids, lp, mask=np.float64(c["mask"]), tail=tail,
                   **_kw(c))
    ids, lp = np.asarray(ids), np.asarray(lp)
  for kind in KINDS:
    want = ref_mean(ref_sparse(kind, s, ids, lp, tail=tail, **_kw(c)),
                    c["mask"])
    _close(got[kind], want, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("tail", losses.TAIL_RULES)
def test_sparse_grads_finite_and_zero_at_match(tail):
  rng = np.random.default_rng(7)
  t = np.float32(rng.normal(size=(2, 3, 30)) * 30)  # top-k holds ~all mass
  ids, lp = losses.topk_targets(t, 5)
  labels = np.zeros((2, 3), int)
  f = jax.jit(jax.value_and_grad(lambda s: sum(
      losses.sparse_distill_objective(s, ids, lp, labels, kind=kind,
                                      tail=tail, temperature=2.0,
                                      alpha=0.1)[0] for kind in KINDS)))
  value, grad = f(np.float32(rng.normal(size=t.shape)))
  assert np.isfinite(value) and np.isfinite(grad).all()
  # Moderate logits keep the teacher's rest mass above fp32 noise, where the
  # rest bucket is exact and a student equal to the teacher scores 0.
  t = t / 10
  ids, lp = losses.topk_targets(t, 5)
  same = j_sparse(t, ids, lp, tail=tail, temperature=2.0)
  for kind in KINDS:
    np.testing.assert_allclose(same[kind], 0.0, atol=1e-5)


def test_sparse_unknown_tail():
  x = np.zeros((2, 5), np.float32)
  ids, lp = losses.topk_targets(x, 2)
  with pytest.raises(ValueError, match="tail_bucket"):
    losses.sparse_divergence("forward_kl", x, ids, lp, tail="drop")


# ---------------------------------------------------------------------------
# Schedules and hidden-state losses.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", losses.SCHEDULES)
def test_schedule_endpoints_and_jit(kind):
  fn = losses.schedule(kind, 0.2, 0.8, 100)
  jitted = jax.jit(fn)
  end = 0.2 if kind == "constant" else 0.8
  for step, want in [(0, 0.2), (100, end), (1000, end), (-5, 0.2)]:
    for f in (fn, jitted):
      value = f(jnp.int32(step))
      assert value.dtype == jnp.float32 and value.shape == ()
      np.testing.assert_allclose(value, want, rtol=1e-6)
  mid = float(jitted(jnp.int32(50)))
  np.testing.assert_allclose(mid, 0.2 if kind == "constant" else 0.5,
                             rtol=1e-6)
  if kind == "cosine":
    assert float(jitted(jnp.int32(10))) < 0.2 + 0.6 * 0.1
  with pytest.raises(ValueError, match="linear"):
    losses.schedule("step", 0, 1, 10)


def _ref_schedule(kind, start, end, total, steps):
  """NumPy float64: start + (end - start) * f(clip(step / total, 0, 1))."""
  steps = np.asarray(steps, np.float64)
  if kind == "constant":
    return np.full(steps.shape, start)
  frac = np.clip(steps / total, 0.0, 1.0) if total else np.ones(steps.shape)
  if kind == "cosine":
    frac = 0.5 * (1.0 - np.cos(np.pi * frac))
  return start + (end - start) * frac


@pytest.mark.parametrize("kind", losses.SCHEDULES)
@pytest.mark.parametrize("start,end,total", [(0.0, 1.0, 10), (4.0, 1.0, 7), (1.0, 4.0, 300),
                                             (0.3, -0.2, 1), (0.5, 0.9, 0), (2.0, 2.0, 5)])
def test_schedule_matches_numpy(kind, start, end, total):
  """Every step of the schedule (before, across and after [0, total]) against NumPy, to fp32
  rounding of the larger endpoint; the constant schedule exactly."""
  steps = np.arange(-3, total + 4)
  got = np.asarray(jax.jit(jax.vmap(losses.schedule(kind, start, end, total)))(steps))
  assert got.dtype == np.float32
  want = _ref_schedule(kind, start, end, total, steps)
  if kind == "constant":
    np.testing.assert_array_equal(got, np.float32(want))
  else:
    eps = np.finfo(np.float32).eps * max(abs(start), abs(end), 1e-30)
    np.testing.assert_allclose(got, want, rtol=0, atol=4 * eps)


@pytest.mark.parametrize("kind", losses.HIDDEN_KINDS)
def test_hidden_state_loss(kind):
  rng = np.random.default_rng(8)
  hs = np.float32(rng.normal(size=(2, 5, 6)))
  ht = np.float32(rng.normal(size=(2, 5, 9)))
  w = np.float32(rng.normal(size=(6, 9)))
  mask = rng.uniform(size=(2, 5)) > 0.3
  got = losses.hidden_state_loss(hs, ht, w, mask=mask, kind=kind)
  proj = np.float64(hs) @ np.float64(w)
  if kind == "mse":
    per = ((proj - ht)**2).mean(-1)
  else:
    per = 1 - (proj * ht).sum(-1) / (np.linalg.norm(proj, axis=-1) *
                                     np.linalg.norm(ht, axis=-1))
  _close(got, ref_mean(per, mask))
  zero = np.zeros_like(hs)
  grads = jax.grad(functools.partial(losses.hidden_state_loss, kind=kind),
                   argnums=(0, 2))(zero, ht, w)
  assert all(np.isfinite(g).all() for g in grads)
  assert float(losses.hidden_state_loss(hs, ht, w, mask=np.zeros((2, 5)),
                                        kind=kind)) == 0.0


@pytest.mark.parametrize("shape,k", [((3, 7, 4096), 16), ((5, 1024), 8), ((2, 100), 5)])
def test_grouped_top_k_equals_full_sort_and_numpy(shape, k):
  # Continuous values (no ties): the two-stage top-k must return exactly what one sort
  # over the row returns, and topk_targets' log-probs the NumPy log-softmax at those ids.
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 4
  # Crowd one group with large values so the answer is not spread over many groups.
  x[..., :64] += 10.0
  v, i = jax.jit(losses.grouped_top_k, static_argnames=("k",))(jnp.asarray(x), k=k)
  rv, ri = jax.lax.top_k(jnp.asarray(x), k)
  np.testing.assert_array_equal(np.asarray(i), np.asarray(ri))
  np.testing.assert_array_equal(np.asarray(v), np.asarray(rv))
  ids, lp = j_topk(jnp.asarray(x), k=k)
  ref = special.log_softmax(x.astype(np.float64), axis=-1)
  np.testing.assert_array_equal(np.asarray(ids), np.argsort(-x, axis=-1)[..., :k])
  np.testing.assert_allclose(np.asarray(lp), np.take_along_axis(ref, np.asarray(ids), -1),
                             atol=2e-5)
