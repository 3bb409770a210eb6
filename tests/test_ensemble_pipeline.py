"""`config.teachers` in the pipeline: one teacher is exactly the single-teacher run, two give the
weighted NumPy average of their probabilities (online and through the teacher cache)."""
import json
import re
import os
import shutil

import jax
import numpy as np
import pytest

from distill import data
from distill.data import tokenizer as tokenizers
from distill.errors import ConfigError
from distill.inference import stage
from distill.methods import ensemble, teacher_cache
from distill.models.transformer import LM
from distill.run import pipeline
from tests.helpers import shrunken_config

WEIGHTS = (1.0, 3.0)
TWO = ({"seed": 0, "weight": WEIGHTS[0]}, {"seed": 1, "weight": WEIGHTS[1]})
# fp32 so the jitted cache writer and the eager reference agree to rounding (bf16 would not).
TWO_FP32 = {"teachers": TWO, "distill.teacher_source": "cache", "distill.top_k": 16,
            "compute_dtype": "float32"}


def _small(data_dir, **kw):
  # The student's training and its validation figures only: no baseline, export or samples.
  return shrunken_config(**{"data.data_dir": data_dir, "baseline.enabled": False,
                            "export.enabled": False, "data.eval_batches": 1, "eval.prompts": (),
                            "distill.steps": 3, "distill.transfer_fraction": 0.05,
                            "eval.sample_prompts": 0, "eval.heldout": "", **kw})


def _softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _stage_params(workdir, name):
  d = os.path.join(workdir, name)
  lm = LM(stage.read_model_config(d))
  return lm, stage.load_stage_params(d, lm)


