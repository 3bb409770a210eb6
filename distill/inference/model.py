"""The small public Python API used by Colab, tests and the CLIs.

  m = distill.load("runs/tiny/student")      # a stage directory
  m.logits(np.int32 [B, T]) -> np.float32 [B, T, V]
  m.generate("The for statement", max_new_tokens=64)   # greedy; temperature/top_k optional
  m.tokenizer.encode("text"), m.tokenizer.decode(ids)

Text prompts are encoded as the model was trained (`tokenizer.encode_prompt`: BOS first iff
the stage's tokenizer records `add_bos`); `generate_ids` takes ids exactly as given. Every
model computes in fp32 unless `dtype` says otherwise, so a stage trained with bf16 matmul
inputs generates the same tokens as its fp32 export (a bf16 forward differs at near-ties).

Stage directories are `distill.inference.stage`'s format; `hf:` and `gguf:` paths load
through `distill.models.hf` / `distill.models.gguf`, sharded over every device.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from distill.inference.stage import load_stage_params, read_model_config
from distill.data import tokenizer as tokenizers
from distill.errors import LoadError
from distill.models import hf
from distill.models import gguf
from distill.models.transformer import LM
from distill.models.model_config import ModelConfig
from distill.inference import sampling


class Model:
  """A loaded model: JAX forward, greedy/sampled generation with a KV cache, tokenizer."""

  def __init__(self, lm: LM, params, tokenizer):
    self.lm, self.params, self.tokenizer = lm, params, tokenizer
    self.config = lm.cfg
    self._apply, self._step = _compiled(lm)

  def logits(self, tokens) -> np.ndarray:
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2:
      raise ValueError(f"tokens must be int32 [B, T], got shape {tokens.shape}")
    return np.asarray(self._apply(self.params, jnp.asarray(tokens)), np.float32)

  def generate_ids(self, prompt_ids, max_new_tokens=64, *, temperature=0.0, top_k=0, seed=0,
                   stop_at_eos=True, on_token=None):
    """Token ids after the prompt; greedy when temperature == 0.

    `on_token(id)` is called for each new token except a final EOS, for streaming output.
    """
    prompt_ids = list(prompt_ids) or [self.tokenizer.bos_id or 0]
    total = min(len(prompt_ids) + max_new_tokens, self.lm.cfg.max_len)
    if len(prompt_ids) >= total:
      raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in max_len="
                       f"{self.lm.cfg.max_len}")
    cache = self.lm.init_cache(1, total)
    logits, cache = self._step(self.params, jnp.asarray([prompt_ids], jnp.int32), cache, 0)
    last = logits[0, -1]
    rng, out = jax.random.key(seed), []
    vocab = getattr(self.tokenizer, "vocab_size", last.shape[-1])
    for pos in range(len(prompt_ids), total):
      tok = _pick(np.asarray(last, np.float32)[:vocab], temperature, top_k,
                  jax.random.fold_in(rng, pos))
      out.append(tok)
      if stop_at_eos and tok == self.tokenizer.eos_id:
        break
      if on_token is not None:
        on_token(tok)
      if pos + 1 == total:
        break
      logits, cache = self._step(self.params, jnp.asarray([[tok]], jnp.int32), cache, pos)
      last = logits[0, -1]
    return out

  def generate_batch_ids(self, prompts, max_new_tokens=64, *, temperature=0.0, top_k=0,
                         top_p=1.0, seed=0, stop_at_eos=True) -> list[list[int]]:
    """New ids for each prompt (lists of ids), all rows in one jitted KV-cache program
    (`distill.inference.sampling`); greedy rows equal `generate_ids`. Sampled rows draw with
    fold_in(fold_in(key(seed), row), position), so a row's text does not depend on its batch.
    """
    prompts = [list(p) or [self.tokenizer.bos_id or 0] for p in prompts]
    width = max(len(p) for p in prompts)
    gen = min(max_new_tokens, self.lm.cfg.max_len - width)
    if gen <= 0:
      raise ValueError(f"prompt of {width} tokens leaves no room in max_len={self.lm.cfg.max_len}")
    buf = np.zeros((len(prompts), width), np.int32)
    for r, p in enumerate(prompts):
      buf[r, :len(p)] = p
    eos = self.tokenizer.eos_id
    cfg = sampling.SampleConfig(
        gen_len=gen, temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
        eos_id=eos if stop_at_eos and eos is not None else -1,
        vocab=min(getattr(self.tokenizer, "vocab_size", 0) or 0, self.lm.cfg.vocab_size))
    out = jax.device_get(sampling.run(self.lm, self.params, buf, jax.random.key(seed), cfg,
                                      prompt_lens=[len(p) for p in prompts],
                                      prefill=min(len(p) for p in prompts)))
    return [row[m > 0].tolist() for row, m in zip(out["tokens"], out["gen_mask"])]

  def generate_batch(self, prompts: list[str], max_new_tokens: int = 64, **kw) -> list[str]:
    """Texts for several prompts at once (see `generate_batch_ids`; EOS is not printed)."""
    rows = self.generate_batch_ids([self.tokenizer.encode_prompt(p) for p in prompts],
                                   max_new_tokens, **kw)
    eos = self.tokenizer.eos_id
    return [self.tokenizer.decode([t for t in r if t != eos]) for r in rows]

  def generate(self, prompt: str, max_new_tokens: int = 64, *, temperature: float = 0.0,
               top_k: int = 0, seed: int = 0, add_bos: bool | None = None) -> str:
    """Greedy (or sampled) text after `prompt`; BOS first per the model's convention unless
    `add_bos` says otherwise (False for text a chat template rendered, which carries its own
    specials, as transformers' apply_chat_template tokenizes it)."""
    bos = self.tokenizer.add_bos if add_bos is None else add_bos
    ids = self.tokenizer.encode(prompt, add_bos=bos)
    return self.tokenizer.decode(self.generate_ids(ids, max_new_tokens, temperature=temperature,
                                                   top_k=top_k, seed=seed))


def _pick(logits: np.ndarray, temperature: float, top_k: int, key) -> int:
  if temperature <= 0:
    return int(np.argmax(logits))
  z = logits / temperature
  if top_k:
    kth = np.sort(z)[-top_k]
    z = np.where(z < kth, -np.inf, z)
  return int(jax.random.categorical(key, jnp.asarray(z)))


@functools.lru_cache(maxsize=16)
def _compiled(lm: LM):
  """Jitted forward and cached step per LM, shared by Models of the same architecture."""
  return jax.jit(lm.apply), jax.jit(lm.apply_cached, donate_argnums=(2,))


@functools.lru_cache(maxsize=None)
def _lm(cfg: ModelConfig) -> LM:
  return LM(cfg)


def load(path: str, *, dtype: str | None = None) -> Model:
  """Load a stage directory (`runs/tiny/student`), a Hugging Face directory (`hf:/path`) or a
  GGUF file (`gguf:/path/model.gguf`)."""
  path = os.fspath(path)
  if path.startswith("hf:"):
    lm, params, tok = hf.load(path[3:], hf.default_mesh(), dtype or "float32")
    return Model(lm, params, tok)
  if path.startswith("gguf:"):
    lm, params, tok = gguf.load(path[5:], hf.default_mesh(), dtype or "float32")
    return Model(lm, params, tok)
  if not os.path.isdir(path):
    raise LoadError(f"model path {path!r} does not exist; give a stage directory such as "
                    "runs/tiny/student")
  cfg = read_model_config(path)
  if cfg.attention == "cudnn" and jax.default_backend() != "gpu":
    cfg = cfg.replace(attention="xla")  # trained on GPU, loaded elsewhere: same math
  # fp32 compute unless asked (as for hf:/gguf:): what the exported fp32 file computes.
  cfg = cfg.replace(dtype=dtype or "float32")
  lm = _lm(cfg)
  params = load_stage_params(path, lm, dtype=dtype)
  return Model(lm, params, tokenizers.load(os.path.join(path, "tokenizer")))
