"""Task metrics: how a model's completions of held-out prompts are judged against references.

A `TaskSpec` (built from `config.eval.task` by `distill.run.settings.task_spec`) names one
scorer, `score(prompt, completion, reference) -> float`:

  exact     1 when normalize(completion) == normalize(reference), else 0; normalize strips,
            collapses runs of whitespace to one space and case-folds.
  number    the last number in the completion equals the last number in the reference (as
            decimals: "42" == "42.0"; thousands separators "1,234" read as 1234).
  regex     the user's regex (`TaskSpec.regex`): its group 1 (group 0 when it has none) of the
            first match in the completion, normalized, equals the same extraction from the
            reference (the whole normalized reference when the regex does not match it).
  verifier  the user's Python function `module:function(prompt, completion, reference)`,
            returning a finite number (usually 1.0 / 0.0).

`evaluate` has a model complete every prompt greedily (and, with `pass_k`, `samples` times
at `temperature`) and returns: the number of prompts, the mean score with a 95% interval
(Wilson for 0/1 scores, else the normal approximation; the result says which), the same per
answer length (characters of the normalized reference: digits for arithmetic), the unbiased
pass@k of Chen et al. (2021), the mean completion length and the share that ended with EOS.
"""
from __future__ import annotations

import dataclasses
import decimal
import importlib
import math
import re

import jax
import numpy as np

from distill.errors import ConfigError, UsageError
from distill.inference import sampling
from distill.models.transformer import LM

KINDS = ("exact", "number", "regex", "verifier")
Z95 = 1.959963984540054  # the two-sided 95% normal quantile


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """How completions are scored and generated (see the module docstring).

  kind: one of KINDS. regex / verifier: for those kinds. gen_len: new tokens per completion at
  most. max_prompts: score the first this many prompts (0 = all). pass_k: k of sampled pass@k
  (0 = off), from `samples` completions per prompt at `temperature`.
  """
  kind: str
  regex: str = ""
  verifier: str = ""
  gen_len: int = 32
  max_prompts: int = 0
  pass_k: int = 0
  samples: int = 0
  temperature: float = 1.0


# ---------------------------------------------------------------------------------------------
# Scorers (pure Python).


def normalize(text: str) -> str:
  """Stripped, runs of whitespace as one space, case-folded."""
  return " ".join(text.split()).casefold()


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def last_number(text: str) -> decimal.Decimal | None:
  """The last number written in `text` (thousands separators dropped), or None."""
  found = _NUMBER.findall(_THOUSANDS.sub("", text))
  return decimal.Decimal(found[-1]) if found else None


def extract(pattern: re.Pattern, text: str) -> str | None:
  """Group 1 (group 0 without groups) of the first match of `pattern` in `text`, normalized."""
  m = pattern.search(text)
  if m is None:
    return None
  return normalize(m.group(1) if pattern.groups else m.group(0))


def load_verifier(name: str):
  """`module:function` -> the function; ConfigError (one line) when it cannot be had."""
  module, _, func = name.partition(":")
  if not module or not func:
    raise ConfigError(f"--config.eval.task.verifier={name!r} must be 'module:function' "
                      "(a function(prompt, completion, reference) -> float on the Python path)")
  try:
    fn = getattr(importlib.import_module(module), func)
  except Exception as e:  # pylint: disable=broad-except  # any import failure is the user's
    raise ConfigError(f"--config.eval.task.verifier={name!r} cannot be imported "
                      f"({type(e).__name__}: {e}); put {module}.py on the Python path "
                      "(PYTHONPATH) and define that function in it") from None
  if not callable(fn):
    raise ConfigError(f"--config.eval.task.verifier={name!r} is not a function")
  return fn


