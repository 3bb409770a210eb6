"""End to end on a shrunken tiny config: report, skip-when-done, load == training forward."""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import distill
from distill.errors import LoadError
from distill.run import pipeline
from distill.run import student_init as pipeline_init
from tests.helpers import shrunken_config


@pytest.fixture(scope="module")
def finished_run(small_run, tmp_path_factory):
  """The session's shared finished run (tests/conftest.py), copied: the rerun test writes."""
  workdir = small_run.copy(tmp_path_factory.mktemp("run") / "w")
  return workdir, small_run.report, small_run.config


def test_pipeline_writes_report_and_stage_dirs(finished_run):
  workdir, rep, _ = finished_run
  for f in ("report.json", "report.md", "loss_curves.png"):
    assert os.path.getsize(os.path.join(workdir, f)) > 0, f
  with open(os.path.join(workdir, "report.json")) as f:
    saved = json.load(f)
  for m in ("teacher", "student", "baseline"):
    for k in ("val_ce", "val_ppl", "kl_to_teacher", "top1_agreement", "params", "flops_per_token",
              "sample_teacher_nll", "sample_repeat_rate", "sample_len_mean"):
      assert np.isfinite(saved[m][k]), (m, k)
    assert os.path.isdir(os.path.join(workdir, m, "params"))
    assert os.path.exists(os.path.join(workdir, m, "model_config.json"))
    assert os.path.isdir(os.path.join(workdir, m, "tokenizer"))
  assert saved["teacher"]["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
  assert saved["teacher"]["top1_agreement"] == pytest.approx(1.0)
  # The formula, or nan when a 2-step teacher is no better than the baseline (both branches
  # are checked: a report that dropped or mis-computed the figure fails either way).
  # Between the best dev checkpoints (train.select_best); with 2 steps and dev_every 25 the
  # only dev loss is the last step's, so the best checkpoint is the last step.
  assert saved["gap_closed_models"]["gap_closed"] == ["student_best", "baseline_best"]
  for m in ("student", "baseline"):
    assert saved[f"{m}_best"]["step"] == 2
    assert saved[f"{m}_best"]["val_ce"] == pytest.approx(saved[m]["val_ce"], rel=1e-6)
  t, s, b = (saved[m]["val_ce"] for m in ("teacher", "student_best", "baseline_best"))
  expect_gap = (b - s) / (b - t) if b > t else float("nan")
  assert saved["gap_closed"] == pytest.approx(expect_gap, nan_ok=True)
  assert rep["gap_closed"] == pytest.approx(expect_gap, nan_ok=True)
  # baseline.lr == distill.lr here: the baseline itself is the same-recipe comparison.
  assert saved["gap_closed_models"]["gap_closed_same_recipe"] == ["student", "baseline"]
  assert set(saved["wall_seconds"]) >= {"teacher", "student", "baseline", "evaluate", "total"}
  # The precision policy the models ran under, as the run's first line stated it.
  p = saved["precision"]
  assert p["dtype"] in ("float32", "bfloat16") and p["teacher_dtype"] == p["dtype"]
  assert p["source"] == "auto" and p["reason"] and isinstance(p["flags"], list)
  assert (p["probe_bf16_gflops"] is None) == (p["probe_fp32_gflops"] is None)
  assert "Precision: " + p["dtype"] in open(os.path.join(workdir, "report.md")).read()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tb")))


def test_rerun_on_finished_workdir_retrains_nothing(finished_run):
  workdir, rep, config = finished_run
  stamps = {m: os.path.getmtime(os.path.join(workdir, m, "stage.json"))
            for m in ("teacher", "student", "baseline")}
  rep2 = pipeline.run(config(), workdir)
  for m, t in stamps.items():
    assert os.path.getmtime(os.path.join(workdir, m, "stage.json")) == t
  assert rep2["student"]["val_ce"] == pytest.approx(rep["student"]["val_ce"], rel=1e-6)


def test_load_logits_equal_training_forward(finished_run):
  workdir, _, _ = finished_run
  m = distill.load(os.path.join(workdir, "student"))
  # The training loop's own last checkpoint, read raw (no target tree), is the reference.
  ckpt_dir = os.path.join(workdir, "student", "checkpoints")
  last = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  with ocp.StandardCheckpointer() as c:
    state = c.restore(os.path.join(ckpt_dir, str(last), "state"))
  trained = jax.tree.map(np.asarray, state["params"])
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, m.params), trained)
  tokens = np.array([m.tokenizer.encode("def f(x): return x")[:16]], np.int32)
  # distill.load computes in fp32 whatever the training dtype (what the fp32 export computes).
  from distill.inference import stage  # pylint: disable=import-outside-toplevel
  from distill.models.transformer import LM  # pylint: disable=import-outside-toplevel
  cfg = stage.read_model_config(os.path.join(workdir, "student"))
  assert m.config == cfg.replace(dtype="float32")
  ref = np.asarray(jax.jit(LM(cfg.replace(dtype="float32")).apply)(trained, tokens))
  got = m.logits(tokens)
  assert got.dtype == np.float32 and got.shape == (1, tokens.shape[1], m.config.vocab_size)
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)
  # Greedy generation (KV cache) equals argmax decoding with full forwards, token for token.
  prompt = m.tokenizer.encode("The")
  ids = list(prompt)
  for _ in range(5):
    last = m.logits(np.array([ids], np.int32))[0, -1, :m.tokenizer.vocab_size]
    ids.append(int(np.argmax(last)))
  want = ids[len(prompt):]
  if m.tokenizer.eos_id in want:  # generation stops at (and keeps) the first EOS
    want = want[:want.index(m.tokenizer.eos_id) + 1]
  assert m.generate_ids(prompt, 5) == want
  assert m.generate("The", max_new_tokens=5) == m.tokenizer.decode(want)
  assert m.tokenizer.decode(m.tokenizer.encode("héllo")) == "héllo"


