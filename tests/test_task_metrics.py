"""Task metrics (distill/eval/task.py) against hand-written references, the built-in addition
task's splits (distill/data/tasks.py), greedy completions against `Model.generate_ids`, and a
tiny end-to-end task run's report fields (slow)."""
import itertools
import json
import math
import os
import sys

import jax
import numpy as np
import pytest
from scipy import stats

from distill.data import Prompt, tasks
from distill.data import tokenizer as tokenizers
from distill.errors import ConfigError, UsageError
from distill.eval import task
from distill.inference import model as inference
from distill.inference import sampling
from distill.models.model_config import ModelConfig
from distill.models.transformer import LM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prompts(pairs):
  return [Prompt(i, (1, 2), p, r) for i, (p, r) in enumerate(pairs)]


# ---------------------------------------------------------------------------------------------
# Scorers.


@pytest.mark.parametrize("completion,reference,want", [
    ("  Paris\n", "paris", 1.0),
    ("New   York\tCity", "new york city", 1.0),
    ("STRASSE", "straße", 1.0),  # case-folding, not lower(): ß folds to ss
    ("Paris.", "Paris", 0.0),
    ("", "", 1.0),
    ("357", "358", 0.0),
])
def test_exact_match_normalizes_whitespace_and_case(completion, reference, want):
  fn = task.scorer(task.TaskSpec("exact"))
  assert fn("p", completion, reference) == want
  # The reference: strip, split on whitespace, join with one space, casefold.
  ref = lambda s: " ".join(s.strip().split()).casefold()
  assert want == float(ref(completion) == ref(reference))


@pytest.mark.parametrize("completion,reference,want", [
    ("The answer is 42.", "42", 1.0),
    ("3 apples and 5 pears: 8", "#### 8", 1.0),  # the last number on both sides
    ("1,234 total", "1234", 1.0),  # thousands separators
    ("42.0", "42", 1.0),  # as decimals
    ("-7", "-7", 1.0),
    ("41", "42", 0.0),
    ("no number here", "42", 0.0),
    ("12 then 13", "12", 0.0),  # the last one counts
])
def test_number_extractor_compares_the_last_numbers(completion, reference, want):
  assert task.scorer(task.TaskSpec("number"))("p", completion, reference) == want


def test_number_extractor_refuses_a_reference_without_a_number():
  fn = task.scorer(task.TaskSpec("number"))
  with pytest.raises(UsageError, match=r"prompt 1 failed .*holds no number"):
    task.score_all(fn, _prompts([("a", "4"), ("b", "four")]), ["4", "4"], "x")


def test_regex_extractor_takes_group_one_on_both_sides():
  fn = task.scorer(task.TaskSpec("regex", regex=r"answer: *(\w+)"))
  assert fn("p", "so the answer: Blue, I think", "answer: blue") == 1.0
  assert fn("p", "so the answer: Blue", "blue") == 1.0  # no match in the reference: all of it
  assert fn("p", "so the answer: red", "blue") == 0.0
  assert fn("p", "no marker", "blue") == 0.0
  whole = task.scorer(task.TaskSpec("regex", regex=r"\d+"))  # no group: the whole match
  assert whole("p", "x 12 y 13", "12") == 1.0
  with pytest.raises(ConfigError, match="is not a regular expression"):
    task.scorer(task.TaskSpec("regex", regex="(unclosed"))


def test_verifier_is_imported_and_called_with_prompt_completion_reference(tmp_path, monkeypatch):
  (tmp_path / "my_verifier.py").write_text(
      "calls = []\n"
      "def judge(prompt, completion, reference):\n"
      "  calls.append((prompt, completion, reference))\n"
      "  return 0.5 if completion == reference else 0.0\n"
      "def boom(prompt, completion, reference):\n"
      "  if prompt == 'b':\n    raise KeyError('oops')\n  return 1.0\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  fn = task.scorer(task.TaskSpec("verifier", verifier="my_verifier:judge"))
  scores = task.score_all(fn, _prompts([("a", "1"), ("b", "2")]), ["1", "3"], "x")
  np.testing.assert_array_equal(scores, [0.5, 0.0])
  assert sys.modules["my_verifier"].calls == [("a", "1", "1"), ("b", "3", "2")]
  bad = task.scorer(task.TaskSpec("verifier", verifier="my_verifier:boom"))
  with pytest.raises(UsageError, match=r"scoring the student's completion of prompt 1 failed "
                                       r"\(KeyError: 'oops'\); fix the verifier"):
    task.score_all(bad, _prompts([("a", "1"), ("b", "2")]), ["1", "2"],
                   "the student's completion")
  for name, msg in (("no_such_mod_xyz:f", "cannot be imported"),
                    ("my_verifier:missing", "cannot be imported"),
                    ("my_verifier", "must be 'module:function'"),
                    ("my_verifier:calls", "is not a function")):
    with pytest.raises(ConfigError, match=msg):
      task.scorer(task.TaskSpec("verifier", verifier=name))


def test_verifier_returning_no_number_is_refused(tmp_path, monkeypatch):
  (tmp_path / "nan_verifier.py").write_text("def f(p, c, r):\n  return float('nan')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  fn = task.scorer(task.TaskSpec("verifier", verifier="nan_verifier:f"))
  with pytest.raises(UsageError, match=r"prompt 0 failed \(ValueError: returned nan\)"):
    task.score_all(fn, _prompts([("a", "1")]), ["1"], "x")


def test_check_prompts_needs_references_and_prompts():
  spec = task.TaskSpec("exact")
  with pytest.raises(UsageError, match="2 rows of t have no reference completion .*row 1"):
    task.check_prompts(spec, _prompts([("a", "1"), ("b", None), ("c", None)]), "t")
  with pytest.raises(UsageError, match="t has no prompts"):
    task.check_prompts(spec, [], "t")
  with pytest.raises(ConfigError, match="'bleu' is unknown"):
    task.check_prompts(task.TaskSpec("bleu"), _prompts([("a", "1")]), "t")


# ---------------------------------------------------------------------------------------------
# Statistics.


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 1), (57, 500), (499, 500)])
def test_wilson_interval_matches_scipy(k, n):
  ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
  lo, hi = task.wilson(k, n)
  assert lo == pytest.approx(ref.low, abs=1e-12) and hi == pytest.approx(ref.high, abs=1e-12)
  # And the textbook formula, written out.
  p, z = k / n, 1.959963984540054
  c = (p + z * z / (2 * n)) / (1 + z * z / n)
  h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  assert lo == pytest.approx(max(c - h, 0), abs=1e-12) and hi == pytest.approx(min(c + h, 1),
                                                                               abs=1e-12)


