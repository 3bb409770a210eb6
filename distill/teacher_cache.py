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
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import numpy as np

from distill import data, losses, sharding, train

CACHE_PREFIX = "cache:"


class CacheError(ValueError):
  """A cache that is missing, corrupt or does not match the run."""


def _topk_fn(lm, k):
  def fn(params, tokens):
    return losses.topk_targets(lm.apply(params, tokens), k,
                               normalized=getattr(lm, "normalized", False))
  return jax.jit(fn)


def write(ctx, teacher, t_params, out_dir: str, top_k: int, batch_size: int = 32) -> dict:
  """Run `teacher` over the transfer set and write the cache to `out_dir` atomically."""
  c = ctx.config
  if not 0 < top_k <= teacher.cfg.vocab_size:
    raise CacheError(f"--top_k={top_k} must be in [1, vocab {teacher.cfg.vocab_size}]")
  ids, rows = data.train_windows(c.data, ctx.tokenizer, ctx.workdir, c.distill.transfer_fraction)
  tmp = out_dir.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  n, t = len(ids), c.data.seq_len
  out_ids = np.lib.format.open_memmap(os.path.join(tmp, "ids.npy"), "w+", np.int32, (n, t, top_k))
  out_lp = np.lib.format.open_memmap(os.path.join(tmp, "logprobs.npy"), "w+", np.float32,
                                     (n, t, top_k))
  fn = _topk_fn(teacher, top_k)
  rep = sharding.replicated(ctx.mesh)
  progress = train.Progress("teacher_cache", n, t, enabled=ctx.is_main)  # steps = windows
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
          "transfer_fraction": c.distill.transfer_fraction, "data": c.data.name,
          "tokenizer": ctx.tokenizer.fingerprint,
          "bytes_per_token": top_k * (4 + 4), "teacher": c.teacher.checkpoint or "pretrained"}
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

  def check(self, config, teacher_vocab: int, tokenizer) -> None:
    m, c = self.meta, config
    for what, got, want in (("seq_len", m["seq_len"], c.data.seq_len),
                            ("transfer_fraction", m["transfer_fraction"],
                             c.distill.transfer_fraction),
                            ("data", m["data"], c.data.name),
                            ("vocab_size", m["vocab_size"], teacher_vocab),
                            ("tokenizer", m["tokenizer"], tokenizer.fingerprint)):
      if got != want:
        raise CacheError(f"teacher cache was written with {what}={got!r} but this run has "
                         f"{want!r}; write the cache again for this config")

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


def main(argv=None):
  from absl import app, flags, logging as absl_logging  # pylint: disable=import-outside-toplevel
  from distill import cli as cli_flags  # pylint: disable=import-outside-toplevel
  cfg_flag = cli_flags.define_config("config")
  workdir = flags.DEFINE_string("workdir", "runs/tiny", "Run directory (teacher, data).")
  top_k = flags.DEFINE_integer("top_k", 64, "Teacher tokens kept per position.")
  out = flags.DEFINE_string("out", None, "Cache directory (default <workdir>/teacher_cache).")

  def run(_):
    absl_logging.set_verbosity(absl_logging.WARNING)
    cli_flags.quiet.start()  # before jax starts a backend (no libtpu probe on a CPU machine)
    from distill import cli, pipeline  # pylint: disable=import-outside-toplevel

    def go():
      c = cfg_flag.value
      if c is None:
        raise CacheError("--config is required, e.g. --config=configs/tiny.py")
      ctx = pipeline.Context(c, workdir.value)
      data.prepare(c.data, workdir.value)
      teacher, t_params, _, _ = pipeline.load_or_train_teacher(ctx)
      dest = out.value or os.path.join(workdir.value, "teacher_cache")
      meta = write(ctx, teacher, t_params, dest, top_k.value)
      print(json.dumps({"cache": dest, **meta}))
    return cli.guarded(go)

  from distill import cli as cli_lib  # pylint: disable=import-outside-toplevel
  app.run(run, argv=argv, flags_parser=cli_lib.parse_flags)


if __name__ == "__main__":
  sys.exit(main())
