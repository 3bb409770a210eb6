"""Speculative decoding in llama.cpp (llama-cpp-python's draft-model loop with
`gguf_runtime.Drafter`): the teacher GGUF with the student GGUF drafting gives the teacher's
own greedy tokens, and the drafter's counts say how many drafts it kept.

Skipped without llama-cpp-python (requirements-llamacpp.txt builds llama.cpp from source).
Teacher and drafter are briefly trained here (tests/test_speculative.py's pair) and exported
as f32 GGUFs, so no fp16 rounding stands between the two decodings compared.
"""
import pytest

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (CMAKE_BUILD_PARALLEL_LEVEL=2 pip "
    "install -r requirements-llamacpp.txt builds llama.cpp from source)")
pytest.importorskip("gguf")

from distill.errors import UsageError  # noqa: E402
from distill.export import gguf_runtime, gguf_writer  # noqa: E402
from distill.inference import stage  # noqa: E402
from tests.helpers import train_byte_lm  # noqa: E402
from tests.test_speculative import DRAFTER, TEACHER  # noqa: E402

PROMPTS = ("The for statement", "A class definition", "Exceptions are", "def f(x):")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("speculative_llamacpp")
  out = {}
  for name, cfg, steps, seed in (("teacher", TEACHER, 120, 0), ("drafter", DRAFTER, 40, 1)):
    lm, params, tok = train_byte_lm(root, cfg, steps, seed)
    stage.save_stage(str(root / name / "student"), cfg, tok, params, {"note": name})
    out[name] = gguf_writer.export_stage(str(root / name / "student"), str(root / name / "gguf"),
                                         "f32")["file"]
  return out


def test_greedy_with_the_draft_equals_without(files):
  plain = gguf_runtime.LlamaCpp(files["teacher"], n_ctx=256, threads=2)
  drafter = gguf_runtime.Drafter(gguf_runtime.LlamaCpp(files["drafter"], n_ctx=256, threads=2),
                                 k=4)
  spec = gguf_runtime.LlamaCpp(files["teacher"], n_ctx=256, threads=2, draft=drafter)
  for text in PROMPTS:
    ids = plain.tokenize(text)
    want = plain.greedy(ids, 96)  # one token per llama.cpp call, argmax of its logits
    assert plain.generate(ids, 96) == want
    assert spec.generate(ids, 96) == want, f"speculative llama.cpp differs on {text!r}"
  st = drafter.stats()
  # Both kept and rejected drafts occurred, and the rounds add up.
  assert st["teacher_calls"] > 20 and 0.05 < st["acceptance_rate"] < 0.98, st
  assert st["drafted"] == 4 * st["teacher_calls"]


def test_the_teacher_as_its_own_drafter_keeps_every_draft(files):
  drafter = gguf_runtime.Drafter(gguf_runtime.LlamaCpp(files["teacher"], n_ctx=256, threads=2),
                                 k=3)
  spec = gguf_runtime.LlamaCpp(files["teacher"], n_ctx=256, threads=2, draft=drafter)
  ids = spec.tokenize("import ")
  assert spec.generate(ids, 60) == spec.greedy(ids, 60)
  st = drafter.stats()
  assert st["accepted"] == st["drafted"] > 0 and st["tokens_per_call"] == 4.0


def test_draft_k_zero_is_refused(files):
  with pytest.raises(UsageError, match="draft k=0"):
    gguf_runtime.Drafter(gguf_runtime.LlamaCpp(files["drafter"], n_ctx=64, threads=1), k=0)
