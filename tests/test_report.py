"""report.json against the saved checkpoints, and the report's plots and cost table.

Parameter counts are recounted from the arrays orbax saved for each stage; FLOPs/token are
recomputed from those arrays' shapes (matmul weights x 2, plus causal attention), not from
the model code that produced the report.
"""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from distill.run import report
from tests.helpers import shrunken_config

STAGES = ("teacher", "student", "baseline")


@pytest.fixture(scope="module")
def run(small_run):
  """The session's shared finished run (tests/conftest.py: tiny:small, the watch preset only,
  which still gives the report a .tflite row); read only."""
  with open(os.path.join(small_run.workdir, "report.json")) as f:
    return small_run.workdir, json.load(f)


def _saved_arrays(stage_dir):
  with ocp.StandardCheckpointer() as c:
    tree = c.restore(os.path.abspath(os.path.join(stage_dir, "params")))
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _flops_from_arrays(arrays: dict, seq_len: int) -> float:
  """2 x (weights a token multiplies) + 2 x 2 x heads x head_dim x (T + 1) / 2 per layer."""
  matmul = 0
  layers = 0
  qk_width = 0
  for name, a in arrays.items():
    leaf = name.split("/")
    if leaf[-1] in ("q", "k", "v", "o", "gate", "up", "down", "unembed"):
      matmul += a.size
    if leaf[-1] == "q":
      layers += 1
      qk_width = a.shape[1] * a.shape[2]  # [D, heads, head_dim]
  if "unembed" not in arrays:
    matmul += arrays["embed"].size  # tied: the embedding is also the output projection
  return 2.0 * matmul + layers * 2 * 2 * qk_width * (seq_len + 1) / 2


def test_params_and_flops_match_saved_checkpoints(run):
  workdir, rep = run
  seq_len = rep["setup"]["seq_len"]
  for stage in STAGES:
    arrays = _saved_arrays(os.path.join(workdir, stage))
    assert rep[stage]["params"] == sum(a.size for a in arrays.values()), stage
    assert rep[stage]["flops_per_token"] == pytest.approx(_flops_from_arrays(arrays, seq_len),
                                                          rel=1e-9), stage
  # The student really is the smaller model, and the baseline has the student's shape.
  assert rep["student"]["flops_per_token"] < rep["teacher"]["flops_per_token"]
  assert rep["baseline"]["params"] == rep["student"]["params"]


def test_plots_and_markdown(run):
  workdir, rep = run
  for png in ("quality_vs_compute.png", "loss_curves.png"):
    path = os.path.join(workdir, png)
    assert os.path.getsize(path) > 10_000, png
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert set(rep["plots"]) == {"quality_vs_compute.png", "loss_curves.png"}
  with open(os.path.join(workdir, "report.md")) as f:
    md = f.read()
  for needle in ("## What distillation bought", "quality_vs_compute.png", "loss_curves.png",
                 "CPU-s per 1k tokens", "student/watch (LiteRT"):
    assert needle in md, needle


def test_latency_rows(run):
  workdir, rep = run
  lat = rep["latency"]
  for row in ("teacher", "student", "student/watch"):
    assert lat[row]["decode_ms_per_token"] > 0, row
    assert lat[row]["cpu_s_per_1k_tokens"] > 0, row
  assert lat["student/watch"]["bytes"] == os.path.getsize(rep["export"]["watch"]["file"])
  # The measurement's own time is reported (its size is bench/ material, not a test's).
  assert rep["wall_seconds"]["report_latency"] > 0


def test_report_without_export_or_baseline(tmp_path):
  """write() copes with partial results (no export, no baseline, no metrics files)."""
  rep = {"teacher": {"val_ce": 2.0, "params": 1000, "flops_per_token": 2e3},
         "student": {"val_ce": 2.5, "params": 100, "flops_per_token": 2e2},
         "wall_seconds": {"total": 1.0},
         "setup": {"data": "x", "seq_len": 8, "batch_size": 1, "teacher_steps": 1,
                   "distill_steps": 1, "transfer_fraction": 0.1, "loss": "forward_kl",
                   "temperature": 1.0, "alpha": 0.0, "seed": 0, "note": "n"}}
  report.write(str(tmp_path), rep, shrunken_config())
  assert rep["latency"] == {}  # no stage directories to load: measured nothing, said so
  assert os.path.exists(tmp_path / "quality_vs_compute.png")
  assert "| teacher (JAX) | 1,000 | 2,000 | – |" in (tmp_path / "report.md").read_text()