def test_mean_interval_says_which_interval():
  binary = task.mean_interval([1, 0, 1, 1])
  assert binary["interval"] == "wilson" and binary["mean"] == 0.75 and binary["n"] == 4
  assert (binary["lo"], binary["hi"]) == task.wilson(3, 4)
  s = np.array([0.2, 0.9, 0.4, 1.0, 0.0])
  graded = task.mean_interval(s)
  half = 1.959963984540054 * np.std(s, ddof=1) / np.sqrt(5)
  assert graded["interval"] == "normal"
  assert graded["lo"] == pytest.approx(s.mean() - half) and graded["hi"] == pytest.approx(
      s.mean() + half)


@pytest.mark.parametrize("n,c,k", [(5, 0, 1), (5, 1, 1), (5, 2, 3), (6, 3, 2), (8, 1, 8),
                                   (8, 7, 2), (10, 4, 5), (7, 7, 3)])
def test_pass_at_k_equals_enumeration_over_subsets(n, c, k):
  # pass@k = the share of the k-subsets of the n samples that hold at least one pass.
  samples = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(samples, k))
  want = sum(any(s) for s in subsets) / len(subsets)
  assert task.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_needs_k_samples():
  with pytest.raises(ValueError, match="k=4 <= n=3"):
    task.pass_at_k(3, 1, 4)


def test_by_length_buckets_on_the_normalized_reference():
  out = task.by_length([1, 0, 1, 1, 0], ["12", " 345", "7", "99", "100"])
  assert {k: (v["n"], v["mean"]) for k, v in out.items()} == {
      "1": (1, 1.0), "2": (2, 1.0), "3": (2, 0.0)}


# ---------------------------------------------------------------------------------------------
# The built-in task.


def test_addition_splits_are_disjoint_deterministic_and_correct():
  spec = tasks.TaskData(train=3000, dev=300, test=600, min_digits=1, max_digits=4, seed=3)
  rows = tasks.addition_rows(spec)
  again = tasks.addition_rows(spec)
  assert rows == again
  assert {k: len(v) for k, v in rows.items()} == {"train": 3000, "dev": 300, "test": 600}
  keys = {k: {r["prompt"] for r in v} for k, v in rows.items()}
  assert all(len(keys[k]) == len(rows[k]) for k in keys)  # no duplicate inside a split
  assert not keys["train"] & keys["dev"] and not keys["train"] & keys["test"]
  assert not keys["dev"] & keys["test"]
  for r in rows["test"] + rows["train"][:200]:
    a, b = r["prompt"][:-1].split("+")
    assert r["prompt"].endswith("=") and int(r["completion"]) == int(a) + int(b)
    assert 1 <= len(a) <= 4 and 1 <= len(b) <= 4 and (len(a) == 1 or a[0] != "0")
  # Answers get longer with the operands: every length from 1 to 5 digits is in the test split.
  assert {len(r["completion"]) for r in rows["test"]} == {1, 2, 3, 4, 5}
  other = tasks.addition_rows(tasks.TaskData(3000, 300, 600, 1, 4, seed=4))
  assert other["test"] != rows["test"]  # the task's own seed picks the rows
  # reverse: the same pairs, each answer least significant digit first.
  rev = tasks.addition_rows(tasks.TaskData(3000, 300, 600, 1, 4, seed=3, reverse=True))
  for r, q in zip(rows["test"], rev["test"]):
    assert q["prompt"] == r["prompt"] and q["completion"] == r["completion"][::-1]
  # pad: the same pairs, operands 4 digits and answers 5 (zeros in front), then reversed.
  pad = tasks.addition_rows(tasks.TaskData(3000, 300, 600, 1, 4, seed=3, reverse=True, pad=True))
  for r, q in zip(rows["test"], pad["test"]):
    a, b = (int(x) for x in r["prompt"][:-1].split("+"))
    assert q["prompt"] == "%04d+%04d=" % (a, b) and q["completion"] == ("%05d" % (a + b))[::-1]


