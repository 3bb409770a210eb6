"""Fair baselines (issue 31): the dev split, best-checkpoint selection, baseline.lr and the
extra baselines.

The loop's selection is checked on a planted dev loss (a fixed sequence whose minimum is in
the middle): the kept step is NumPy's argmin of the logged losses and the kept params are the
ones the loss was taken of, also after a kill and a resume. The pipeline test then trains the
student and the three baselines for a few steps against the session's finished teacher and
checks the stage records, the report's best rows against metrics.jsonl, the dev loss against a
NumPy cross-entropy of the saved best params, and both gap-closed figures.
"""
import functools
import json
import os

import jax
import numpy as np
import pytest

from distill import data
from distill.data import tokenizer as tokenizers
from distill.eval import metrics as evaluate
from distill.inference import stage
from distill.models import sharding
from distill.models.transformer import LM
from distill.run import pipeline, settings
from distill.train import loop as train
from distill.train import objectives, selection
from distill.train import step as step_lib
from tests.helpers import Interrupt, KillAfter, shrunken_config, tiny_model_config

# Dev losses of steps 1..8, lowest at step 5 (and a tie at 7 that must not replace it).
PLANTED = [5.0, 4.0, 3.5, 3.0, 1.0, 2.0, 1.0, 4.0]


def test_dev_split_is_held_out_of_every_training_set(tmp_path):
  for n, dev in ((200, 0.05), (37, 0.1), (10, 0.5)):
    held = set(data.dev_window_ids(n, dev).tolist())
    assert len(held) == max(1, round(n * dev))
    for fraction in (0.1, 0.5, 1.0):
      kept = set(data.transfer_window_ids(n, fraction, dev).tolist())
      assert kept and not kept & held
    assert set(data.transfer_window_ids(n, 1.0, dev).tolist()) | held == set(range(n))
    # The transfer set with a dev split is a prefix of the same fixed permutation as without.
    assert set(data.transfer_window_ids(n, 0.5, dev).tolist()) <= set(
        data.transfer_window_ids(n, 0.5, 0.0).tolist())
  assert data.dev_window_ids(50, 0.0).size == 0
  spec = settings.data_spec(shrunken_config(**{"data.dev_fraction": 0.1}).data)
  workdir = str(tmp_path)
  data.prepare(spec, workdir)
  # On a real corpus: the dev batches hold the dev share of the windows the training sets do
  # not, every one once (train windows + dev windows = the split).
  dev_rows = sum(int((b["mask"].sum(-1) > 0).sum())
                 for b in data.dev_batches(spec, None, workdir, batch_size=8))
  train_rows = data.train_windows(spec, None, workdir, 1.0)[0].size
  assert dev_rows == round((train_rows + dev_rows) * 0.1) > 0


def _planted_stage(workdir, stage_dir, spec, kill_after=None):
  """8 CE steps of a tiny LM, checkpoint every 2, dev loss every step from PLANTED; returns
  (StageResult, {step: params the loss was taken of})."""
  tok = tokenizers.ByteTokenizer()
  lm = LM(tiny_model_config(vocab_size=264, max_len=64))
  it = data.make_train_iterator(spec, tok, workdir, batch_size=8, seed=3, fraction=0.5)
  if kill_after is not None:
    it = KillAfter(it, kill_after)
  seen, calls = {}, []

  def loss(params):
    step = len(calls) + 1 + offset[0]
    calls.append(step)
    seen[step] = jax.tree.map(np.asarray, params)
    return PLANTED[step - 1]

  offset = [0]
  ckpt = os.path.join(stage_dir, "checkpoints")
  if os.path.isdir(ckpt):  # a resume: the loop restarts after the newest checkpoint
    offset[0] = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
  mesh = sharding.make_mesh(sharding.MeshSpec(data=-1, fsdp=1, tensor=1), devices=jax.devices()[:2])
  res = train.run(name="t", lm=lm, mesh=mesh, stage_dir=stage_dir, data_iter=it, steps=8,
                  loss_fn=functools.partial(objectives.ce_loss, student=lm),
                  tx=step_lib.make_optimizer(lr=1e-2, steps=8, warmup=1), seed=3,
                  checkpoint_every=2, log_every=1, is_main=True,
                  dev=selection.DevCheck(every=1, loss=loss, keep_best=True))
  return res, seen, lm


def _logged(stage_dir):
  with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r["step"] for r in rows if "dev_loss" in r], [r["dev_loss"] for r in rows
                                                        if "dev_loss" in r]


def _load_best(stage_dir, lm):
  from distill.train import checkpoint  # pylint: disable=import-outside-toplevel
  shapes = lm.abstract_params()
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return checkpoint.load_params(selection.best_params_dir(stage_dir), checkpoint.abstract_like(
      shapes, jax.tree.map(lambda _: dev, shapes)))