def scorer(spec: TaskSpec):
  """The function (prompt, completion, reference) -> float that `spec.kind` names."""
  if spec.kind == "exact":
    return lambda _p, c, r: float(normalize(c) == normalize(r))
  if spec.kind == "number":
    def number(_p, c, r):
      want = last_number(r)
      if want is None:
        raise ValueError(f"the reference {r!r} holds no number")
      got = last_number(c)
      return float(got is not None and got == want)
    return number
  if spec.kind == "regex":
    try:
      pattern = re.compile(spec.regex)
    except re.error as e:
      raise ConfigError(f"--config.eval.task.regex={spec.regex!r} is not a regular expression "
                        f"({e}); give one whose group 1 is the answer") from None
    def regex(_p, c, r):
      want = extract(pattern, r)
      return float(extract(pattern, c) == (normalize(r) if want is None else want))
    return regex
  if spec.kind == "verifier":
    return load_verifier(spec.verifier)
  raise ConfigError(f"--config.eval.task.kind={spec.kind!r} is unknown; use one of "
                    f"{', '.join(KINDS)} (or '' for no task metric)")


def score_all(fn, prompts, completions, who: str) -> np.ndarray:
  """fn over (prompt text, completion, reference) rows -> float64 [N]; a verifier that raises
  or returns no finite number is a UsageError naming `who` (what was scored) and the row."""
  out = np.empty(len(prompts), np.float64)
  for i, (p, c) in enumerate(zip(prompts, completions)):
    try:
      value = float(fn(p.rendered, c, p.reference))
      if not math.isfinite(value):
        raise ValueError(f"returned {value}")
    except Exception as e:  # pylint: disable=broad-except  # the user's code: any error
      raise UsageError(f"eval.task: scoring {who} of prompt {p.index} failed "
                       f"({type(e).__name__}: {e}); fix the verifier, or that row's "
                       "reference") from None
    out[i] = value
  return out


def check_prompts(spec: TaskSpec, prompts, what: str):
  """Before any training: prompts exist, each has a reference, and the scorer runs on each
  reference as its own completion. Returns the scorer."""
  if not prompts:
    raise UsageError(f"eval.task: {what} has no prompts; give a split with prompt/completion "
                     "rows, or --config.eval.task.kind=''")
  missing = [p.index for p in prompts if p.reference is None]
  if missing:
    raise UsageError(f"eval.task: {len(missing)} rows of {what} have no reference completion "
                     f"(the first is row {missing[0]}); a task metric needs prompt + completion "
                     "(or messages) rows, or set --config.eval.task.kind=''")
  fn = scorer(spec)
  score_all(fn, prompts, [p.reference for p in prompts], "the reference as the completion")
  return fn


# ---------------------------------------------------------------------------------------------
# Statistics.


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval of a binomial proportion."""
  if n == 0:
    return float("nan"), float("nan")
  p = successes / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  # The interval's ends are exactly 0 / 1 at 0 / n successes (rounding aside).
  lo = 0.0 if successes <= 0 else max(0.0, centre - half)
  hi = 1.0 if successes >= n else min(1.0, centre + half)
  return lo, hi


def mean_interval(scores) -> dict:
  """{n, mean, lo, hi, interval}: Wilson for 0/1 scores, else mean ± z·sd/√n ('normal')."""
  s = np.asarray(scores, np.float64)
  n = int(s.size)
  if n == 0:
    return {"n": 0, "mean": float("nan"), "lo": float("nan"), "hi": float("nan"),
            "interval": "none"}
  mean = float(s.mean())
  if np.all((s == 0) | (s == 1)):
    lo, hi = wilson(float(s.sum()), n)
    kind = "wilson"
  else:
    half = Z95 * float(s.std(ddof=1)) / math.sqrt(n) if n > 1 else float("nan")
    lo, hi, kind = mean - half, mean + half, "normal"
  return {"n": n, "mean": mean, "lo": lo, "hi": hi, "interval": kind}


def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k from n samples of which c pass (Chen et al. 2021):
  1 - C(n - c, k) / C(n, k), as a product for numerical stability."""
  if k > n:
    raise ValueError(f"pass@k needs k={k} <= n={n} samples")
  if n - c < k:
    return 1.0
  return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def by_length(scores, references) -> dict:
  """{answer length: mean_interval} over the normalized references' lengths in characters."""
  lengths = np.array([len(normalize(r)) for r in references])
  s = np.asarray(scores)
  return {str(int(L)): mean_interval(s[lengths == L]) for L in np.unique(lengths)}


# ---------------------------------------------------------------------------------------------
# Completions.


