"""The pipeline distills with every divergence kind, and alpha/T schedules reach the step.

The divergence the student stage logs at step 1 is recomputed here with `distill.losses` from
the same inputs: the student's initial parameters (train.run seeds them with the first half of
split(key(seed))), the finished teacher, the first batch of the transfer set (same data
config, seed and fraction) and the configured temperature, beta, skew and T^2 scaling. So a
pipeline that ignored `distill.loss`, or the temperature, fails; the other kinds' values are
checked to be told apart at the same tolerance.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill import data
from distill import losses
from distill.data import tokenizer as tokenizers
from distill.inference import stage
from distill.models.transformer import LM
from distill.run import pipeline, settings
from tests.helpers import shrunken_config

# The step and this recomputation agree to ~2e-7 relative (same bf16 compute, other fusions);
# at the student's initial, near-uniform distribution forward and reverse KL (and the two skews)
# differ by ~2e-4 relative, so 1e-5 tells every kind apart.
RTOL = 1e-5


def _small(**kw):
  # Only the student stage is under test: no baseline, export, samples or held-out text.
  return shrunken_config(**{"baseline.enabled": False, "export.enabled": False,
                            "data.eval_batches": 1, "eval.prompts": (),
                            "eval.sample_prompts": 0, "eval.heldout": "", "log_every": 1,
                            **kw})


@pytest.fixture(scope="module")
def teacher_dir(small_run):
  """The session's shared run's pretrained teacher and data dir (tests/conftest.py)."""
  return small_run.teacher, small_run.data_dir


def _first_step_divergences(c, workdir, teacher_path) -> dict:
  """{kind: divergence of the student's initial params on the stage's first batch}."""
  tok = tokenizers.load(os.path.join(teacher_path, "tokenizer"))
  teacher = LM(pipeline.read_only_teacher(stage.read_model_config(teacher_path), c))
  t_params = stage.load_stage_params(teacher_path, teacher,
                                     dtype=jnp.dtype(settings.precision(c).teacher_dtype))
  student = LM(pipeline.model_config(c.student.model, teacher.cfg.vocab_size, c))
  init_rng, _ = jax.random.split(jax.random.key(c.seed))
  s_params = jax.jit(student.init)(init_rng)
  it = data.make_train_iterator(settings.data_spec(c.data), tok, workdir, batch_size=c.data.batch_size, seed=c.seed,
                                fraction=c.distill.transfer_fraction)
  batch = next(it)
  s_logits = jax.jit(student.apply)(s_params, batch["inputs"])
  t_logits = jax.jit(teacher.apply)(t_params, batch["inputs"])
  d = c.distill
  return {k: float(losses.divergence(k, s_logits, t_logits, mask=batch["mask"],
                                     temperature=d.temperature, beta=d.beta, skew=d.skew,
                                     scale_by_t2=d.scale_by_t2))
          for k in losses.KINDS}


# forward_kl and reverse_kl run by default; the other four kinds (same code path through the
# pipeline, each checked against NumPy in test_losses.py) are slow-marked to keep the default
# suite within its time budget.
@pytest.mark.parametrize("kind", [k if k in ("forward_kl", "reverse_kl")
                                  else pytest.param(k, marks=pytest.mark.slow)
                                  for k in losses.KINDS])
def test_pipeline_runs_with_every_loss_kind(kind, teacher_dir, tmp_path):
  teacher, data_dir = teacher_dir
  c = _small(**{"distill.loss": kind, "teacher.checkpoint": teacher, "data.data_dir": data_dir,
                "distill.beta": 0.9, "distill.skew": 0.2, "distill.temperature": 1.5})
  assert c.distill.chunk_size == 0 and c.distill.teacher_source == "online"  # dense path
  rep = pipeline.run(c, str(tmp_path))
  assert np.isfinite(rep["student"]["val_ce"]) and np.isfinite(rep["student"]["kl_to_teacher"])
  rows = [json.loads(l) for l in open(os.path.join(tmp_path, "student", "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["divergence"]) for r in rows)
  assert rows[0]["temperature"] == pytest.approx(1.5)
  want = _first_step_divergences(c, str(tmp_path), teacher)
  logged = rows[0]["divergence"]
  assert logged == pytest.approx(want[kind], rel=RTOL), (kind, logged, want)
  # The check can fail: every other kind is off by more than the tolerance.
  for other, value in want.items():
    if other != kind:
      assert abs(value - logged) > RTOL * abs(logged), (other, value, logged)


def test_alpha_and_temperature_schedules_reach_the_step(teacher_dir, tmp_path):
  teacher, data_dir = teacher_dir
  c = _small(**{"teacher.checkpoint": teacher, "data.data_dir": data_dir, "distill.steps": 4,
                "distill.alpha": 0.0, "distill.alpha_end": 1.0, "distill.alpha_schedule": "linear",
                "distill.temperature": 4.0, "distill.temperature_end": 1.0,
                "distill.temperature_schedule": "cosine"})
  pipeline.run(c, str(tmp_path))
  rows = [json.loads(l) for l in open(os.path.join(tmp_path, "student", "metrics.jsonl"))]
  # Metrics of step s are computed with the schedule at s - 1 (the state's step before update).
  np.testing.assert_allclose([r["alpha"] for r in rows], [0.0, 0.25, 0.5, 0.75], atol=1e-6)
  t = [4.0 + (1.0 - 4.0) * 0.5 * (1 - np.cos(np.pi * s / 4)) for s in range(4)]
  np.testing.assert_allclose([r["temperature"] for r in rows], t, rtol=1e-6)
  # With alpha = 0.75 the logged loss mixes divergence and CE exactly so.
  last = rows[-1]
  assert last["loss"] == pytest.approx(0.25 * last["divergence"] + 0.75 * last["ce"], rel=1e-5)
