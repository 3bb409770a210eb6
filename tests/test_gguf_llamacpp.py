"""The exported GGUF run by llama.cpp itself (llama-cpp-python), against JAX.

Skipped without llama-cpp-python (requirements-llamacpp.txt builds llama.cpp from source).
The student is briefly trained here (peaked logits, real text from greedy decoding), or, with
DISTILL_GGUF_WORKDIR=<a finished run>, that run's student (how docs/results/gguf_llamacpp.md
was measured on the tiny pipeline's student). Held-out text: distill/data/heldout_docs.md,
which no stage trains on.

- f32 / f16: llama.cpp's logits against the JAX fp32 logits, max |Δ| ≤ 1e-2 × their range
  (f32 ≤ 1e-3); 5 prompts × 64 greedy tokens identical to JAX's, where the JAX reference for f16
  is also run on the file's own fp16-rounded weights (`distill.load("gguf:...")`), and a
  near-tie that fp16 rounding flips is reported, not hidden.
- q8_0 / q4_k_m: top-1 agreement with JAX fp32 on every held-out position.
- llama.cpp's tokenizer over the file's vocabulary gives the stage's own ids.
"""
import json
import os

import jax
import numpy as np
import pytest

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (CMAKE_BUILD_PARALLEL_LEVEL=2 pip "
    "install -r requirements-llamacpp.txt builds llama.cpp from source)")
pytest.importorskip("gguf")

import distill  # noqa: E402
from distill.data import tokenizer as tokenizers  # noqa: E402
from distill.export import gguf_runtime, gguf_writer  # noqa: E402
from distill.inference import stage  # noqa: E402
from distill.models.model_config import ModelConfig  # noqa: E402
from distill.models.transformer import LM  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELDOUT = os.path.join(REPO, "distill", "data", "heldout_docs.md")
QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
WINDOW, WINDOWS = 128, 4
PROMPTS = ("The for statement", "A class definition", "Exceptions are", "import ", "def f(x):")
REPORT = {}  # what the tests measured, printed at the end of the module (pytest -s)


def _train(root):
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  from distill import data  # pylint: disable=import-outside-toplevel
  from tests.helpers import data_spec, fit_ce  # pylint: disable=import-outside-toplevel
  text = root / "text"
  text.mkdir()
  keys = sorted(topics.topics)
  for i in range(40):
    (text / f"doc{i:02d}.txt").write_text(topics.topics[keys[i]])
  cfg = ModelConfig(vocab_size=264, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192,
                    max_len=512)
  lm, tok = LM(cfg), tokenizers.ByteTokenizer()
  spec = data_spec(f"text:{root}/text/*.txt", seq_len=64, data_dir=str(root / "data"))
  it = data.make_train_iterator(spec, tok, str(root), batch_size=16, seed=0)
  params = fit_ce(lm, lm.init(jax.random.key(0)), it, 150, lr=1e-2)
  stage.save_stage(str(root / "student"), cfg, tok, params, {"note": "briefly trained"})
  return str(root / "student")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp("gguf_llamacpp")
  workdir = os.environ.get("DISTILL_GGUF_WORKDIR")
  student = os.path.join(workdir, "student") if workdir else _train(root)
  out = {q: gguf_writer.export_stage(student, str(root / "gguf"), q)["file"] for q in QUANTS}
  out["student"] = student
  yield out
  print("\n[gguf-llamacpp] " + json.dumps(REPORT, sort_keys=True))


@pytest.fixture(scope="module")
def reference(files):
  """JAX fp32 on held-out windows, and the windows' ids."""
  m = distill.load(files["student"])
  with open(HELDOUT) as f:
    ids = m.tokenizer.encode(f.read())
  starts = np.linspace(0, len(ids) - WINDOW - 1, WINDOWS).astype(int)
  windows = np.stack([ids[s:s + WINDOW] for s in starts]).astype(np.int32)
  return m, windows, m.logits(windows)


def _cpp_logits(path, windows):
  cpp = gguf_runtime.LlamaCpp(path, n_ctx=WINDOW, threads=2)
  return np.stack([cpp.logits(w) for w in windows])


def _figures(ref, got):
  rows = [gguf_runtime.compare(r, g) for r, g in zip(ref, got)]
  return {"relative": max(r["relative"] for r in rows),
          "max_abs_diff": max(r["max_abs_diff"] for r in rows),
          "logits_range": min(r["logits_range"] for r in rows),
          "top1_agreement": float(np.mean([r["top1_agreement"] for r in rows])),
          "positions": sum(r["positions"] for r in rows)}


def test_llama_cpp_tokenizes_like_the_stage(files, reference):
  m = reference[0]
  cpp = gguf_runtime.LlamaCpp(files["f16"], n_ctx=64, threads=2)
  with open(HELDOUT) as f:
    text = f.read()
  assert cpp.tokenize(text) == m.tokenizer.encode(text)
  assert cpp.detokenize(m.tokenizer.encode(text[:2000])) == text[:2000]
  # llama.cpp adds BOS (when asked for specials) exactly when the file's add_bos_token says,
  # which is the stage's training convention
  assert (cpp.tokenize("x", add_bos=True)[0] == m.tokenizer.bos_id) == m.tokenizer.add_bos


@pytest.mark.parametrize("quant,bound", [("f32", 1e-3), ("f16", 1e-2)])
def test_logits_match_jax_fp32(quant, bound, files, reference):
  _, windows, ref = reference
  fig = _figures(ref, _cpp_logits(files[quant], windows))
  REPORT[f"{quant}_logits"] = fig
  assert fig["relative"] <= bound, fig


def _jax_greedy(m, prompt_ids, n):
  return m.generate_ids(prompt_ids, n, stop_at_eos=False)


def test_f16_greedy_generations_are_identical(files, reference):
  m32 = reference[0]
  m16 = distill.load("gguf:" + files["f16"])  # JAX on the file's fp16-rounded weights
  cpp = gguf_runtime.LlamaCpp(files["f16"], n_ctx=128, threads=2)
  same32 = same16 = 0
  for p in PROMPTS:
    ids = m32.tokenizer.encode_prompt(p)
    got = cpp.greedy(ids, 64)
    same32 += got == _jax_greedy(m32, ids, 64)
    same16 += got == _jax_greedy(m16, ids, 64)
  REPORT["f16_greedy_identical"] = {"vs_jax_fp32": f"{same32}/{len(PROMPTS)}",
                                    "vs_jax_fp16_weights": f"{same16}/{len(PROMPTS)}"}
  assert same16 == len(PROMPTS) or same32 == len(PROMPTS), REPORT["f16_greedy_identical"]


@pytest.mark.parametrize("quant,floor", [("q8_0", 0.95), ("q4_k_m", 0.75)])
def test_quantized_top1_agreement(quant, floor, files, reference):
  _, windows, ref = reference
  fig = _figures(ref, _cpp_logits(files[quant], windows))
  REPORT[f"{quant}_logits"] = fig
  assert fig["top1_agreement"] >= floor, fig