def test_bos_convention_runs_from_data_to_generate(tmp_path):
  """--config.data.add_bos=true: the packed stream starts documents with BOS, every stage's
  tokenizer records it, and `distill.load(...).generate(text)` puts BOS first; the default
  (auto, byte tokenizer) records no BOS and generates from the text's ids alone."""
  from distill import data  # pylint: disable=import-outside-toplevel
  from distill.run import settings  # pylint: disable=import-outside-toplevel
  c = shrunken_config(**{"data.add_bos": "true", "baseline.enabled": False,
                         "export.enabled": False, "eval.sample_prompts": 0})
  pipeline.run(c, str(tmp_path))
  for name in ("teacher", "student"):
    with open(tmp_path / name / "tokenizer" / "distill_tokenizer.json") as f:
      assert json.load(f)["add_bos"] is True
  m = distill.load(str(tmp_path / "student"))
  stream = data.token_stream(settings.data_spec(c.data), m.tokenizer, str(tmp_path), "train")
  eos = np.flatnonzero(stream == m.tokenizer.eos_id)
  assert stream[0] == m.tokenizer.bos_id and (stream[eos[:-1] + 1] == m.tokenizer.bos_id).all()
  prompt = m.tokenizer.encode("The")
  assert m.generate("The", 6) == m.tokenizer.decode(m.generate_ids([1] + prompt, 6))
  assert m.generate("The", 6, add_bos=False) == m.tokenizer.decode(m.generate_ids(prompt, 6))


def test_default_byte_run_records_no_bos(finished_run):
  workdir, _, _ = finished_run
  m = distill.load(os.path.join(workdir, "student"))
  assert m.tokenizer.add_bos is False
  prompt = m.tokenizer.encode("The")
  assert m.generate("The", 6) == m.tokenizer.decode(m.generate_ids(prompt, 6))


def test_load_refuses_non_stage_dirs(tmp_path):
  with pytest.raises(LoadError, match="does not exist"):
    distill.load(str(tmp_path / "nope"))
  with pytest.raises(LoadError, match="not a distill stage"):
    distill.load(str(tmp_path))


def test_student_init_copies_every_kth_teacher_layer():
  from distill.models.transformer import LM
  from tests.helpers import tiny_model_config
  teacher = LM(tiny_model_config(n_layers=4))
  student = LM(tiny_model_config(n_layers=2))
  t_params = teacher.init(jax.random.key(0))
  s_params = pipeline_init.init_from_teacher(student, teacher, t_params)(jax.random.key(1))
  for i, j in ((0, 0), (1, 2)):
    jax.tree.map(np.testing.assert_array_equal, s_params[f"block_{i}"], t_params[f"block_{j}"])
  np.testing.assert_array_equal(s_params["embed"], t_params["embed"])
  narrow = LM(tiny_model_config(n_layers=2, d_model=16))
  with pytest.raises(pipeline.ConfigError, match="init='random'"):
    pipeline_init.init_from_teacher(narrow, teacher, t_params)


