"""Batched, jitted sampling with the KV cache: one XLA program per (model, shapes, settings).

`sample(lm, params, prompts, key, cfg)` prefills the prompts, then decodes inside a
`jax.lax.while_loop`, so no token ever goes back to the host. It is what on-policy distillation
(the student samples its own continuations inside the training step), the report's sample
metrics, SeqKD (`teacher_cache --generate`) and `Model.generate_batch` all call.

Randomness is per sequence and per position: the token at position `pos` of row `r` is drawn
with `fold_in(fold_in(key, row_ids[r]), pos)`. A row's sample therefore depends only on the
key, its row id and its own logits: not on the batch it shares, how the batch is split over
devices, or where a resumed run restarted.

Prompts may differ in length (`prompt_lens`): the common prefix is prefilled, and longer
prompts are fed token by token through the decode loop (their own tokens are forced instead of
sampled), so every row keeps its true positions without per-row cache offsets.

Shape letters: B batch, P prompt buffer, G new tokens, L = P + G, V vocab.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from distill.models import sharding
from distill.models.transformer import LM


@dataclasses.dataclass(frozen=True)
class SampleConfig:
  """Static sampling settings (hashable: a jit static argument)."""
  gen_len: int  # new tokens per row at most
  temperature: float = 1.0  # 0 = greedy
  top_k: int = 0  # 0 = off
  top_p: float = 1.0  # 1 = off (nucleus sampling otherwise)
  eos_id: int = -1  # a row stops after emitting it; -1 = never stop early
  pad_id: int = 0  # written after a row's EOS
  vocab: int = 0  # sample only ids < vocab (the tokenizer's, not the padded embedding); 0 = all


def filter_logits(logits, cfg: SampleConfig):
  """fp32 logits [B, V] -> temperature-scaled logits with disallowed ids at -inf."""
  z = logits.astype(jnp.float32)
  neg = jnp.finfo(jnp.float32).min
  if cfg.vocab and cfg.vocab < z.shape[-1]:
    z = jnp.where(jnp.arange(z.shape[-1]) < cfg.vocab, z, neg)
  if cfg.temperature <= 0:
    return z
  z = z / cfg.temperature
  if cfg.top_k and cfg.top_k < z.shape[-1]:
    kth = jax.lax.top_k(z, cfg.top_k)[0][:, -1:]
    z = jnp.where(z < kth, neg, z)
  if cfg.top_p < 1.0:
    # Keep the smallest set of most likely ids whose mass reaches top_p (the first always).
    srt = jnp.sort(z, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(srt, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly above each sorted id
    keep = before < cfg.top_p
    thresh = jnp.min(jnp.where(keep, srt, jnp.inf), axis=-1, keepdims=True)
    z = jnp.where(z < thresh, neg, z)
  return z


def pick(logits, keys, cfg: SampleConfig):
  """Next token per row from logits [B, V] and per-row keys [B]."""
  z = filter_logits(logits, cfg)
  if cfg.temperature <= 0:
    return jnp.argmax(z, axis=-1).astype(jnp.int32)
  return jax.vmap(jax.random.categorical)(keys, z).astype(jnp.int32)


def sample(lm: LM, params, prompts, key, cfg: SampleConfig, *, prompt_lens=None, row_ids=None,
           prefill: int | None = None):
  """Continue `prompts` [B, P] by up to `cfg.gen_len` tokens.

  prompt_lens [B]: real prompt length per row (default P); tokens past it are ignored.
  prefill (static): positions prefilled at once; must be <= min(prompt_lens) (default P).
  Returns {"tokens": int32 [B, L] (prompt, then samples, pad after EOS),
           "gen_mask": float32 [B, L] (1 on sampled tokens up to and including EOS),
           "lengths": int32 [B] (sampled tokens per row)}, L = P + gen_len.
  """
  b, p = prompts.shape
  total = p + cfg.gen_len
  prefill = p if prefill is None else prefill
  if not 1 <= prefill <= p:
    raise ValueError(f"prefill={prefill} must be in [1, prompt buffer {p}]")
  if total > lm.cfg.max_len:
    raise ValueError(f"prompt {p} + gen_len {cfg.gen_len} = {total} tokens exceeds the model's "
                     f"context max_len={lm.cfg.max_len}")
  prompt_lens = jnp.full((b,), p, jnp.int32) if prompt_lens is None else prompt_lens
  row_ids = jnp.arange(b, dtype=jnp.int32) if row_ids is None else row_ids
  row_keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(row_ids)
  tokens = jnp.concatenate([prompts.astype(jnp.int32),
                            jnp.full((b, cfg.gen_len), cfg.pad_id, jnp.int32)], axis=1)
  # Past a row's prompt only sampled tokens or pad may stand, even if the loop stops early.
  tokens = jnp.where(jnp.arange(total) < prompt_lens[:, None], tokens, cfg.pad_id)
  cache = lm.init_cache(b, total)
  logits, cache = lm.apply_cached(params, tokens[:, :prefill], cache, 0)
  last = logits[:, -1]  # predicts position `prefill`
  # A row that is still inside its prompt at `pos` takes the prompt token (teacher forcing).
  end = prompt_lens + cfg.gen_len  # exclusive end of each row's sequence

  def choose(pos, last, done):
    keys = jax.vmap(lambda k: jax.random.fold_in(k, pos))(row_keys)
    drawn = pick(last, keys, cfg)
    in_prompt = pos < prompt_lens
    live = ~in_prompt & ~done & (pos < end)
    tok = jnp.where(in_prompt, tokens[:, pos], jnp.where(live, drawn, cfg.pad_id))
    if cfg.eos_id >= 0:
      done = done | (live & (drawn == cfg.eos_id))
    return tok, live, done

  def body(carry):
    pos, tokens, gen, last, cache, done = carry
    tok, live, done = choose(pos, last, done)
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, pos))
    gen = jax.lax.dynamic_update_slice(gen, live.astype(jnp.float32)[:, None], (0, pos))
    logits, cache = lm.apply_cached(params, tok[:, None], cache, pos)
    return pos + 1, tokens, gen, logits[:, -1], cache, done

  def cond(carry):
    pos, done = carry[0], carry[5]
    # Stop early once every row has finished its prompt and emitted EOS; the last position
    # needs no decode after it and is chosen below.
    return (pos < total - 1) & ~jnp.all(done & (pos >= prompt_lens))

  gen = jnp.zeros((b, total), jnp.float32)
  done = jnp.zeros((b,), bool)
  pos, tokens, gen, last, _, done = jax.lax.while_loop(
      cond, body, (jnp.int32(prefill), tokens, gen, last, cache, done))
  # The final position (when the loop ran to it) is picked without a wasted decode.
  tok, live, _ = choose(pos, last, done)
  at_end = pos == total - 1
  tokens = jnp.where(at_end, jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, pos)), tokens)
  gen = jnp.where(at_end, jax.lax.dynamic_update_slice(
      gen, live.astype(jnp.float32)[:, None], (0, pos)), gen)
  return {"tokens": tokens, "gen_mask": gen, "lengths": gen.sum(-1).astype(jnp.int32)}


@functools.lru_cache(maxsize=32)
def compiled(lm: LM, cfg: SampleConfig, mesh=None, prefill: int | None = None):
  """Jitted `sample(params, prompts, key, prompt_lens, row_ids)`; sharded over `mesh` when
  given (params as in training, rows over data x fsdp), else on the default device."""
  fn = lambda params, prompts, key, prompt_lens, row_ids: sample(
      lm, params, prompts, key, cfg, prompt_lens=prompt_lens, row_ids=row_ids, prefill=prefill)
  if mesh is None:
    return jax.jit(fn)
  rows = sharding.batch_sharding(mesh)
  vec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(rows.spec[0]))
  return jax.jit(fn, in_shardings=(sharding.param_shardings(lm, mesh), rows,
                                   sharding.replicated(mesh), vec, vec),
                 out_shardings={"tokens": rows, "gen_mask": rows, "lengths": vec})


def run(lm: LM, params, prompts, key, cfg: SampleConfig, *, mesh=None, prompt_lens=None,
        row_ids=None, prefill: int | None = None):
  """Host convenience: numpy/array inputs -> the `sample` dict (device arrays)."""
  prompts = jnp.asarray(prompts, jnp.int32)
  b = prompts.shape[0]
  prompt_lens = (jnp.full((b,), prompts.shape[1], jnp.int32) if prompt_lens is None
                 else jnp.asarray(prompt_lens, jnp.int32))
  row_ids = jnp.arange(b, dtype=jnp.int32) if row_ids is None else jnp.asarray(row_ids, jnp.int32)
  return compiled(lm, cfg, mesh, prefill)(params, prompts, key, prompt_lens, row_ids)


def repeat_rate(tokens, gen_mask, n: int = 4) -> float:
  """Fraction of the n-grams inside the sampled spans that repeat an earlier n-gram of the same
  row: sum over rows of (n-grams - distinct n-grams) / sum of n-grams. 0 when there are none."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  tokens, gen_mask = np.asarray(tokens), np.asarray(gen_mask)
  total = repeated = 0
  for row, m in zip(tokens, gen_mask):
    seq = row[m > 0].tolist()
    grams = [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]
    total += len(grams)
    repeated += len(grams) - len(set(grams))
  return repeated / total if total else 0.0
