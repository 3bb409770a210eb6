""".litertlm bundles run in LiteRT-LM's own engine and match the JAX student.

One small student (2 layers, d_model 32) is fitted for a few seconds of CE on a text corpus,
so its greedy continuations are real ASCII text (the engine's API returns text, and a random
model's bytes are mostly invalid UTF-8). Each quantization mode is exported once at context
128, P=16 with the full check: 5 prompts x 64 greedy tokens through the engine.
Skipped only where `litert_lm` / `litert_lm_builder` cannot be imported.
"""
import json
import os
import subprocess
import sys

import jax
import pytest

pytest.importorskip("litert_lm", reason="LiteRT-LM runtime not installed: pip install litert-lm-api")
pytest.importorskip("litert_lm_builder",
                    reason="LiteRT-LM builder not installed: pip install litert-lm-builder")

from distill.inference import stage  # pylint: disable=wrong-import-position
from distill.inference import model as inference
from distill.data import tokenizer as tokenizers  # pylint: disable=wrong-import-position
from distill.models.transformer import LM  # pylint: disable=wrong-import-position
from distill.models.model_config import ModelConfig  # pylint: disable=wrong-import-position

CONTEXT, PREFILL = 128, 16
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data_cfg(root):
  from tests.helpers import data_spec  # pylint: disable=import-outside-toplevel
  return data_spec(f"text:{root}/text/*.txt", seq_len=64, data_dir=str(root / "data"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """A workdir with a briefly trained student stage and its text corpus."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  from distill import data  # pylint: disable=import-outside-toplevel
  from tests.helpers import fit_ce  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("litertlm")
  text = root / "text"
  text.mkdir()
  keys = sorted(topics.topics)
  for i in range(40):
    (text / f"doc{i:02d}.txt").write_text(topics.topics[keys[i]])
  cfg = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96,
                    max_len=1024)  # rope: room for the phone preset's 2P + 1 prompts
  lm, tok = LM(cfg), tokenizers.ByteTokenizer()
  it = data.make_train_iterator(_data_cfg(root), tok, str(root), batch_size=16, seed=0)
  params = fit_ce(lm, lm.init(jax.random.key(0)), it, 120, lr=1e-2)
  stage.save_stage(str(root / "student"), cfg, tok, params, {"note": "briefly trained"})
  return root


_CARDS = {}


def _export(root, quant):
  from distill.export import export_stage  # pylint: disable=import-outside-toplevel
  if quant not in _CARDS:
    out = root / "export" / quant
    card = export_stage(str(root / "student"), "phone", str(out), quant=quant,
                        max_context=CONTEXT, prefill_len=PREFILL, data_spec=_data_cfg(root),
                        workdir=str(root), level="full", num_threads=1, litertlm=True,
                        log=lambda _: None)
    _CARDS[quant] = (card, out)
  return _CARDS[quant]


def _sweep_texts(root):
  """A text prompt of every length 1 ... 2P + 1 tokens (bytes), cut from a corpus document."""
  doc = sorted((root / "text").glob("*.txt"))[3].read_text()
  doc = " ".join(doc.split())  # ASCII words, so every cut is a whole token
  return [doc[:n] for n in range(1, 2 * PREFILL + 2)]


def _first_token_agreement(got: list[str], want: list[str]) -> float:
  return sum(g[:1] == w[:1] for g, w in zip(got, want)) / len(want)


@pytest.fixture(scope="module")
def reference(root):
  """`distill.load(stage).generate` of every sweep prompt: the model as users call it."""
  model = inference.load(str(root / "student"))
  return [model.generate(t, 16) for t in _sweep_texts(root)]


def test_fp32_bundle_greedy_identical_in_engine(root):
  card, out = _export(root, "fp32")
  b = card["litertlm"]
  assert os.path.getsize(out / b["file"]) == b["bytes"] > card["bytes"]
  assert b["start_token"] is None  # trained without BOS: the engine must not add one
  check = b["engine_check"]
  assert check["passed"] and check["tokenizer"]["all_identical"]
  g = check["greedy"]
  # The export's own sweep: every prompt length 1 ... 2P + 1, the boundaries included.
  assert g["prompt_tokens"] == list(range(1, 2 * PREFILL + 2)) and g["all_identical"], g
  assert check["teacher_forced"]["top1_agreement"] == 1.0
  assert b["latency"]["prefill_tokens_per_s"] > 0 and b["latency"]["decode_tokens_per_s"] > 0
  # No XNNPACK weight cache left beside the bundle.
  assert not [f for f in os.listdir(out) if "xnnpack" in f]


@pytest.mark.parametrize("quant", ["fp32", "fp16", "dynamic_int8"])
def test_bundle_matches_distill_load_generate_at_every_length(root, reference, quant):
  """The engine, given the text, vs `distill.load(stage).generate(text)`, for prompts of
  1 ... 2P + 1 tokens: fp32 identical; quantized at least the gate's agreement on the
  first new token (the teacher-forced prediction at the prompt's end)."""
  from distill.export import litertlm_runtime as lrt, verify  # pylint: disable=import-outside-toplevel
  _, out = _export(root, quant)
  engine = lrt.open_engine(str(out / "student.litertlm"))
  got = [lrt.generate(engine, t, 16) for t in _sweep_texts(root)]
  engine.close()
  if quant == "fp32":
    assert got == reference
  else:
    assert _first_token_agreement(got, reference) >= verify.AGREEMENT_THRESHOLD[quant]


@pytest.mark.parametrize("quant", ["fp32", "fp16", "dynamic_int8"])
def test_tflite_matches_distill_load_generate_at_every_length(root, reference, quant):
  """The same sweep for the .tflite through ai_edge_litert (`distill.generate --tflite`)."""
  import io  # pylint: disable=import-outside-toplevel
  from distill.cli.generate import generate_tflite  # pylint: disable=import-outside-toplevel
  from distill.export import verify  # pylint: disable=import-outside-toplevel
  card, out = _export(root, quant)
  got = [generate_tflite(str(out / card["model_file"]), t, 16, threads=1, out=io.StringIO())
         for t in _sweep_texts(root)]
  if quant == "fp32":
    assert got == reference
  else:
    assert _first_token_agreement(got, reference) >= verify.AGREEMENT_THRESHOLD[quant]


@pytest.mark.parametrize("quant", ["fp16", "dynamic_int8"])
def test_quantized_bundle_agreement_in_engine(root, quant):
  card, _ = _export(root, quant)
  check = card["litertlm"]["engine_check"]
  assert check["tokenizer"]["all_identical"]
  assert check["teacher_forced"]["top1_agreement"] >= 0.95, check["teacher_forced"]


def test_bos_trained_stage_bundles_its_start_token(root, tmp_path):
  """A stage whose tokenizer records add_bos: the bundle declares BOS as start token, and the
  engine's greedy text equals `distill.load(stage).generate`, which puts BOS first too."""
  from distill.export import export_stage, litertlm_runtime as lrt  # pylint: disable=import-outside-toplevel
  src = inference.load(str(root / "student"))
  bos_dir = tmp_path / "student_bos"
  stage.save_stage(str(bos_dir), src.config, tokenizers.ByteTokenizer().with_add_bos(True),
                   src.params, {"note": "same weights, BOS convention"})
  model = inference.load(str(bos_dir))
  assert model.tokenizer.add_bos
  texts = _sweep_texts(root)[::4]
  want = [model.generate(t, 16) for t in texts]
  assert want != [src.generate(t, 16) for t in texts]  # BOS first changes what it says
  card = export_stage(str(bos_dir), "phone", str(tmp_path / "out"), quant="fp32",
                      max_context=CONTEXT, prefill_len=PREFILL, data_spec=_data_cfg(root),
                      workdir=str(root), level="quick", num_threads=1, litertlm=True,
                      log=lambda _: None)
  assert card["add_bos"] and card["litertlm"]["start_token"] == 1
  assert card["litertlm"]["engine_check"]["passed"]
  engine = lrt.open_engine(str(tmp_path / "out" / "student.litertlm"))
  assert [lrt.generate(engine, t, 16) for t in texts] == want
  engine.close()


def test_bundle_with_a_start_token_the_model_never_saw_is_refused(root, tmp_path):
  """--start_token=1 on a student trained without BOS: one line, exit 2, nothing written."""
  out = tmp_path / "bad"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "distill.export", f"--workdir={root}",
                      "--preset=watch", "--format=litertlm", "--start_token=1",
                      f"--out={out}", "--verify=none"], cwd=REPO, capture_output=True,
                     text=True, env=env, timeout=300)
  assert r.returncode == 2, r.stderr
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
  assert "--start_token=1 disagrees with the model" in lines[0]
  assert "trained without a start token" in lines[0]
  assert not out.exists()


@pytest.mark.parametrize("preset", ["watch", "phone"])
def test_prefill_boundary_logits_equal_jax(root, tmp_path, preset):
  """Prompts of P - 1, P, P + 1, 2P and 2P + 1 tokens for the preset's own prefill length:
  the fp32 .tflite's next-token logits equal JAX's (one and two prefill chunks), and the
  engine's greedy text equals `distill.load(...).generate` at each of those lengths."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from distill.export import PRESETS, export_stage, litertlm_runtime as lrt  # pylint: disable=import-outside-toplevel
  from distill.export.runtime import LiteRTModel  # pylint: disable=import-outside-toplevel
  p = PRESETS[preset].prefill_len
  out = tmp_path / preset
  card = export_stage(str(root / "student"), preset, str(out), quant="fp32",
                      data_spec=_data_cfg(root), workdir=str(root), level="none",
                      num_threads=1, litertlm=True, log=lambda _: None)
  assert card["prefill_len"] == p
  model = inference.load(str(root / "student"))
  tok = model.tokenizer
  doc = " ".join(" ".join(f.read_text() for f in sorted((root / "text").glob("*.txt"))).split())
  lite = LiteRTModel(str(out / card["model_file"]), card=card, num_threads=1)
  engine = lrt.open_engine(str(out / "student.litertlm"))
  for n in (p - 1, p, p + 1, 2 * p, 2 * p + 1):
    ids = tok.encode_prompt(doc[:n])
    assert len(ids) == n
    want = model.logits(np.asarray([ids]))[0, -1, :card["vocab_size"]]
    got = lite.teacher_forced_logits(ids)[-1]
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)
    assert lrt.generate(engine, doc[:n], 8) == model.generate(doc[:n], 8), n
  engine.close()


def test_bundled_tokenizer_ids_equal_ours_on_corpus(root):
  """The byte tokenizer written as an HF ByteLevel BPE: same ids on the whole corpus."""
  from distill.export import litertlm_runtime as lrt  # pylint: disable=import-outside-toplevel
  _, out = _export(root, "fp32")
  engine = lrt.open_engine(str(out / "student.litertlm"))
  tok = tokenizers.ByteTokenizer()
  texts = [p.read_text() for p in sorted((root / "text").glob("*.txt"))]
  texts.append("non-ASCII: \u00e9\u00e8 \u65e5\u672c \U0001F600\n\ttabs  and  spaces ")
  assert lrt.tokenizer_matches(engine, tok, texts)["all_identical"]
  # Trained without BOS: the bundle declares no start token.
  assert engine.bos_token_id is None and engine.eos_token_ids == [[tok.eos_id]]
  engine.close()


def test_hf_byte_json_matches_with_hf_tokenizers_library(tmp_path):
  """The generated tokenizer.json also loads in HF `tokenizers` with the same ids."""
  import tokenizers as hf  # pylint: disable=import-outside-toplevel
  from distill.export import litertlm  # pylint: disable=import-outside-toplevel
  tok = tokenizers.ByteTokenizer()
  path = tmp_path / "t.json"
  path.write_text(json.dumps(litertlm.byte_tokenizer_json(tok)))
  t = hf.Tokenizer.from_file(str(path))
  s = "The for statement \u00e9\u65e5 \n"
  assert t.encode(s, add_special_tokens=False).ids == tok.encode(s)
  assert t.decode(tok.encode(s)) == s


def test_generate_cli_runs_the_engine(root):
  card, out = _export(root, "fp32")
  path = str(out / "student.litertlm")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "distill.generate", f"--litertlm={path}",
                      "--prompt=The for statement", "--max_new_tokens=24"], cwd=REPO,
                     capture_output=True, text=True, env=env, timeout=120)
  assert r.returncode == 0, r.stderr
  model = inference.load(str(root / "student"))
  assert r.stdout.rstrip("\n") == model.generate("The for statement", 24)


def test_bench_prints_one_json_line(root):
  _, out = _export(root, "fp32")
  r = subprocess.run([sys.executable, "bench/litertlm_latency.py",
                      str(out / "student.litertlm"), "--prefill_tokens=16",
                      "--decode_tokens=8"], cwd=REPO, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr
  lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
  assert len(lines) == 1
  row = json.loads(lines[0])
  assert row["prefill_tokens_per_s"] > 0 and row["decode_tokens_per_s"] > 0


def test_hf_bpe_tokenizer_bundle(root, tmp_path):
  """An HF BPE tokenizer.json whose post-processor adds BOS: the bundle gives our ids (the
  engine adds BOS itself, once) and carries the chat template from tokenizer_config.json."""
  import tokenizers as hf  # pylint: disable=import-outside-toplevel
  from distill.export import litertlm, litertlm_runtime as lrt  # pylint: disable=import-outside-toplevel
  card, out = _export(root, "fp32")
  texts = [p.read_text() for p in sorted((root / "text").glob("*.txt"))]
  t = hf.Tokenizer(hf.models.BPE(unk_token=None))
  t.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  t.decoder = hf.decoders.ByteLevel()
  t.train_from_iterator(texts, hf.trainers.BpeTrainer(
      vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"],
      initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet()))
  t.post_processor = hf.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  tok_dir = tmp_path / "tok"
  tok_dir.mkdir()
  t.save(str(tok_dir / "tokenizer.json"))
  (tok_dir / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": "<s>", "eos_token": "</s>",
      "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}))
  tok = tokenizers.load(str(tok_dir / "tokenizer.json"))
  bundle = str(tmp_path / "hf.litertlm")
  info = litertlm.build(str(out / card["model_file"]), bundle, tokenizer=tok,
                        n_layers=card["num_layers"], max_context=CONTEXT,
                        tokenizer_dir=str(tok_dir))
  assert info["chat_template"] and info["start_token"] == 1 and info["stop_tokens"] == [2]
  engine = lrt.open_engine(bundle)
  assert lrt.tokenizer_matches(engine, tok, texts)["all_identical"]
  assert len(tok.encode(texts[0])) < 0.8 * len(texts[0].encode())  # really merged
  engine.close()


def test_bundle_over_the_preset_budget_leaves_nothing(root):
  """A .tflite that fits the preset but a bundle (+ tokenizer, metadata) that does not."""
  from distill.export import BudgetError, export_stage  # pylint: disable=import-outside-toplevel
  tflite_bytes = _export(root, "fp32")[0]["bytes"]
  out = root / "export" / "bundle_over"
  with pytest.raises(BudgetError, match=r"\.litertlm bundle is .*% over"):
    export_stage(str(root / "student"), "watch", str(out), quant="fp32", max_context=CONTEXT,
                 prefill_len=PREFILL, budget_mb=(tflite_bytes + 1000) / 1e6,
                 data_spec=_data_cfg(root), workdir=str(root), level="none", litertlm=True,
                 log=lambda _: None)
  assert not out.exists()
  assert not [p for p in os.listdir(root / "export") if p.startswith(".")]


class _Unbundleable(tokenizers.ByteTokenizer):
  """A tokenizer type LiteRT-LM has no loader for (e.g. a word-level vocabulary)."""

  def descriptor(self):
    return {"type": "wordlevel"}


class _ShiftedBytes(tokenizers.ByteTokenizer):
  """Byte ids whose specials are not the first `byte_offset` ids."""

  @property
  def pad_id(self):
    return 5


@pytest.mark.parametrize("tok,msg", [(_Unbundleable(), "tokenizer type 'wordlevel' cannot go "
                                      "into a .litertlm"),
                                     (_ShiftedBytes(), "cannot be written as a byte-level HF")])
def test_tokenizer_litertlm_cannot_take_is_one_error_nothing_written(root, tmp_path, tok, msg):
  from distill.export import litertlm  # pylint: disable=import-outside-toplevel
  card, out = _export(root, "fp32")
  bundle = tmp_path / "x.litertlm"
  with pytest.raises(litertlm.LitertLmError, match=msg):
    litertlm.build(str(out / card["model_file"]), str(bundle), tokenizer=tok,
                   n_layers=card["num_layers"], max_context=CONTEXT)
  assert os.listdir(tmp_path) == []
