"""Held-out prompts and sampling settings for the report's sample metrics.

Every model of a run continues the same validation prompts with the same settings and key
(`onpolicy.sample_metrics`), so their teacher-scored NLL and repetition rates compare.
"""
from __future__ import annotations

import dataclasses

from distill import data
from distill.inference import sampling
from distill.errors import ConfigError
from distill.models.transformer import LM


def prompts(data_cfg, tokenizer, workdir: str, teacher: LM, *, count: int, prompt_len: int,
            gen_len: int, temperature: float):
  """(prompts [N, prompt_len] from the first `count` validation rows, those real through
  prompt_len only; the SampleConfig the teacher speaks), or (None, None) when `count` is 0."""
  if not count:
    return None, None
  if prompt_len + gen_len > teacher.cfg.max_len:
    raise ConfigError(f"--config.eval.sample_prompt_len + sample_gen_len = "
                      f"{prompt_len + gen_len} exceeds the teacher's context of "
                      f"{teacher.cfg.max_len} positions")
  rows = data.eval_batches(data_cfg, tokenizer, workdir, split="validation",
                           batch_size=count)[0]
  # Rows real through the prompt: a trained target at or after it (padding only ever ends a
  # row: the last packed window, or a table example's pad).
  chosen = rows["inputs"][rows["mask"][:, prompt_len - 1:].any(-1)][:, :prompt_len]
  cfg = sampling.SampleConfig(gen_len=gen_len, temperature=float(temperature))
  return chosen, speaking(cfg, tokenizer, teacher)


def speaking(cfg: sampling.SampleConfig, tok, lm: LM) -> sampling.SampleConfig:
  """`cfg` with the EOS, padding and vocabulary of a model speaking `tok`'s ids."""
  return dataclasses.replace(cfg, eos_id=-1 if tok.eos_id is None else tok.eos_id,
                             pad_id=data.pad_id(tok), vocab=min(tok.vocab_size, lm.cfg.vocab_size))
