"""The pipeline distills with every divergence kind, and alpha/T schedules reach the step."""
import json
import os

import numpy as np
import pytest

from distill import losses
from distill.run import pipeline
from tests.helpers import shrunken_config


def _small(**kw):
  # Only the student stage is under test: no baseline, export, samples or held-out text.
  return shrunken_config(**{"baseline.enabled": False, "export.enabled": False,
                            "data.eval_batches": 1, "eval.prompts": (),
                            "eval.sample_prompts": 0, "eval.heldout": "", **kw})


@pytest.fixture(scope="module")
def teacher_dir(small_run):
  """The session's shared run's pretrained teacher and data dir (tests/conftest.py)."""
  return small_run.teacher, small_run.data_dir


# forward_kl and reverse_kl run by default; the other four kinds (same code path through the
# pipeline, each checked against NumPy in test_losses.py) are slow-marked to keep the default
# suite within its time budget.
@pytest.mark.parametrize("kind", [k if k in ("forward_kl", "reverse_kl")
                                  else pytest.param(k, marks=pytest.mark.slow)
                                  for k in losses.KINDS])
def test_pipeline_runs_with_every_loss_kind(kind, teacher_dir, tmp_path):
  teacher, data_dir = teacher_dir
  c = _small(**{"distill.loss": kind, "teacher.checkpoint": teacher, "data.data_dir": data_dir,
                "distill.beta": 0.9, "distill.skew": 0.2})
  rep = pipeline.run(c, str(tmp_path))
  assert np.isfinite(rep["student"]["val_ce"]) and rep["student"]["kl_to_teacher"] >= 0
  rows = [json.loads(l) for l in open(os.path.join(tmp_path, "student", "metrics.jsonl"))]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r["divergence"]) and r["divergence"] >= 0 for r in rows)


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
