"""Lossless speculative decoding: a small drafter proposes k tokens, the teacher checks all of
them in one forward (Leviathan et al. 2023, Chen et al. 2023).

  ids, stats = speculative.generate_ids(teacher, drafter, prompt_ids, 64, k=4)
  stats.acceptance_rate, stats.tokens_per_call

Each round the drafter (`distill.load`ed like the teacher; a distilled student is the natural
one) decodes k tokens d_1..d_k with its KV cache; the teacher runs [last, d_1..d_k] through its
own cache in one call, which gives its distributions p_1..p_{k+1} at the k+1 next positions.
`accept` then keeps a prefix of the drafts and adds one teacher token:

- greedy (temperature 0): the longest prefix with d_i == argmax p_i, then argmax p_{n+1}, so
  the text is token for token the teacher's own greedy text (`Model.generate_ids`);
- sampling: d_i is kept with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection
  the token is drawn from norm(max(0, p_i - q_i)), after k acceptances from p_{k+1}. Every
  emitted token is then distributed exactly as the teacher's own sample (temperature, top_k
  and top_p filter p and q alike), whatever the drafter.

Caches: before a round of a sequence of n tokens, both caches hold correct entries for
positions 0..n-2 (the last token is not yet fed). Entries past that may be stale (rejected
drafts); the causal mask over absolute positions hides them until they are overwritten. The
drafter re-feeds the token before the last one each round, so a round whose drafts were all
accepted (d_k never fed to the drafter) needs no extra step. The caches have k slots past the
requested length, so every round has the same shapes (one compile per k) unless generation
runs into the model's context.

The drafter must share the teacher's tokenizer (a student distilled without vocabulary
trimming); `check_pair` says so in one line otherwise.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from distill.errors import UsageError
from distill.inference import sampling
from distill.models.transformer import LM

_PROBE = "def f(x):\n  return x + 1  # The for statement, 0123"


@dataclasses.dataclass
class Stats:
  """What one speculative generation did."""
  teacher_calls: int = 0  # verification forwards (the prompt's prefill not counted)
  drafted: int = 0  # tokens the drafter proposed
  accepted: int = 0  # of those, kept by the teacher
  new_tokens: int = 0  # tokens returned (after an EOS or max_new_tokens cut)

  @property
  def acceptance_rate(self) -> float:
    """Fraction of drafted tokens the teacher kept."""
    return self.accepted / self.drafted if self.drafted else 0.0

  @property
  def tokens_per_call(self) -> float:
    """Mean tokens a teacher call yields: accepted drafts + its own token (1 = no gain)."""
    return (self.accepted + self.teacher_calls) / self.teacher_calls if self.teacher_calls else 0.0

  def as_dict(self) -> dict:
    return dict(dataclasses.asdict(self), acceptance_rate=round(self.acceptance_rate, 4),
                tokens_per_call=round(self.tokens_per_call, 4))


def rule(p, q, drafts):
  """The sampling rule's probabilities for one round, from the teacher's probabilities p
  [k+1, V] at the k+1 next positions, the drafter's q [k, V] and its drafts [k]:
  (accept [k]: min(1, p_i(d_i) / q_i(d_i)), next [k+1, V]: the token's distribution after i
  acceptances, norm(max(0, p_i - q_i)) for i < k and p_k after all k)."""
  k = drafts.shape[0]
  rows = jnp.arange(k)
  pd, qd = p[rows, drafts], q[rows, drafts]
  acc = jnp.where(qd > 0, jnp.minimum(1.0, pd / jnp.where(qd > 0, qd, 1.0)), 1.0)
  resid = jnp.maximum(p[:k] - q, 0.0)
  mass = resid.sum(-1, keepdims=True)
  # p == q leaves no residual mass (and rejection probability 0): keep p there.
  resid = jnp.where(mass > 0, resid / jnp.where(mass > 0, mass, 1.0), p[:k])
  return acc, jnp.concatenate([resid, p[k:]], axis=0)


def accept(p_logits, q_logits, drafts, key, *, greedy: bool):
  """The verification of one round.

  p_logits [k+1, V]: the teacher's filtered logits at the k+1 positions after the last token;
  q_logits [k, V]: the drafter's filtered logits its drafts [k] were drawn from.
  Returns (n, token): n in [0, k] drafts kept and the teacher's token after them.
  """
  k = drafts.shape[0]
  if greedy:
    best = jnp.argmax(p_logits, axis=-1).astype(jnp.int32)
    n = jnp.sum(jnp.cumprod((best[:k] == drafts).astype(jnp.int32)))
    return n, best[n]
  acc, nxt = rule(jax.nn.softmax(p_logits.astype(jnp.float32), axis=-1),
                  jax.nn.softmax(q_logits.astype(jnp.float32), axis=-1), drafts)
  u = jax.random.uniform(jax.random.fold_in(key, 0), (k,))
  n = jnp.sum(jnp.cumprod((u < acc).astype(jnp.int32)))
  tok = jax.random.categorical(jax.random.fold_in(key, 1), jnp.log(nxt[n]))
  return n, tok.astype(jnp.int32)


def _choose(z, key, cfg: sampling.SampleConfig):
  """Draft token [1] from filtered logits z [1, V]."""
  if cfg.temperature <= 0:
    return jnp.argmax(z, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, z[0])[None].astype(jnp.int32)


@functools.lru_cache(maxsize=16)
def _programs(drafter: LM, teacher: LM, cfg: sampling.SampleConfig, vocab: int):
  """Jitted (prefill, draft, verify) for one pair and sampling setting."""

  def filt(logits):  # [T, V'] -> [T, vocab], the ids both models share
    return sampling.filter_logits(logits[:, :vocab], cfg)

  def prefill(params, lm, tokens, cache):
    return lm.apply_cached(params, tokens, cache, 0)[1]

  def draft(params, cache, head, pos0, key, k):
    logits, cache = drafter.apply_cached(params, head, cache, pos0)
    pos = pos0 + head.shape[1]  # the position the first draft takes

    def feed(carry, i):  # pick the draft at pos + i, feed it for the next one
      last, cache = carry
      z = filt(last)
      tok = _choose(z, jax.random.fold_in(key, i), cfg)
      logits, cache = drafter.apply_cached(params, tok[:, None], cache, pos + i)
      return (logits[:, -1], cache), (tok[0], z[0])

    (last, cache), (toks, zs) = jax.lax.scan(feed, (logits[:, -1], cache), jnp.arange(k - 1))
    z = filt(last)  # the last draft is not fed: the next round's 2-token head does it
    tok = _choose(z, jax.random.fold_in(key, k - 1), cfg)
    return jnp.concatenate([toks, tok]), jnp.concatenate([zs, z]), cache

  def verify(params, cache, last, drafts, pos0, q_logits, key):
    tokens = jnp.concatenate([last, drafts])[None]
    logits, cache = teacher.apply_cached(params, tokens, cache, pos0)
    n, tok = accept(filt(logits[0]), q_logits, drafts, key, greedy=cfg.temperature <= 0)
    return n, tok, cache

  return (jax.jit(prefill, static_argnums=1, donate_argnums=3),
          jax.jit(draft, static_argnums=5, donate_argnums=1),
          jax.jit(verify, donate_argnums=1))


def check_pair(teacher, drafter) -> int:
  """The vocabulary size teacher and drafter share; a UsageError when their tokenizers differ."""
  tv, dv = teacher.tokenizer.vocab_size, drafter.tokenizer.vocab_size
  same = tv == dv and teacher.tokenizer.encode(_PROBE) == drafter.tokenizer.encode(_PROBE)
  if not same:
    raise UsageError(f"the draft model's tokenizer ({dv} ids) is not the teacher's ({tv} ids); "
                     "a drafter must share the teacher's vocabulary: use a student distilled "
                     "from this teacher without vocabulary trimming (student.vocab=0)")
  return min(tv, teacher.lm.cfg.vocab_size, drafter.lm.cfg.vocab_size)


def generate_ids(teacher, drafter, prompt_ids, max_new_tokens: int = 64, *, k: int = 4,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 stop_at_eos: bool = True, on_token=None):
  """Token ids after the prompt from `teacher` (a `distill.inference.model.Model`), drafted by
  `drafter`, k tokens per teacher call; returns (ids, Stats).

  Greedy output equals `teacher.generate_ids(prompt_ids, max_new_tokens)`; sampled output has
  its distribution. `on_token(id)` is called for each new token except a final EOS.
  """
  if k < 1:
    raise UsageError(f"draft_k={k}: draft at least one token per teacher call (e.g. 4)")
  vocab = check_pair(teacher, drafter)
  seq = list(prompt_ids) or [teacher.tokenizer.bos_id or 0]
  context = min(teacher.lm.cfg.max_len, drafter.lm.cfg.max_len)
  total = min(len(seq) + max_new_tokens, context)
  if len(seq) >= total:
    raise ValueError(f"prompt of {len(seq)} tokens leaves no room in max_len={context}")
  cfg = sampling.SampleConfig(gen_len=0, temperature=float(temperature), top_k=int(top_k),
                              top_p=float(top_p))
  prefill, draft, verify = _programs(drafter.lm, teacher.lm, cfg, vocab)
  # k slots of room past `total`, so the last rounds keep the same shapes (one compile); only
  # at the model's context do they shrink (learned positions end there).
  slots = min(total + k, context)
  tcache, dcache = teacher.lm.init_cache(1, slots), drafter.lm.init_cache(1, slots)
  if len(seq) > 1:
    head = jnp.asarray([seq[:-1]], jnp.int32)
    tcache = prefill(teacher.params, teacher.lm, head, tcache)
    dcache = prefill(drafter.params, drafter.lm, head, dcache)
  key, stats, out = jax.random.key(seed), Stats(), []
  eos = teacher.tokenizer.eos_id if stop_at_eos else None
  while len(seq) < total:
    n = len(seq)
    kk = min(k, slots - n)  # the teacher's call writes positions n - 1 .. n - 1 + kk
    round_key = jax.random.fold_in(key, n)
    # Re-feeding the token before the last one (same token, same position: the same entry)
    # covers a round whose last draft was accepted and so never fed to the drafter.
    head = seq[-2:]
    drafts, q_logits, dcache = draft(drafter.params, dcache, jnp.asarray([head], jnp.int32),
                                     n - len(head), jax.random.fold_in(round_key, 0), kk)
    kept, tok, tcache = verify(teacher.params, tcache, jnp.asarray(seq[-1:], jnp.int32), drafts,
                               n - 1, q_logits, jax.random.fold_in(round_key, 1))
    kept, tok, drafts = jax.device_get((kept, tok, drafts))
    stats.teacher_calls += 1
    stats.drafted += kk
    stats.accepted += int(kept)
    for t in [int(d) for d in drafts[:int(kept)]] + [int(tok)]:
      seq.append(t)
      out.append(t)
      stats.new_tokens += 1
      if eos is not None and t == eos:
        return out, stats
      if on_token is not None:
        on_token(t)
      if len(seq) == total:
        break
  return out, stats
