"""A student trained from the offline top-k cache matches the online run with the same rule."""
import json
import os

import numpy as np
import pytest

from distill.run import settings
from distill.run import pipeline
from distill.methods import teacher_cache
from distill.data import tokenizer as tokenizers
from tests.helpers import shrunken_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small(**kw):
  # Only the student's training losses are compared: no baseline, export, samples or held-out.
  return shrunken_config(**{"baseline.enabled": False, "export.enabled": False,
                            "data.eval_batches": 1, "eval.prompts": (), "distill.steps": 3,
                            "distill.transfer_fraction": 0.05, "eval.sample_prompts": 0,
                            "eval.heldout": "", **kw})


@pytest.fixture(scope="module")
def teacher_and_cache(tmp_path_factory, small_run):
  root = tmp_path_factory.mktemp("cache")
  # The session's shared run's pretrained teacher and data dir (tests/conftest.py).
  data_dir, teacher = small_run.data_dir, small_run.teacher
  ctx = pipeline.Context(_small(**{"data.data_dir": data_dir, "teacher.checkpoint": teacher}),
                         str(root / "w"))
  t_lm, t_params, _, _ = pipeline.load_or_train_teacher(ctx)
  meta = teacher_cache.write(t_lm, t_params, str(root / "cache"), 8, ctx.transfer_set(), ctx.mesh)
  assert meta["bytes_per_token"] == 8 * 8 and meta["windows"] > 0
  return data_dir, teacher, str(root / "cache")


@pytest.mark.parametrize("tail", [pytest.param("renormalize", marks=pytest.mark.slow),
                                  "tail_bucket"])
def test_cached_student_matches_online_topk(tmp_path, tail, teacher_and_cache):
  data_dir, teacher, cache = teacher_and_cache
  common = {"data.data_dir": data_dir, "teacher.checkpoint": teacher, "distill.top_k": 8,
            "distill.tail": tail}
  pipeline.run(_small(**common), str(tmp_path / "online"))
  pipeline.run(_small(**common, **{"distill.teacher_source": "cache:" + cache}),
               str(tmp_path / "cached"))
  read = lambda d: [json.loads(l) for l in open(tmp_path / d / "student" / "metrics.jsonl")]
  online, cached = read("online"), read("cached")
  assert len(online) == len(cached) == 3
  np.testing.assert_allclose([r["loss"] for r in cached], [r["loss"] for r in online], rtol=1e-5)


def test_cache_check_refuses_each_mismatch(teacher_and_cache):
  """`Cache.check` accepts the config the cache was written for and names each difference."""
  data_dir, teacher, cache_dir = teacher_and_cache
  base = {"data.data_dir": data_dir, "teacher.checkpoint": teacher}
  c = _small(**base)
  tok = tokenizers.load(os.path.join(teacher, "tokenizer"))  # what the pipeline uses
  cache = teacher_cache.Cache(cache_dir)
  vocab = cache.meta["vocab_size"]

  def ts(config, tokenizer=tok):  # the transfer set a run of `config` would check the cache for
    return teacher_cache.TransferSet(
        data=settings.data_spec(config.data), tokenizer=tokenizer, workdir="",
        fraction=config.distill.transfer_fraction, teacher=teacher, seed=config.seed)
  cache.check(ts(c), vocab)  # the config it was written for: no error
  for field, value, named in (("data.seq_len", 16, "seq_len="),
                              ("distill.transfer_fraction", 0.5, "transfer_fraction="),
                              ("data.name", "text:/elsewhere/*.txt", "data=")):
    with pytest.raises(teacher_cache.CacheError, match=named):
      cache.check(ts(_small(**base, **{field: value})), vocab)
  with pytest.raises(teacher_cache.CacheError, match="vocab_size="):
    cache.check(ts(c), vocab + 8)

  class OtherTokenizer:
    fingerprint = "another tokenizer"
  with pytest.raises(teacher_cache.CacheError, match="tokenizer="):
    cache.check(ts(c, OtherTokenizer()), vocab)


def test_cache_mismatch_is_refused(tmp_path):
  cache = tmp_path / "c"
  cache.mkdir()
  with pytest.raises(teacher_cache.CacheError, match="missing or corrupt"):
    teacher_cache.Cache(str(cache))
