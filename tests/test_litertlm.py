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
                    max_len=CONTEXT)
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


def test_fp32_bundle_greedy_identical_in_engine(root):
  card, out = _export(root, "fp32")
  b = card["litertlm"]
  assert os.path.getsize(out / b["file"]) == b["bytes"] > card["bytes"]
  check = b["engine_check"]
  assert check["passed"] and check["tokenizer"]["all_identical"]
  g = check["greedy"]
  assert g["prompts"] == 5 and g["all_identical"], g
  # The trained student does not stop early: 64 tokens compared on most prompts.
  assert sum(r["new_tokens"] == 64 for r in g["per_prompt"]) >= 3, g
  assert check["teacher_forced"]["top1_agreement"] == 1.0
  # Prompt + generation spans more than one P-long prefill chunk and many decode steps.
  assert b["latency"]["prefill_tokens_per_s"] > 0 and b["latency"]["decode_tokens_per_s"] > 0
  # No XNNPACK weight cache left beside the bundle.
  assert not [f for f in os.listdir(out) if "xnnpack" in f]


@pytest.mark.parametrize("quant", ["fp16", "dynamic_int8"])
def test_quantized_bundle_agreement_in_engine(root, quant):
  card, _ = _export(root, quant)
  check = card["litertlm"]["engine_check"]
  assert check["tokenizer"]["all_identical"]
  assert check["teacher_forced"]["top1_agreement"] >= 0.95, check["teacher_forced"]


def test_bundled_tokenizer_ids_equal_ours_on_corpus(root):
  """The byte tokenizer written as an HF ByteLevel BPE: same ids on the whole corpus."""
  from distill.export import litertlm_runtime as lrt  # pylint: disable=import-outside-toplevel
  _, out = _export(root, "fp32")
  engine = lrt.open_engine(str(out / "student.litertlm"))
  tok = tokenizers.ByteTokenizer()
  texts = [p.read_text() for p in sorted((root / "text").glob("*.txt"))]
  texts.append("non-ASCII: \u00e9\u00e8 \u65e5\u672c \U0001F600\n\ttabs  and  spaces ")
  assert lrt.tokenizer_matches(engine, tok, texts)["all_identical"]
  assert engine.bos_token_id == tok.bos_id and engine.eos_token_ids == [[tok.eos_id]]
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
  tok = model.tokenizer
  want = model.generate_ids([tok.bos_id] + tok.encode("The for statement"), 24)
  want = want[:want.index(tok.eos_id)] if tok.eos_id in want else want
  assert r.stdout.rstrip("\n") == tok.decode(want)


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
