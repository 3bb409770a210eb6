"""LiteRT file vs the JAX student it came from: greedy parity and teacher-forced agreement.

The reference is the model as users call it: `distill.load(stage).generate(prompt)`, i.e. the
fp32 JAX function of the same weights, fed the prompt the way training fed documents (BOS
first iff the tokenizer's `add_bos`). Greedy parity runs on prompts of every length in
`prompt_lengths` (the export's sweep: 1 ... 2 x prefill + 1 at the full level, the prefill
boundaries at the quick one), so a prefill-chunk bug cannot hide behind two lucky prompts.

The JAX side computes in fp32 on the weights the file stores (`reference_params`): for fp16
files the weights rounded to fp16, which is what the TFLite runtime dequantizes at load, so
the gate tests the conversion and not fp16 rounding the user chose. The integer modes compare
with the fp32 weights (their quantizers' exact grids are not recomputed here), so their
figures include the quantization error, which is what their lower thresholds allow for.

Thresholds (acceptance): fp32 greedy generations token-identical; fp16 identical or >= 98%
teacher-forced top-1 agreement; int8 and dynamic_int8 >= 95%; int4 >= 90% (our choice: 4-bit
weights lose more, and the figure is reported either way).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from distill.errors import GateError
from distill.export.runtime import LiteRTModel
from distill.export import litertlm_runtime as lrt

AGREEMENT_THRESHOLD = {"fp16": 0.98, "dynamic_int8": 0.95, "int8": 0.95, "int4": 0.90,
                       "int4_head8": 0.90}


class VerificationError(GateError):
  """The .tflite does not reproduce the JAX student within the mode's threshold.

  `figures` is the result dict the check would have returned (passed False), so a caller can
  record what was measured beside the file it keeps."""

  def __init__(self, message: str, figures: dict | None = None):
    super().__init__(message)
    self.figures = figures or {}


def reference_params(params, quant: str):
  """The fp32 weights the exported `quant` file holds (fp16: rounded through fp16)."""
  if quant != "fp16":
    return params
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float16).astype(jnp.float32)
                      if jnp.issubdtype(x.dtype, jnp.floating) else x, params)


def jax_greedy(lm, params, prompt_ids, new_tokens: int, vocab: int, max_context: int,
               step=None):
  """Greedy ids from the JAX model with a max_context cache, as the device runs it.

  The prompt is right-padded to a multiple of 16 so a handful of prompt lengths share one
  compiled prefill; causal attention makes the real positions' logits independent of it.
  """
  step = step or jax.jit(lm.apply_cached)
  n = len(prompt_ids)
  padded = np.zeros((1, min(max_context, -(-n // 16) * 16)), np.int32)
  padded[0, :n] = prompt_ids
  cache = lm.init_cache(1, max_context, jnp.float32)
  logits, cache = step(params, jnp.asarray(padded), cache, 0)
  last, pos, out = np.asarray(logits[0, n - 1, :vocab]), n, []
  for i in range(new_tokens):
    tok = int(np.argmax(last))
    out.append(tok)
    if pos >= max_context or i + 1 == new_tokens:
      break
    logits, cache = step(params, jnp.asarray([[tok]], jnp.int32), cache, pos)
    last, pos = np.asarray(logits[0, 0, :vocab]), pos + 1
  return out


def sweep_lengths(prefill_len: int, every: bool) -> list[int]:
  """Prompt lengths (tokens of text) to check: every one of 1 ... 2P + 1, or the boundaries."""
  p = prefill_len
  if every:
    return list(range(1, 2 * p + 2))
  return sorted({n for n in (1, 2, p // 2, p - 1, p, p + 1, 2 * p - 1, 2 * p, 2 * p + 1) if n >= 1})


def sweep_prompts(tokenizer, windows, lengths: list[int], room: int) -> list[list[int]]:
  """For each length n, the first n text tokens of the validation stream whose decoded text
  encodes back to the same ids (what a user's text prompt of that length is), as the model
  is fed them: BOS first iff `tokenizer.add_bos`. Lengths past `room` are dropped."""
  specials = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id}
  stream = [int(t) for w in windows for t in w if int(t) not in specials]
  head = [tokenizer.bos_id] if tokenizer.add_bos else []
  out = []
  for n in lengths:
    if len(head) + n > room:
      continue
    for start in range(0, max(1, len(stream) - n + 1), max(1, n // 2)):
      ids = stream[start:start + n]
      if len(ids) == n and tokenizer.encode(tokenizer.decode(ids)) == ids:
        out.append(head + ids)
        break
  return out


def greedy_parity(model: LiteRTModel, lm, params, prompts: list[list[int]], new_tokens: int):
  """Token-identical greedy generation per prompt (no EOS stop: more tokens compared).

  `prompts` are the ids the model is fed (see `sweep_prompts`)."""
  rows, identical, compared = [], 0, 0
  step = jax.jit(lm.apply_cached)
  for ids in prompts:
    n = min(new_tokens, model.max_context - len(ids))
    ref = jax_greedy(lm, params, ids, n, model.vocab_size, model.max_context, step)
    got = list(model.generate_ids(ids, n, stop_at_eos=False))
    same = got == ref
    identical += same
    compared += n
    first = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), None)
    rows.append({"prompt_tokens": len(ids), "new_tokens": n, "identical": same,
                 "first_mismatch": first})
  return {"prompts": len(prompts), "identical_prompts": identical,
          "new_tokens_per_prompt": new_tokens, "tokens_compared": compared,
          "all_identical": identical == len(prompts), "per_prompt": rows}


def teacher_forced_agreement(model: LiteRTModel, lm, params, windows, masks=None):
  """Fraction of positions where LiteRT's and JAX's top-1 next-token predictions agree."""
  apply = jax.jit(lm.apply)
  agree = total = 0
  max_abs = 0.0
  for i, w in enumerate(windows):
    w = np.asarray(w, np.int32)[:model.max_context]
    keep = np.ones(len(w), bool) if masks is None else np.asarray(masks[i], bool)[:len(w)]
    if not keep.any():
      continue
    ref = np.asarray(apply(params, jnp.asarray(w[None])))[0, :, :model.vocab_size]
    got = model.teacher_forced_logits(w)
    agree += int((ref.argmax(-1) == got.argmax(-1))[keep].sum())
    total += int(keep.sum())
    max_abs = max(max_abs, float(np.abs(ref - got)[keep].max()))
  return {"windows": len(windows), "positions": total,
          "top1_agreement": round(agree / max(total, 1), 5),
          "max_abs_logit_diff": round(max_abs, 6)}


def verify(model: LiteRTModel, lm, params, quant: str, *, prompts, new_tokens, windows,
           masks=None, threshold: float | None = None) -> dict:
  """Both checks, the verdict for `quant`, and the figures; raises VerificationError.

  `threshold` (None = AGREEMENT_THRESHOLD[quant]) replaces the mode's agreement threshold;
  for fp32 it is required on top of identical greedy generations."""
  parity = greedy_parity(model, lm, params, prompts, new_tokens)
  tf_agree = teacher_forced_agreement(model, lm, params, windows, masks)
  if quant == "fp32":
    passed = parity["all_identical"]
    rule = "greedy generations token-identical to JAX"
    if threshold is not None:
      passed = passed and tf_agree["top1_agreement"] >= threshold
      rule += f" and teacher-forced top-1 agreement >= {threshold:.0%}"
  else:
    need = AGREEMENT_THRESHOLD[quant] if threshold is None else threshold
    ok = tf_agree["top1_agreement"] >= need
    passed = ok or (quant == "fp16" and parity["all_identical"])
    rule = (f"greedy identical or teacher-forced top-1 agreement >= {need:.0%}" if quant == "fp16"
            else f"teacher-forced top-1 agreement >= {need:.0%}")
  result = {"passed": bool(passed), "rule": rule, "greedy": parity, "teacher_forced": tf_agree}
  if not passed:
    raise VerificationError(
        f"{quant} file failed verification ({rule}): {parity['identical_prompts']}/"
        f"{parity['prompts']} greedy generations identical, teacher-forced top-1 agreement "
        f"{tf_agree['top1_agreement']:.1%}; try a less aggressive --quant", figures=result)
  return result


def bundle_check(engine, lm, params, tokenizer, quant: str, *, windows, prompt_lengths,
                 new_tokens: int, vocab: int, max_context: int, positions: int = 32,
                 threshold: float | None = None) -> dict:
  """The .litertlm in LiteRT-LM's engine vs the JAX student; raises VerificationError.

  Three figures: the bundled tokenizer's ids equal ours on the validation text; greedy
  generations through the engine, given the text of prompts of every length in
  `prompt_lengths`, equal `distill.load(stage).generate` of the same text (the engine puts
  the bundle's start token first exactly when the model was trained with BOS, so both feed
  the same ids); teacher-forced top-1 agreement through the engine on prefixes of 4 windows.
  fp32 must be token-identical; the other modes need the .tflite's agreement threshold.
  `threshold` as in `verify`.
  """
  texts = [tokenizer.decode(w) for w in windows]
  tok = lrt.tokenizer_matches(engine, tokenizer, texts)
  head = [tokenizer.bos_id] if tokenizer.add_bos else []
  step = jax.jit(lm.apply_cached)
  prompt_texts, refs, fed = [], [], []
  for ids in sweep_prompts(tokenizer, windows, prompt_lengths, max_context - 2):
    n = max(1, min(new_tokens, max_context - len(ids) - 1))
    prompt_texts.append(tokenizer.decode(ids[len(head):]))
    refs.append(jax_greedy(lm, params, ids, n, vocab, max_context, step))
    fed.append(len(ids))
  greedy = lrt.greedy_matches(engine, tokenizer, prompt_texts, refs, tokenizer.eos_id)
  for row, n in zip(greedy["per_prompt"], fed):
    row["prompt_tokens"] = n  # what the model was fed, the start token included
  greedy["prompt_tokens"] = sorted(set(fed))

  apply = jax.jit(lm.apply)
  agree = total = 0
  k = min(4, len(texts))
  for text in texts[:k]:
    ids = tokenizer.encode(text)[:min(positions, max_context - 2)]
    ref = np.asarray(apply(params, jnp.asarray([head + ids], jnp.int32)))[0, :, :vocab]
    got = lrt.next_token_agreement(engine, tokenizer, [ids], len(ids))["predictions"][0]
    for n, pred in enumerate(got, start=1):
      if tokenizer.encode(tokenizer.decode(ids[:n])) != ids[:n]:
        continue  # a cut inside a multi-byte character: the engine sees other ids
      agree += int(pred == int(ref[len(head) + n - 1].argmax()))
      total += 1
  rate = round(agree / max(total, 1), 5)
  if quant == "fp32":
    passed = tok["all_identical"] and greedy["all_identical"]
    rule = "tokenizer ids and greedy generations identical to JAX through LiteRT-LM"
    if threshold is not None:
      passed = passed and rate >= threshold
      rule += f" and teacher-forced top-1 agreement >= {threshold:.0%}"
  else:
    need = AGREEMENT_THRESHOLD[quant] if threshold is None else threshold
    passed = tok["all_identical"] and rate >= need
    rule = f"tokenizer ids identical, teacher-forced top-1 agreement >= {need:.0%} in LiteRT-LM"
  result = {"passed": bool(passed), "rule": rule, "tokenizer": tok, "greedy": greedy,
            "start_token": tokenizer.bos_id if tokenizer.add_bos else None,
            "teacher_forced": {"windows": k, "positions": total, "top1_agreement": rate}}
  if not passed:
    raise VerificationError(
        f".litertlm failed its LiteRT-LM check ({rule}): tokenizer {tok['identical']}/"
        f"{tok['texts']} texts identical, {greedy['identical_prompts']}/{greedy['prompts']} "
        f"greedy generations identical, top-1 agreement {rate:.1%}", figures=result)
  return result