def _metrics(workdir, name="student"):
  return [json.loads(l) for l in open(os.path.join(workdir, name, "metrics.jsonl"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("ens")
  data_dir = str(root / "data")
  single = str(root / "single")
  one = str(root / "one")
  reports = {"single": pipeline.run(_small(data_dir), single),
             "one": pipeline.run(_small(data_dir, teachers=({"seed": 0, "weight": 0.7},)), one)}
  # The two-teacher run reuses the finished seed-0 teacher (a finished stage is skipped).
  two = str(root / "two")
  os.makedirs(two)
  shutil.copytree(os.path.join(one, "teacher_seed0"), os.path.join(two, "teacher_seed0"))
  stamp = os.path.getmtime(os.path.join(two, "teacher_seed0", "stage.json"))
  reports["two"] = pipeline.run(_small(data_dir, **TWO_FP32), two)
  assert os.path.getmtime(os.path.join(two, "teacher_seed0", "stage.json")) == stamp
  return {"single": single, "one": one, "two": two, "data": data_dir}, reports


def test_ensemble_of_one_teacher_trains_exactly_as_the_single_teacher(runs):
  dirs, reports = runs
  # Its teacher is pretrained in its own stage directory, bit for bit the single teacher.
  _, t_single = _stage_params(dirs["single"], "teacher")
  _, t_one = _stage_params(dirs["one"], "teacher_seed0")
  assert not os.path.exists(os.path.join(dirs["one"], "teacher"))
  jax.tree.map(np.testing.assert_array_equal, t_single, t_one)
  # ... and the student's losses and params are the single-teacher run's exactly.
  a, b = _metrics(dirs["single"]), _metrics(dirs["one"])
  assert len(a) == len(b) == 3
  assert [r["loss"] for r in a] == [r["loss"] for r in b]
  _, s_single = _stage_params(dirs["single"], "student")
  _, s_one = _stage_params(dirs["one"], "student")
  jax.tree.map(np.testing.assert_array_equal, s_single, s_one)
  assert reports["one"]["student"]["val_ce"] == reports["single"]["student"]["val_ce"]
  assert "ensemble" not in reports["one"]


def test_two_teachers_cached_and_online_targets_are_the_weighted_numpy_average(runs):
  dirs, reports = runs
  (lm0, p0), (lm1, p1) = (_stage_params(dirs["two"], f"teacher_seed{s}") for s in (0, 1))
  assert not np.array_equal(np.asarray(jax.tree.leaves(p0)[0]),
                            np.asarray(jax.tree.leaves(p1)[0])), "seeds gave the same teacher"
  cache = teacher_cache.Cache(os.path.join(dirs["two"], "teacher_cache"))
  assert cache.meta["teacher"].startswith(ensemble.SOURCE_PREFIX)
  # The cached windows, rebuilt as the pipeline reads them.
  ctx = pipeline.Context(_small(dirs["data"], **TWO_FP32), dirs["two"])
  view, params, _, info = pipeline.load_or_train_teacher(ctx)
  assert ensemble.is_ensemble(view) and set(info["members"]) == {"teacher_seed0", "teacher_seed1"}
  ids, rows = data.train_windows(ctx.data, ctx.tokenizer, ctx.workdir, 0.05)
  tokens = rows(list(ids[:4]))["inputs"]
  # Each member as the pipeline holds it (its stage's params, in the teacher dtype).
  assert [m.cfg.replace(dtype="", scan_layers=False) for m in view.members] == [
      m.cfg.replace(dtype="", scan_layers=False) for m in (lm0, lm1)]
  for got_p, want_p in zip(params, (p0, p1)):
    jax.tree.map(lambda g, w: np.testing.assert_array_equal(
        np.asarray(g), np.asarray(w.astype(g.dtype))), got_p, want_p)
  logits = [np.asarray(m.apply(p, tokens), np.float64) for m, p in zip(view.members, params)]
  want = (WEIGHTS[0] * _softmax(logits[0]) + WEIGHTS[1] * _softmax(logits[1])) / sum(WEIGHTS)
  # Online: the ensemble teacher the loss reads.
  got = np.exp(np.asarray(view.apply(params, tokens), np.float64))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
  # Cached: the top-16 of the same mixture, its log-probabilities.
  c_ids, c_lp = cache.lookup(np.asarray(ids[:4]))
  np.testing.assert_allclose(np.exp(c_lp), np.take_along_axis(want, c_ids, -1), rtol=2e-5,
                             atol=1e-7)
  top = np.sort(want, -1)[..., ::-1][..., :16]
  np.testing.assert_allclose(np.exp(c_lp), top, rtol=2e-5, atol=1e-7)
  # The report: `teacher` is the mixture, each member has its row, KL from the mixture.
  rep = reports["two"]
  assert rep["ensemble"] == {"members": ["teacher_seed0", "teacher_seed1"],
                             "weights": list(WEIGHTS)}
  for name in rep["ensemble"]["members"]:
    assert rep[name]["kl_to_teacher"] > 0 and np.isfinite(rep[name]["val_ce"])
    assert rep["wall_seconds"][name] >= 0
  assert rep["teacher"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
  assert rep["teacher"]["params"] == rep["teacher_seed0"]["params"] * 2
  md = open(os.path.join(dirs["two"], "report.md")).read()
  assert "### Teacher ensemble" in md and "| teacher_seed1 | 3 |" in md


def test_a_cache_of_another_teacher_is_refused(runs):
  dirs, _ = runs
  cache = teacher_cache.Cache(os.path.join(dirs["two"], "teacher_cache"))
  ctx = pipeline.Context(_small(dirs["data"], teachers=TWO[:1] + ({"seed": 2},)), dirs["two"])
  ctx.use_tokenizer(tokenizers.from_config("byte"))
  with pytest.raises(teacher_cache.CacheError, match="teacher="):
    cache.check(ctx.transfer_set(), cache.meta["vocab_size"])


def test_a_stage_dir_of_another_seed_is_refused(runs, tmp_path):
  dirs, _ = runs
  wd = tmp_path / "w"
  wd.mkdir()
  shutil.copytree(os.path.join(dirs["one"], "teacher_seed0"), wd / "teacher_seed5")
  with pytest.raises(ConfigError, match="pretrained with seed 0, not 5"):
    pipeline.run(_small(dirs["data"], teachers=({"seed": 5},)), str(wd))


def test_ensemble_weights_are_the_mixture_weights():
  """A weight of 0 drops a member: the mixture is then the other teacher's distribution."""
  from tests.helpers import tiny_model_config  # pylint: disable=import-outside-toplevel
  a, b = LM(tiny_model_config()), LM(tiny_model_config(d_model=16, d_ff=32))
  pa, pb = a.init(jax.random.key(0)), b.init(jax.random.key(1))
  tokens = np.arange(12, dtype=np.int32).reshape(2, 6)
  view = ensemble.EnsembleTeacher([a, b], [0.0, 2.0])
  np.testing.assert_allclose(np.asarray(view.apply((pa, pb), tokens)),
                             np.asarray(jax.nn.log_softmax(b.apply(pb, tokens))), atol=1e-5)
  with pytest.raises(ConfigError, match="vocabularies differ"):
    ensemble.EnsembleTeacher([a, LM(tiny_model_config(vocab_size=72))], [1.0, 1.0])


@pytest.mark.parametrize("overrides,msg", [
    ({"teachers": ({"seed": 0, "weight": 1.0}, {"seed": 0, "weight": 2.0})}, "repeats seed 0"),
    ({"teachers": ({"seed": 0, "checkpoint": "hf:/x"},)}, "needs exactly one of 'seed'"),
    ({"teachers": ({"seed": 0, "wieght": 1.0},)}, "unknown key(s) ['wieght']"),
    ({"teachers": ({"seed": -1},)}, "seed must be an integer >= 0"),
    ({"teachers": ({"seed": 0, "weight": float("nan")},)}, "must be finite, >= 0 and sum"),
    ({"teachers": ({"checkpoint": "/no/such/teacher"},)}, "does not exist"),
    ({"teachers": ({"seed": 0},), "teacher.checkpoint": "hf:/tmp"}, "both name the teacher"),
    ({"teachers": ({"seed": 0},), "student.init": "prune"}, "not wired for a teacher ensemble"),
    ({"teachers": ({"seed": 0},), "distill.hidden.weight": 1.0}, "not wired for a teacher"),
    ({"teachers": ({"seed": 0},), "distill.on_policy.fraction": 0.5}, "not wired for a teacher"),
])
def test_bad_ensemble_configs_are_one_clear_line(overrides, msg):
  from distill.run.validate import validate  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match=re.escape(msg)):
    validate(shrunken_config(**overrides))
  validate(shrunken_config(teachers=({"seed": 0}, {"seed": 1, "weight": 0.5})))


def test_a_loaded_teacher_joins_an_ensemble(runs):
  """{checkpoint: a finished teacher stage} beside {seed}: that stage's weights, the mixture."""
  dirs, _ = runs
  ckpt = os.path.join(dirs["one"], "teacher_seed0")
  mixed = ({"checkpoint": ckpt, "weight": WEIGHTS[0]}, TWO[1])
  ctx = pipeline.Context(_small(dirs["data"], **dict(TWO_FP32, teachers=mixed)), dirs["two"])
  view, params, _, info = pipeline.load_or_train_teacher(ctx)
  assert view.names == ("teacher_0", "teacher_seed1")
  assert info["members"]["teacher_0"]["source"] == ckpt
  _, want0 = _stage_params(dirs["one"], "teacher_seed0")
  jax.tree.map(lambda g, w: np.testing.assert_array_equal(np.asarray(g),
                                                          np.asarray(w.astype(g.dtype))),
               params[0], want0)
  tokens = np.arange(64, dtype=np.int32).reshape(2, 32) % 200
  probs = [_softmax(np.asarray(m.apply(p, tokens), np.float64))
           for m, p in zip(view.members, params)]
  want = (WEIGHTS[0] * probs[0] + WEIGHTS[1] * probs[1]) / sum(WEIGHTS)
  np.testing.assert_allclose(np.exp(np.asarray(view.apply(params, tokens), np.float64)), want,
                             rtol=2e-5, atol=1e-7)