def test_addition_refuses_more_rows_than_digits_allow():
  with pytest.raises(ValueError, match="only 100"):
    tasks.addition_pairs(tasks.TaskData(train=60, dev=0, test=10, min_digits=1, max_digits=1))


def test_materialise_writes_the_splits_once_as_a_table(tmp_path):
  from distill.data import DataSpec  # pylint: disable=import-outside-toplevel
  spec = DataSpec(name="task:addition", data_dir="", tokenizer="byte", seq_len=16, add_bos=None,
                  max_documents=None, dev_fraction=0.0, columns=(), validation_name="")
  t = tasks.TaskData(train=50, dev=10, test=20, min_digits=1, max_digits=3)
  out, test = tasks.materialise(spec, t, str(tmp_path))
  assert out.name.startswith("json:") and out.name.endswith("train.jsonl")
  assert out.validation_name.endswith("dev.jsonl") and test.endswith("test.jsonl")
  with open(test[len("json:"):]) as f:
    assert [json.loads(l) for l in f] == tasks.addition_rows(t)["test"]
  mtime = os.path.getmtime(test[len("json:"):])
  assert tasks.materialise(spec, t, str(tmp_path)) == (out, test)
  assert os.path.getmtime(test[len("json:"):]) == mtime
  with pytest.raises(ValueError, match="not a built-in task"):
    tasks.task_name("task:subtraction")


# ---------------------------------------------------------------------------------------------
# Completions.


def test_greedy_completions_equal_model_generate_ids():
  tok = tokenizers.from_config("byte")
  cfg = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                    max_len=64, dtype="float32")
  lm = LM(cfg)
  params = lm.init(jax.random.key(1))
  texts = ["1+2=", "345+6789=", "12+3="]
  prompts = [Prompt(i, tuple(tok.encode(t)), t, "0") for i, t in enumerate(texts)]
  scfg = sampling.SampleConfig(gen_len=6, temperature=0.0, eos_id=tok.eos_id,
                               pad_id=tok.pad_id or 0, vocab=tok.vocab_size)
  got, lengths, ended, _ = task.complete(lm, params, tok, prompts, scfg, jax.random.key(0),
                                         batch=2)
  model = inference.Model(lm, params, tok)
  for p, text, n, stop in zip(prompts, got, lengths, ended):
    ids = model.generate_ids(list(p.ids), 6)  # the new ids only
    ids = [int(i) for i in ids]
    want = ids[:ids.index(tok.eos_id)] if tok.eos_id in ids else ids
    assert text == tok.decode(want) and n == len(want) and stop == (tok.eos_id in ids)


# ---------------------------------------------------------------------------------------------
# End to end.


@pytest.mark.slow
def test_task_tiny_small_run_reports_task_metrics(tmp_path):
  """configs/task_tiny.py:small end to end (about 2 min on 2 shared cores)."""
  from configs import task_tiny  # pylint: disable=import-outside-toplevel
  from distill.run import pipeline  # pylint: disable=import-outside-toplevel
  c = task_tiny.get_config("small")
  c.eval.task.pass_k = 2
  c.eval.task.samples = 3
  c.export.enabled = True  # the export reads the task's materialised files, not data.name
  rep = pipeline.run(c, str(tmp_path))
  exported = rep["export"]["watch"]
  assert exported["status"] in ("verified", "failed") and os.path.exists(exported["file"])
  for m in ("teacher", "student", "baseline"):
    t = rep[m]["task"]
    assert t["kind"] == "exact" and t["prompts"] == 60
    assert t["greedy"]["interval"] == "wilson" and t["greedy"]["n"] == 60
    assert sum(b["n"] for b in t["by_answer_len"].values()) == 60
    assert set(t["pass_at_k"]) >= {"mean", "lo", "hi", "k", "samples"}
    assert t["pass_at_k"]["k"] == 2 and 0 <= t["pass_at_k"]["mean"] <= 1
    assert 0 <= t["completion_tokens_mean"] <= 8 and math.isfinite(t["teacher_nll"])
    # The greedy score is the exact-match rate of the shown completions' kind.
    assert t["greedy"]["lo"] <= t["greedy"]["mean"] <= t["greedy"]["hi"]
  with open(tmp_path / "report.md") as f:
    md = f.read()
  assert "## Task" in md and "greedy exact (95% wilson)" in md and "pass@2" in md
  with open(tmp_path / "report.json") as f:
    assert json.load(f)["student"]["task"]["prompts"] == 60
