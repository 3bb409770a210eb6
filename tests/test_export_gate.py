"""An export gate failing on purpose: results first, the file kept and marked, exit 1, and a
rerun with a passing setting that re-exports without training (issue 31).

One test on a copy of the session's finished `tiny:small` run (tests/conftest.py `small_run`,
watch preset only): the CLI with `min_agreement` above 1 (no file can pass) must still write
report.json / report.md, keep the .tflite with its card marked failed and its figures, touch
no stage, and end with exit 1 and one `error:` line; then the pipeline again with the mode's
own threshold redoes the failed export (not skipped as finished) and trains nothing.
"""
import json
import os
import subprocess
import sys

from distill.run import export_stage, pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("teacher", "student", "baseline")


def _stage_files(workdir) -> dict:
  """{path: (mtime, size)} of every file of every training stage: what a retrain would touch."""
  out = {}
  for m in STAGES:
    for d, _, files in os.walk(os.path.join(workdir, m)):
      for name in files:
        path = os.path.join(d, name)
        out[path] = (os.path.getmtime(path), os.path.getsize(path))
  return out


def _read(path):
  with open(path) as f:
    return json.load(f) if path.endswith(".json") else f.read()


def test_failed_gate_keeps_results_and_a_rerun_reexports_without_training(small_run, tmp_path):
  workdir = small_run.copy(tmp_path / "w")
  stages = _stage_files(workdir)
  assert stages
  for name in ("report.json", "report.md"):  # so the failing run must write them itself
    os.remove(os.path.join(workdir, name))
  r = subprocess.run(
      [sys.executable, "-m", "distill.main", "--config=configs/tiny.py:small",
       f"--workdir={workdir}", f"--config.data.data_dir={small_run.data_dir}",
       "--config.export.presets=('watch',)", "--config.export.watch.min_agreement=1.01"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert r.returncode == 1, r.stderr[-3000:]
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, r.stderr[-3000:]
  assert "export gate failed for watch" in errors[0] and "min_agreement" in errors[0]

  rep = _read(os.path.join(workdir, "report.json"))
  x = rep["export"]["watch"]
  assert x["status"] == "failed" and ">= 101%" in x["rule"] and "failed verification" in x["error"]
  assert 0.0 <= x["top1_agreement"] <= 1.0 and x["greedy_identical"]  # its figures
  assert os.path.isfile(x["file"]) and os.path.getsize(x["file"]) == x["bytes"]  # kept
  assert "val_ce" in rep["student"] and "gap_closed" in rep  # the results are there too
  card = _read(os.path.join(os.path.dirname(x["file"]), "model_card.json"))
  assert card["status"] == "failed" and export_stage.gates_failed(card)
  v = card["verification"]
  assert v["passed"] is False and v["teacher_forced"]["top1_agreement"] == x["top1_agreement"]
  md = _read(os.path.join(workdir, "report.md"))
  assert "## Export" in md and "**FAILED**" in md
  assert _stage_files(workdir) == stages  # every stage in place, untouched

  # The same command with the mode's own threshold: the failed export is redone and passes.
  rep2 = pipeline.run(small_run.config(), workdir)
  assert rep2["export"]["watch"]["status"] == "verified"
  assert "error" not in rep2["export"]["watch"]
  assert _read(os.path.join(workdir, "report.json"))["export"]["watch"]["status"] == "verified"
  card2 = _read(os.path.join(os.path.dirname(x["file"]), "model_card.json"))
  assert card2["status"] == "verified" and card2["verification"]["passed"] is True
  assert _stage_files(workdir) == stages  # nothing retrained
