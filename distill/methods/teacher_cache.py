"""Offline teacher: run the teacher once, keep its top-k ids + log-probs per position.

  python -m distill.teacher_cache --config=configs/tiny.py --workdir=runs/tiny --top_k=64 \
      [--out=runs/tiny/teacher_cache]
  python -m distill.main --config=configs/tiny.py --workdir=runs/cached \
      --config.teacher.checkpoint=runs/tiny/teacher \
      --config.distill.teacher_source=cache:runs/tiny/teacher_cache

The cache covers the windows of the transfer set (`distill.transfer_fraction` of the train
split), in window-id order: `ids.npy` int32 [N, T, K], `logprobs.npy` float32 [N, T, K] (T=1
log-probs of the teacher's top-k tokens), `windows.npy` int32 [N] and `meta.json`. Training
looks rows up by window id, so any data order or resume point reads the right targets.
Stored as .npy memmaps rather than a TFDS/array_record dataset: random access by window id is
all training needs, and it keeps TensorFlow out of the training path.

Sequence-level KD (SeqKD, Kim & Rush 2016): `--generate` writes teacher *generations* instead:

  python -m distill.teacher_cache --config=configs/tiny.py --workdir=runs/tiny --generate \
      [--prompt_len=32 --temperature=1.0 --gen_top_k=0 --top_p=1.0] [--out=runs/tiny/seqkd]
  python -m distill.main ... --config.distill.transfer_set=generated:runs/tiny/seqkd \
      [--config.distill.alpha=1]   # hard labels only; alpha < 1 adds the teacher's soft targets

Each transfer-set window's first `prompt_len` tokens are continued by the teacher to a full
window (batched, jitted, KV cache: `distill.inference.sampling`); `sequences.npy` int32 [N, T+1],
`mask.npy` float32 [N, T] (1 on the prompt's real tokens and the generation up to its EOS) and
`meta.json`. For a table of examples (`json:` ...) the teacher answers each example's own
prompt instead, and the mask covers its answer only (completion-only SeqKD). The student (not the baseline) then trains on these rows.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any
import os
import shutil

import jax
import numpy as np

from distill import data, losses
from distill.data import tokenizer as tokenizers
from distill.inference import sampling
from distill.methods import ensemble
from distill.models import sharding
from distill.train import loop as train

CACHE_PREFIX = "cache:"


class CacheError(ValueError):
  """A cache that is missing, corrupt or does not match the run."""


def _topk_fn(lm, k):
  def fn(params, tokens):
    return losses.topk_targets(lm.apply(params, tokens), k,
                               normalized=getattr(lm, "normalized", False))
  return jax.jit(fn)


@dataclasses.dataclass(frozen=True)
class TransferSet:
  """The training windows a cache covers, and what it is keyed by.

  data, tokenizer, workdir: where the windows come from; fraction: the transfer set's share
  of the train split; teacher: the teacher's source (its checkpoint or "pretrained"), recorded;
  seed: the run's seed (SeqKD sampling).
  """
  data: data.DataSpec
  tokenizer: Any
  workdir: str
  fraction: float
  teacher: str
  seed: int


def write(teacher, t_params, out_dir: str, top_k: int, ts: TransferSet, mesh, *,
          batch_size: int = 32, show_progress: bool = True) -> dict:
  """Run `teacher` over the transfer set and write the cache to `out_dir` atomically."""
  if not 0 < top_k <= teacher.cfg.vocab_size:
    raise CacheError(f"--top_k={top_k} must be in [1, vocab {teacher.cfg.vocab_size}]")
  tokenizers.check_fits(ts.tokenizer, teacher.cfg.vocab_size, "the teacher")
  ids, rows = data.train_windows(ts.data, ts.tokenizer, ts.workdir, ts.fraction)
  tmp = out_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  n, t = len(ids), ts.data.seq_len
  out_ids = np.lib.format.open_memmap(os.path.join(tmp, "ids.npy"), "w+", np.int32, (n, t, top_k))
  out_lp = np.lib.format.open_memmap(os.path.join(tmp, "logprobs.npy"), "w+", np.float32,
                                     (n, t, top_k))
  fn = _topk_fn(teacher, top_k)
  rep = sharding.replicated(mesh)
  progress = train.Progress("teacher_cache", n, t, enabled=show_progress)  # steps = windows
  for start in range(0, n, batch_size):
    if start // batch_size % 5 == 0:
      progress.update(start, {})
    chunk = ids[start:start + batch_size]
    tokens = rows(list(chunk) + [chunk[-1]] * (batch_size - len(chunk)))["inputs"]
    k_ids, k_lp = jax.device_get(fn(t_params, jax.device_put(tokens, rep)))
    out_ids[start:start + len(chunk)] = k_ids[:len(chunk)]
    out_lp[start:start + len(chunk)] = k_lp[:len(chunk)]
  progress.close()
  out_ids.flush()
  out_lp.flush()
  np.save(os.path.join(tmp, "windows.npy"), np.asarray(ids, np.int32))
  meta = {"top_k": top_k, "seq_len": t, "vocab_size": teacher.cfg.vocab_size, "windows": n,
          "transfer_fraction": ts.fraction, "data": ts.data.name,
          "tokenizer": ts.tokenizer.fingerprint,
          "bytes_per_token": top_k * (4 + 4), "teacher": ts.teacher}
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)
  return meta


class Cache:
  """Read side: window ids -> (top-k ids, log-probs)."""

  def __init__(self, path: str):
    try:
      with open(os.path.join(path, "meta.json")) as f:
        self.meta = json.load(f)
      self.windows = np.load(os.path.join(path, "windows.npy"))
      self.ids = np.load(os.path.join(path, "ids.npy"), mmap_mode="r")
      self.logprobs = np.load(os.path.join(path, "logprobs.npy"), mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError) as e:
      raise CacheError(f"teacher cache {path!r} is missing or corrupt ({e}); write it with "
                       "`python -m distill.teacher_cache`") from None
    if self.ids.shape[0] != self.windows.size or self.ids.shape != self.logprobs.shape:
      raise CacheError(f"teacher cache {path!r} is truncated; write it again")

  def check(self, ts: TransferSet, teacher_vocab: int) -> None:
    m = self.meta
    for what, got, want in (("seq_len", m["seq_len"], ts.data.seq_len),
                            ("transfer_fraction", m["transfer_fraction"], ts.fraction),
                            ("data", m["data"], ts.data.name),
                            ("vocab_size", m["vocab_size"], teacher_vocab),
                            ("tokenizer", m["tokenizer"], ts.tokenizer.fingerprint)):
      if got != want:
        raise CacheError(f"teacher cache was written with {what}={got!r} but this run has "
                         f"{want!r}; write the cache again for this config")
    # A teacher ensemble's targets are not its members' (nor another ensemble's): when either
    # side is an ensemble the teachers must be the same. (Single-teacher caches keep the old
    # rule: the teacher is recorded, not checked.)
    got = str(m.get("teacher", ""))
    if ensemble.SOURCE_PREFIX in (got[:len(ensemble.SOURCE_PREFIX)],
                                  ts.teacher[:len(ensemble.SOURCE_PREFIX)]) and got != ts.teacher:
      raise CacheError(f"teacher cache was written with teacher={got!r} but this run has "
                       f"{ts.teacher!r}; write the cache again for this config")

  def lookup(self, window_ids: np.ndarray):
    rows = np.searchsorted(self.windows, window_ids)
    if np.any(rows >= self.windows.size) or np.any(self.windows[rows] != window_ids):
      raise CacheError("a training window is not in the teacher cache; write it again")
    return np.asarray(self.ids[rows]), np.asarray(self.logprobs[rows])


class CachedIterator:
  """Adds the cached teacher targets to each batch of a window-id-carrying iterator."""

  def __init__(self, it, cache: Cache):
    self.it, self.cache = it, cache

  def __next__(self):
    b = dict(next(self.it))
    b["teacher_ids"], b["teacher_logprobs"] = self.cache.lookup(b.pop("window"))
    return b

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


GENERATED_PREFIX = "generated:"


def write_generations(teacher, t_params, windows, out_dir: str, cfg: sampling.SampleConfig, *,
                      prompt_len: int, key, batch_size: int = 32, meta: dict | None = None,
                      progress=None, prompt_lens=None) -> dict:
  """Teacher continuations of `windows` [N, T+1] (their first prompt_len tokens) -> out_dir.

  prompt_lens [N]: each row's own prompt length (<= prompt_len, the prompt buffer), for table
  examples; the rows are then cut to T+1 tokens and only the generated tokens are trained
  (completion-only), where windows also train their prompt's tokens.
  Row r draws with row id r, so the set does not depend on batch_size.
  """
  n, width = windows.shape
  tmp = out_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  seqs = np.lib.format.open_memmap(os.path.join(tmp, "sequences.npy"), "w+", np.int32, (n, width))
  mask = np.lib.format.open_memmap(os.path.join(tmp, "mask.npy"), "w+", np.float32,
                                   (n, width - 1))
  lengths = []
  for start in range(0, n, batch_size):
    if progress is not None and start // batch_size % 5 == 0:
      progress.update(start, {})
    rows = np.asarray(windows[start:start + batch_size, :prompt_len], np.int32)
    real = len(rows)
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], batch_size - real, 0)])  # one shape
    lens = None if prompt_lens is None else pad(np.asarray(prompt_lens[start:start + real]))
    out = jax.device_get(sampling.run(
        teacher, t_params, pad(rows), key, cfg, row_ids=np.arange(start, start + batch_size),
        prompt_lens=lens, prefill=None if lens is None else int(np.min(prompt_lens))))
    toks, gen = out["tokens"][:real, :width], out["gen_mask"][:real, :width]
    seqs[start:start + real] = toks
    if prompt_lens is None:  # targets that are real text: the prompt's (from 1) and generated
      real_prompt = np.zeros_like(gen)
      real_prompt[:, 1:prompt_len] = 1.0
      gen = np.maximum(real_prompt, gen)
    mask[start:start + real] = gen[:, 1:]
    lengths.extend(out["lengths"][:real].tolist())
  if progress is not None:
    progress.close()
  seqs.flush()
  mask.flush()
  meta = dict(meta or {}, kind="generated", rows=n, seq_len=width - 1, prompt_len=prompt_len,
              gen_len=cfg.gen_len, temperature=cfg.temperature, top_k=cfg.top_k,
              top_p=cfg.top_p, mean_generated=float(np.mean(lengths)) if lengths else 0.0)
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
  shutil.rmtree(out_dir, ignore_errors=True)
  os.replace(tmp, out_dir)
  return meta


def generate(teacher, t_params, out_dir: str, ts: TransferSet, *, prompt_len: int,
             temperature: float, top_k: int = 0, top_p: float = 1.0, batch_size: int = 32,
             show_progress: bool = True) -> dict:
  """SeqKD transfer set from the run's transfer set (windows in window-id order). For a
  table of examples the teacher answers each example's own prompt (`prompt_len` unused) and
  the student trains on its answers only."""
  tok, seq_len = ts.tokenizer, ts.data.seq_len
  if not 1 <= prompt_len <= seq_len:
    raise CacheError(f"--prompt_len={prompt_len} must be in [1, data.seq_len={seq_len}]")
  if seq_len + 1 > teacher.cfg.max_len:
    raise CacheError(f"data.seq_len + 1 = {seq_len + 1} exceeds the teacher's context "
                     f"of {teacher.cfg.max_len} positions")
  ids, rows = data.train_windows(ts.data, tok, ts.workdir, ts.fraction)
  parts = [rows(list(ids[i:i + 256])) for i in range(0, len(ids), 256)]
  windows = np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1)
                            for b in parts])
  prompt_lens = None
  if data.is_table(ts.data.name):  # the examples' own prompts, answered to EOS or the context
    prompt_lens = data.prompt_lengths(np.concatenate([b["mask"] for b in parts]))
    prompt_len = int(prompt_lens.max())
    gen_len = seq_len + 1 - int(prompt_lens.min())
    if prompt_len + gen_len > teacher.cfg.max_len:
      gen_len = seq_len + 1 - prompt_len
  else:
    gen_len = seq_len + 1 - prompt_len
  cfg = sampling.SampleConfig(gen_len=gen_len,
                              temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                              eos_id=-1 if tok.eos_id is None else tok.eos_id,
                              pad_id=data.pad_id(tok),
                              vocab=min(tok.vocab_size, teacher.cfg.vocab_size))
  meta = {"data": ts.data.name, "tokenizer": tok.fingerprint, "transfer_fraction": ts.fraction,
          "teacher": ts.teacher, "seed": ts.seed,
          "prompts": "window prefixes" if prompt_lens is None else "the examples' prompts"}
  return write_generations(teacher, t_params, windows, out_dir, cfg, prompt_len=prompt_len,
                           key=jax.random.key(ts.seed), batch_size=batch_size, meta=meta,
                           progress=train.Progress("seqkd", len(ids), seq_len,
                                                   enabled=show_progress),
                           prompt_lens=prompt_lens)


def generated_iterator(path: str, *, seq_len: int, tokenizer, batch_size: int, seed: int,
                       process_index: int = 0, process_count: int = 1):
  """Shuffled, repeated, checkpointable batches of a generated transfer set (every row)."""
  try:
    with open(os.path.join(path, "meta.json")) as f:
      meta = json.load(f)
    seqs = np.load(os.path.join(path, "sequences.npy"), mmap_mode="r")
    mask = np.load(os.path.join(path, "mask.npy"), mmap_mode="r")
  except (OSError, ValueError, json.JSONDecodeError) as e:
    raise CacheError(f"generated transfer set {path!r} is missing or corrupt ({e}); write it "
                     "with `python -m distill.teacher_cache --generate`") from None
  if seqs.shape != (meta["rows"], meta["seq_len"] + 1) or mask.shape[0] != meta["rows"]:
    raise CacheError(f"generated transfer set {path!r} is truncated; write it again")
  for what, got, want in (("seq_len", meta["seq_len"], seq_len),
                          ("tokenizer", meta["tokenizer"], tokenizer.fingerprint)):
    if got != want:
      raise CacheError(f"generated transfer set was written with {what}={got!r} but this run "
                       f"has {want!r}; generate it again for this config")

  def rows(ids):
    ids = np.asarray(ids)
    win = np.asarray(seqs[ids], np.int32)
    return {"inputs": win[:, :-1], "targets": win[:, 1:], "mask": np.asarray(mask[ids], np.float32)}
  local = data.local_batch(batch_size, process_index, process_count)
  return data.batched(list(range(meta["rows"])), rows, batch_size, seed, process_index * local,
                      local)