def complete(lm: LM, params, tokenizer, prompts, cfg: sampling.SampleConfig, key, *,
             draws: int = 1, batch: int = 64):
  """Each prompt continued `draws` times (prompt-major); returns (completion texts, tokens
  per completion without EOS, ended-with-EOS flags, [(tokens, gen_mask)] per batch)."""
  rows = [p.ids for p in prompts for _ in range(draws)]
  width = max(len(r) for r in rows)
  if width + cfg.gen_len > lm.cfg.max_len:
    raise ConfigError(f"eval.task: the longest prompt ({width} tokens) + gen_len "
                      f"{cfg.gen_len} exceeds the model context of {lm.cfg.max_len}; lower "
                      "--config.eval.task.gen_len")
  prefill = min(len(r) for r in rows)
  texts, lengths, ended, arrays = [], [], [], []
  for start in range(0, len(rows), batch):
    chunk = rows[start:start + batch]
    real = len(chunk)
    chunk = chunk + [chunk[0]] * (batch - real)  # one shape: one compiled program
    buf = np.full((batch, width), cfg.pad_id, np.int32)
    for i, r in enumerate(chunk):
      buf[i, :len(r)] = r
    out = sampling.run(lm, params, buf, key, cfg, prompt_lens=[len(r) for r in chunk],
                       row_ids=np.arange(start, start + batch), prefill=prefill)
    tokens, mask = np.asarray(out["tokens"])[:real], np.asarray(out["gen_mask"])[:real]
    arrays.append((tokens, mask))
    for row, m in zip(tokens, mask):
      ids = [int(t) for t in row[m > 0]]
      stop = bool(ids) and ids[-1] == cfg.eos_id
      ids = ids[:-1] if stop else ids
      texts.append(tokenizer.decode(ids))
      lengths.append(len(ids))
      ended.append(stop)
  return texts, np.array(lengths), np.array(ended), arrays


def evaluate(spec: TaskSpec, fn, lm: LM, params, tokenizer, prompts, cfg: sampling.SampleConfig,
             seed: int, who: str, nll=None) -> dict:
  """The task figures of one model on `prompts` (see the module docstring). `cfg`: the
  greedy SampleConfig the model speaks (eos, pad, vocab); `nll(tokens, gen_mask) -> (sum, n)`,
  when given, adds the teacher-scored NLL of the greedy completions (nats/token)."""
  prompts = list(prompts)[:spec.max_prompts or None]
  greedy = dataclasses.replace(cfg, gen_len=spec.gen_len, temperature=0.0)
  texts, lengths, ended, arrays = complete(lm, params, tokenizer, prompts, greedy,
                                           jax.random.key(seed))
  scores = score_all(fn, prompts, texts, f"the {who}'s completion")
  refs = [p.reference for p in prompts]
  out = {"kind": spec.kind, "prompts": len(prompts), "greedy": mean_interval(scores),
         "by_answer_len": by_length(scores, refs),
         "completion_tokens_mean": float(lengths.mean()),
         "eos_rate": float(ended.mean()),
         "examples": [{"prompt": p.rendered, "completion": t, "reference": p.reference}
                      for p, t in zip(prompts[:5], texts[:5])]}
  if nll is not None:
    s = n = 0.0
    for tokens, mask in arrays:
      a, b = nll(tokens, mask)
      s, n = s + float(a), n + float(b)
    out["teacher_nll"] = s / max(n, 1.0)
  if spec.pass_k:
    sampled = dataclasses.replace(greedy, temperature=float(spec.temperature))
    texts, _, _, _ = complete(lm, params, tokenizer, prompts, sampled,
                              jax.random.key(seed + 1), draws=spec.samples)
    passed = (score_all(fn, [p for p in prompts for _ in range(spec.samples)], texts,
                        f"a sampled {who} completion")
              >= 0.5).reshape(len(prompts), spec.samples).sum(-1)
    per_prompt = [pass_at_k(spec.samples, int(c), spec.pass_k) for c in passed]
    out["pass_at_k"] = dict(mean_interval(per_prompt), k=spec.pass_k, samples=spec.samples,
                            temperature=float(spec.temperature))
  return out