@pytest.mark.slow  # a training run: keeps the default suite in budget
def test_on_policy_stage_samples_every_step_and_reports(tmp_path):
  c = shrunken_config(**{"distill.on_policy.fraction": 1.0, "distill.on_policy.prompt_len": 8,
                         "baseline.enabled": False, "export.enabled": False})
  rep = pipeline.run(c, str(tmp_path))
  with open(tmp_path / "student" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["on_policy"] for r in rows] == [1.0, 1.0]
  assert all(0 < r["sample_len"] <= 25.0 for r in rows)  # gen_len 0 fills seq_len + 1 - 8
  assert np.isfinite(rep["student"]["sample_teacher_nll"])
  assert rep["setup"]["on_policy"]["fraction"] == 1.0


# qat_steps=0 (QAD inside the student stage) is slow-marked to keep the default run under 15
# minutes: the stage variant covers the same saving path, and tests/test_qat.py the snap.
@pytest.mark.parametrize("qat_steps", [pytest.param(0, marks=pytest.mark.slow), 2])
def test_qad_student_is_saved_untied_and_loads_as_the_forward_it_trained(finished_run, tmp_path,
                                                                         qat_steps):
  """A QAD (int4) student of a tied model is saved untied: loading it gives QAD's training
  forward (int4 blocks and head, the lookup from the fp32 table), computed here from the raw
  last checkpoint's master weights; a rerun skips the stage and loads the same model. With
  `qat_steps` QAD is its own stage: it starts from the finished fp32 student (kept as
  `student_fp32`, tied, also in the report) and trains `qat_steps` steps."""
  from distill.models import quant as qat
  from distill.models.transformer import LM  # pylint: disable=import-outside-toplevel
  workdir, _, config = finished_run
  c = config()
  c.teacher.checkpoint = os.path.join(workdir, "teacher")
  c.student.model.d_model, c.student.model.d_ff = 32, 64  # inputs of 32 and 64: int4 blocks
  c.distill.qat = "int4_block32"
  c.distill.qat_steps = qat_steps
  c.baseline.enabled = c.export.enabled = False
  c.eval.sample_prompts = 0  # not under test here (tests/test_onpolicy.py): no sampler compiles
  out = str(tmp_path / "qad")
  rep = pipeline.run(c, out)
  m = distill.load(os.path.join(out, "student"))
  assert m.config.tie_embeddings is False
  ckpt_dir = os.path.join(out, "student", "checkpoints")
  last = max(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  assert last == (qat_steps or c.distill.steps)
  with ocp.StandardCheckpointer() as ck:
    master = ck.restore(os.path.join(ckpt_dir, str(last), "state"))["params"]
  # The QAD stage computes distill.qat_outliers channels apart (8 of d_model 32 here, picked
  # on the fp32 student); QAD inside the student stage has no trained model to pick them on.
  assert len(m.config.outlier_channels) == (c.distill.qat_outliers if qat_steps else 0)
  body, head = qat.fake_quant(master, "int4_block32", outliers=m.config.outlier_channels)
  tied = LM(m.config.replace(tie_embeddings=True))
  tokens = np.array([m.tokenizer.encode("def f(x): return x")[:16]], np.int32)
  ref = np.asarray(jax.jit(lambda b, h, t: tied.logits_from_hidden(h, tied.hidden(b, t)))(
      body, head, tokens), np.float32)
  np.testing.assert_allclose(m.logits(tokens), ref, atol=1e-4 * np.abs(ref).max())
  np.testing.assert_array_equal(m.params["embed"], master["embed"])
  assert rep["setup"]["qat"]["qat_steps"] == qat_steps
  if qat_steps:
    fp32 = distill.load(os.path.join(out, "student_fp32"))
    assert fp32.config.tie_embeddings is True and fp32.config.outlier_channels == ()
    assert np.isfinite(rep["student_fp32"]["val_ce"])
    with open(os.path.join(out, "student_fp32", "stage.json")) as f:
      assert json.load(f)["steps"] == c.distill.steps
    # Adam moves a weight at most ~lr per step: 2 steps from the fp32 student stay within
    # 2 x qat_lr of it (a fresh init would differ by O(0.1)).
    for a, b in zip(jax.tree.leaves(master), jax.tree.leaves(fp32.params)):
      diff = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max()
      assert diff < 2.5 * c.distill.qat_lr, diff
  else:
    assert "student_fp32" not in rep
  rep2 = pipeline.run(c, out)
  assert rep2["student"]["val_ce"] == pytest.approx(rep["student"]["val_ce"], rel=1e-6)