def test_best_checkpoint_is_the_argmin_of_the_logged_dev_losses_and_survives_a_resume(tmp_path):
  workdir = str(tmp_path)
  spec = settings.data_spec(shrunken_config(**{"data.dev_fraction": 0.1}).data)
  data.prepare(spec, workdir)
  ref_dir = str(tmp_path / "ref")
  res, seen, lm = _planted_stage(workdir, ref_dir, spec)
  steps, losses = _logged(ref_dir)
  assert steps == list(range(1, 9)) and losses == PLANTED
  want = steps[int(np.argmin(losses))]  # the first of a tie: step 5, not 7
  assert want == 5 and res.best == {"step": want, "dev_loss": min(PLANTED)}
  assert selection.read_best(ref_dir) == res.best
  best = _load_best(ref_dir, lm)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, best), seen[want])
  # The last step's params are not the best one's: the selection kept a copy, not an alias.
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(seen[8]),
                                                       jax.tree.leaves(seen[want])))

  # Killed in step 7 (checkpoint at 6, best at 5 written with it), then resumed: same best.
  cut = str(tmp_path / "cut")
  with pytest.raises(Interrupt):
    _planted_stage(workdir, cut, spec, kill_after=6)
  best_dir = os.path.join(cut, selection.BEST_DIR)
  assert selection.read_best(cut) is None  # not finished
  with open(os.path.join(best_dir, "at-6.json")) as f:
    assert json.load(f) == {"step": 5, "dev_loss": 1.0}
  # Pointers only for the checkpoints orbax keeps (4 and 6), params only for bests they name.
  assert sorted(os.listdir(best_dir)) == ["at-4.json", "at-6.json", "params-4", "params-5"]
  resumed, _, _ = _planted_stage(workdir, cut, spec)
  assert resumed.resumed_from == 6 and resumed.best == res.best
  assert _logged(cut) == (steps, losses)
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, _load_best(cut, lm)),
               seen[want])
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, resumed.params),
               jax.tree.map(np.asarray, res.params))


def _numpy_ce(lm, params, batches) -> float:
  """Mean next-token CE by hand: NumPy log-softmax of the model's logits, masked."""
  total = count = 0.0
  for b in batches:
    logits = np.asarray(jax.jit(lm.apply)(params, b["inputs"]), np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, b["targets"][..., None], -1)[..., 0]
    total += float((nll * b["mask"]).sum())
    count += float(b["mask"].sum())
  return total / count


@pytest.mark.slow  # four short training stages and the evaluation of seven models
def test_pipeline_baselines_their_learning_rates_and_best_checkpoints(small_run, tmp_path):
  c = small_run.config(**{
      "teacher.checkpoint": small_run.teacher, "distill.steps": 4, "train.dev_every": 1,
      "baseline.lr": 1e-2, "baseline.more_labels": True, "export.enabled": False,
      "eval.sample_prompts": 0, "checkpoint_every": 2})
  out = str(tmp_path / "w")
  rep = pipeline.run(c, out)

  def info(name):
    with open(os.path.join(out, name, "stage.json")) as f:
      return json.load(f)
  assert info("baseline")["lr"] == 1e-2 and info("student")["lr"] == c.distill.lr
  assert info("baseline_same_recipe")["lr"] == c.distill.lr  # the old comparison, kept
  assert info("baseline_more_labels")["transfer_fraction"] == 1.0
  assert info("baseline_more_labels")["lr"] == 1e-2
  for name in ("student", "baseline", "baseline_more_labels"):
    steps, losses = _logged(os.path.join(out, name))
    assert steps == [1, 2, 3, 4], name
    best = rep[f"{name}_best"]
    assert best["step"] == steps[int(np.argmin(losses))] and best["dev_loss"] == min(losses)
    assert info(name)["best"] == {"step": best["step"], "dev_loss": best["dev_loss"]}
    assert np.isfinite(best["val_ce"]) and "heldout" in best
  assert "baseline_same_recipe_best" not in rep  # the old figure is the last step's
  # The dev loss is the CE of the kept params on the dev split (a NumPy reference).
  ctx_spec = settings.data_spec(c.data)
  tok = tokenizers.load(os.path.join(out, "student", "tokenizer"))
  dev = data.dev_batches(ctx_spec, tok, out, batch_size=c.data.batch_size,
                         max_batches=c.data.eval_batches or None)
  lm = LM(stage.read_model_config(os.path.join(out, "student")))
  mesh = sharding.make_mesh(settings.mesh_spec(c.mesh))
  params = stage.load_stage_params(os.path.join(out, "student"), lm,
                                   sharding.param_shardings(lm, mesh), best=True)
  assert rep["student_best"]["dev_loss"] == pytest.approx(_numpy_ce(lm, params, dev), rel=1e-4)
  assert evaluate.mean_ce(lm, params, dev, mesh) == pytest.approx(
      rep["student_best"]["dev_loss"], rel=1e-6)
  # Gap closed: between the best checkpoints; the same-recipe figure from the last steps.
  ce = {m: rep[m]["val_ce"] for m in rep if isinstance(rep[m], dict) and "val_ce" in rep[m]}
  assert rep["gap_closed_models"] == {"gap_closed": ["student_best", "baseline_best"],
                                      "gap_closed_same_recipe": ["student",
                                                                 "baseline_same_recipe"]}
  for key, (s, b) in rep["gap_closed_models"].items():
    assert rep[key] == pytest.approx(evaluate.gap_closed(ce["teacher"], ce[s], ce[b]),
                                     nan_ok=True)
  assert rep["more_labels"]["model"] == "baseline_more_labels_best"
  with open(os.path.join(out, "report.md")) as f:
    md = f.read()
  assert f"student_best (step {rep['student_best']['step']})" in md
  assert "same recipe, last steps" in md
  # A rerun trains nothing and reloads the same best checkpoints.
  stamps = {m: os.path.getmtime(os.path.join(out, m, "stage.json")) for m in (
      "student", "baseline", "baseline_same_recipe", "baseline_more_labels")}
  rep2 = pipeline.run(c, out)
  assert {m: os.path.getmtime(os.path.join(out, m, "stage.json")) for m in stamps} == stamps
  assert rep2["baseline_best"]["val_ce"] == pytest.approx(rep["baseline_best"]["val_ce"],
                                                          rel=1e-6)
