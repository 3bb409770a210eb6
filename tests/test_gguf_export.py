"""GGUF export (distill/export/gguf_writer.py, gguf_vocab.py), checked without llama.cpp.

References, each independent of the writer: our own GGUF reader (distill.models.gguf, which
undoes llama.cpp's Q/K permutation on its own), the gguf package's reader and quantizers
(`gguf.GGUFReader`, `gguf.quants`), transformers' GGUF loader (its own tensor map, permutation
and config mapping), and the stage's own tokenizer. llama.cpp itself: tests/test_gguf_llamacpp.py.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' GGUF loading needs it

import distill  # noqa: E402
from distill.data import tokenizer as tokenizers  # noqa: E402
from distill.export import gguf_writer  # noqa: E402
from distill.export import hf as hf_export  # noqa: E402
from distill.inference import stage  # noqa: E402
from distill.methods.prune import vocab as trim_vocab  # noqa: E402
from distill.models import gguf as dgguf  # noqa: E402
from distill.models.model_config import ModelConfig  # noqa: E402
from distill.models.transformer import LM  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = ModelConfig(vocab_size=264, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192,
                  max_len=256, norm_eps=1e-5)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def _text(n_topics=30) -> str:
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel
  return "\n".join(topics[k] for k in sorted(topics)[:n_topics])


def _params(cfg, seed=0, scale=0.15):
  """Random params with non-trivial norms (a fresh init has all-ones norm scales)."""
  params = jax.device_get(LM(cfg).init(jax.random.key(seed)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (1.0 + 0.2 * rng.standard_normal(x.shape) if x.ndim == 1 else
                                 scale * rng.standard_normal(x.shape)).astype(np.float32),
                      params)


def _ids(n=2, t=24, vocab=259, seed=1):
  return np.random.default_rng(seed).integers(3, vocab, (n, t)).astype(np.int32)


def _jax_logits(cfg, params, ids):
  return np.asarray(jax.jit(LM(cfg).apply)(params, ids))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
  """A finished stage: random llama-layout student, byte tokenizer trained with BOS."""
  d = tmp_path_factory.mktemp("gguf_export")
  params = _params(CFG)
  tok = tokenizers.ByteTokenizer().with_add_bos(True)
  stage.save_stage(str(d / "run" / "student"), CFG, tok, params, {"note": "gguf test"})
  files = {q: gguf_writer.export_stage(str(d / "run" / "student"), str(d / "out"), q)["file"]
           for q in ("f32", "f16", "q8_0")}
  return {"dir": d, "params": params, "tok": tok, "files": files,
          "stage": str(d / "run" / "student")}


def _fp16(params):
  return jax.tree.map(lambda x: x.astype(np.float16).astype(np.float32) if x.ndim > 1 else x,
                      params)


def _reference(params, cfg=CFG):
  return hf_export.tensors(cfg, params)


# ---------------------------------------------------------------------------------------------
# our own reader: bit-exact

def test_f32_reads_back_bit_exactly(student):
  ck = dgguf.Checkpoint(student["files"]["f32"])
  ref = _reference(student["params"])
  assert set(ck.where) == set(ref)
  for name, w in ref.items():
    np.testing.assert_array_equal(ck.read(name), w, err_msg=name)
  # and the whole model: the GGUF through distill.load computes what the stage computes (to
  # float rounding: the file stores the RMSNorm epsilon as float32, and the load shards it)
  ids = _ids()
  m = distill.load("gguf:" + student["files"]["f32"])
  assert m.config.replace(norm_eps=CFG.norm_eps, dtype="float32", param_dtype="float32",
                          max_len=CFG.max_len, head_dim=0) == CFG
  np.testing.assert_allclose(m.logits(ids), distill.load(student["stage"]).logits(ids),
                             atol=2e-5, rtol=0)


def test_f16_reads_back_as_the_fp16_rounded_weights(student):
  ck = dgguf.Checkpoint(student["files"]["f16"])
  types = {t.name: t.tensor_type.name for t in ck.reader.tensors}
  for name, w in _reference(student["params"]).items():
    want = w if w.ndim == 1 else w.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(ck.read(name), want, err_msg=name)
  assert {types[n] for n in types if "norm" in n} == {"F32"}
  assert types["blk.0.ffn_up.weight"] == types["token_embd.weight"] == "F16"


def test_q8_0_equals_the_gguf_packages_dequantization(student):
  ck = dgguf.Checkpoint(student["files"]["q8_0"])
  types = {t.name: t.tensor_type.name for t in ck.reader.tensors}
  assert types["blk.1.attn_q.weight"] == types["token_embd.weight"] == "Q8_0"
  for hf_name, w in _reference(student["params"]).items():
    if w.ndim == 1:
      np.testing.assert_array_equal(ck.read(hf_name), w)
      continue
    # the reference: gguf's own Q8_0 round trip of the weight llama.cpp's layout stores
    stored = gguf_writer.permute(w, CFG.n_heads if "q_proj" in hf_name else CFG.n_kv_heads) \
        if hf_name.endswith(("q_proj.weight", "k_proj.weight")) else w
    q = gguf.GGMLQuantizationType.Q8_0
    back = gguf.quants.dequantize(gguf.quants.quantize(stored, q), q).reshape(stored.shape)
    raw = next(t for t in ck.reader.tensors if ck.where[hf_name] is t)
    np.testing.assert_array_equal(np.asarray(raw.data).reshape(-1),
                                  gguf.quants.quantize(stored, q).reshape(-1))
    got = ck.read(hf_name)
    if hf_name.endswith(("q_proj.weight", "k_proj.weight")):
      got = gguf_writer.permute(got, CFG.n_heads if "q_proj" in hf_name else CFG.n_kv_heads)
    np.testing.assert_array_equal(got, back, err_msg=hf_name)
    assert np.abs(got - stored).max() <= np.abs(stored).max() / 127  # one step at most


def test_permutation_is_llama_cpps(student):
  """Rows per head (half, pair) -> (pair, half), independently of our reader's inverse."""
  w = np.arange(2 * 8 * 3, dtype=np.float32).reshape(16, 3)  # 2 heads of 8 rows
  got = gguf_writer.permute(w, 2)
  head0 = w[:8]
  np.testing.assert_array_equal(got[:8:2], head0[:4])  # first half -> even rows
  np.testing.assert_array_equal(got[1:8:2], head0[4:])  # second half -> odd rows


# ---------------------------------------------------------------------------------------------
# the gguf package's reader: llama.cpp's metadata keys

def _fields(path):
  from distill.models.gguf.reader import metadata  # pylint: disable=import-outside-toplevel
  reader = gguf.GGUFReader(path)
  return reader, metadata(reader)


def test_metadata_keys_are_llama_cpps(student):
  reader, meta = _fields(student["files"]["f16"])
  want = {"general.architecture": "llama", "llama.block_count": 2, "llama.embedding_length": 64,
          "llama.feed_forward_length": 192, "llama.attention.head_count": 4,
          "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16,
          "llama.context_length": 256, "llama.vocab_size": 264, "general.file_type": 1,
          "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1,
          "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 0,
          "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False}
  assert {k: meta.get(k) for k in want} == want
  assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
  assert meta["llama.rope.freq_base"] == pytest.approx(10000.0)
  tokens = reader.fields["tokenizer.ggml.tokens"]
  assert len(tokens.data) == 264  # padded to the embedding's rows
  assert "output.weight" not in {t.name for t in reader.tensors}  # tied: llama.cpp reuses it
  assert _fields(student["files"]["q8_0"])[1]["general.file_type"] == 7


def test_cli_writes_the_preset_folder(student, tmp_path):
  """The acceptance command, as a user types it."""
  run = str(student["dir"] / "run")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-m", "distill.export", f"--workdir={run}",
                        "--preset=phone", "--format=gguf", "--quant=f16"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  path = os.path.join(run, "export", "phone-gguf", "student-f16.gguf")
  assert out.stdout.strip().splitlines()[-1] == path
  with open(path, "rb") as f, open(student["files"]["f16"], "rb") as g:
    mine, theirs = f.read(), g.read()
  # the same file as the library call except the context length: the phone preset's 1024,
  # capped at the model's 256
  assert _fields(path)[1]["llama.context_length"] == 256 and len(mine) == len(theirs)
  assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".")]


# ---------------------------------------------------------------------------------------------
# transformers' GGUF loader: its own config mapping, tensor map and un-permutation

def _transformers(path):
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()


def _torch_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).logits.double().numpy()


def test_transformers_loads_it_with_jaxs_logits(student):
  ids = _ids()
  jax_logits = distill.load(student["stage"]).logits(ids)
  np.testing.assert_allclose(_torch_logits(_transformers(student["files"]["f32"]), ids),
                             jax_logits, atol=1e-4, rtol=0)
  # f16: the JAX model on the fp16-rounded weights is what the file holds
  got16 = _torch_logits(_transformers(student["files"]["f16"]), ids)
  np.testing.assert_allclose(got16, _jax_logits(CFG, _fp16(student["params"]), ids),
                             atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_other_families_load_in_transformers(family, tmp_path):
  # transformers' GGUF config map for qwen3 ignores attention.key_length (Qwen3's head_dim
  # default, 128, is taken): that student has heads of 128.
  cfg = CFG.replace(qkv_bias=True) if family == "qwen2" else CFG.replace(
      qk_norm=True, n_heads=2, n_kv_heads=1, head_dim=128)
  params = _params(cfg, seed=3)
  info = gguf_writer.write(str(tmp_path), cfg, params, tokenizers.ByteTokenizer(), "f32")
  assert _fields(info["file"])[1]["general.architecture"] == family
  ids = _ids(seed=5)
  ref = _jax_logits(cfg, params, ids)
  np.testing.assert_allclose(_torch_logits(_transformers(info["file"]), ids), ref,
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(distill.load("gguf:" + info["file"]).logits(ids), ref,
                             atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------
# tokenizers: ids round-trip through the file

def test_byte_tokenizer_ids_round_trip(student):
  tok = dgguf.load_tokenizer(student["files"]["f16"])
  text = _text()
  ours = tokenizers.ByteTokenizer()
  assert tok.encode(text) == ours.encode(text)
  assert tok.decode(ours.encode(text)) == text
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos) == (1, 2, 0, True)
  # the one documented difference: a literal U+2581 is llama.cpp's escaped space
  assert tok.encode("a\u2581b") == ours.encode("a b")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
  """A SmolLM2-style byte-level BPE tokenizer.json (digits split first) with a chat template."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  d = tmp_path_factory.mktemp("bpe")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([_text(60)], trainer)
  tok.save(str(d / "tokenizer.json"))
  with open(d / "tokenizer_config.json", "w") as f:
    json.dump({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>", "chat_template": CHAT}, f)
  return tokenizers.load(str(d / "tokenizer.json"))


def _bpe_student(tok, tmp_path, vocab):
  cfg = CFG.replace(vocab_size=vocab)
  return gguf_writer.write(str(tmp_path), cfg, _params(cfg, seed=7), tok, "f16")["file"]


def test_bpe_tokenizer_ids_and_chat_template_round_trip(bpe, tmp_path):
  path = _bpe_student(bpe, tmp_path, 400)
  reader, meta = _fields(path)
  assert (meta["tokenizer.ggml.model"], meta["tokenizer.ggml.pre"]) == ("gpt2", "smollm")
  assert meta["tokenizer.chat_template"] == CHAT
  types = list(dgguf.reader.field_value(reader.fields["tokenizer.ggml.token_type"]))
  assert [i for i, t in enumerate(types) if t == 3] == [0, 1, 2]  # the specials are CONTROL
  back = dgguf.load_tokenizer(path)
  text = _text(80)
  assert back.encode(text) == bpe.encode(text)
  assert (back.bos_id, back.eos_id, back.pad_id) == (bpe.bos_id, bpe.eos_id, bpe.pad_id)
  assert back.chat_template == CHAT
  assert back.add_bos == bpe.add_bos


def test_trimmed_vocabulary_round_trips(bpe, tmp_path):
  text = _text(80)
  counts = np.bincount(bpe.encode(text), minlength=bpe.vocab_size)
  t = trim_vocab.trim(bpe, counts, 300, str(tmp_path / "trim"))
  assert t.tokenizer.vocab_size < bpe.vocab_size
  path = _bpe_student(t.tokenizer, tmp_path, int(t.rows.size))
  back = dgguf.load_tokenizer(path)
  assert back.encode(text) == t.tokenizer.encode(text)
  assert back.decode(t.tokenizer.encode(text)) == text


# ---------------------------------------------------------------------------------------------
# refusals (the CLI's rows are in tests/test_bad_inputs.py)

def test_refusals_name_the_problem(student, tmp_path):
  with pytest.raises(ValueError, match="not a GGUF quant type"):
    gguf_writer.check_quant("q3_x")
  gemma = CFG.replace(norm_plus_one=True, embed_scale=True)
  with pytest.raises(ValueError, match="no llama.cpp architecture"):
    gguf_writer.write(str(tmp_path), gemma, _params(gemma), tokenizers.ByteTokenizer(), "f16")
  with pytest.raises(ValueError, match="sliding-window"):
    gguf_writer.write(str(tmp_path), CFG.replace(sliding_window=8), student["params"],
                      tokenizers.ByteTokenizer(), "f16")
  assert os.listdir(tmp_path) == []  # refused before anything was written


# ---------------------------------------------------------------------------------------------
# the pipeline's export stage: config.export.gguf

def test_pipeline_stage_writes_each_preset_and_quant(student, tmp_path):
  from configs import base  # pylint: disable=import-outside-toplevel
  from distill.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from distill.run import export_stage, validate  # pylint: disable=import-outside-toplevel
  config = base.get_config()
  config.export.gguf = "f16, q8_0"
  config.export.watch.max_context = 128
  validate.validate(config)
  work = str(tmp_path)
  out = export_stage.run_gguf(config, work, LM(CFG), student["params"], student["tok"])
  assert sorted(out) == ["phone/f16", "phone/q8_0", "watch/f16", "watch/q8_0"]
  assert out["watch/f16"]["file"] == os.path.join(work, "export", "watch-gguf", "student-f16.gguf")
  assert _fields(out["watch/f16"]["file"])[1]["llama.context_length"] == 128
  assert _fields(out["phone/f16"]["file"])[1]["llama.context_length"] == 256  # the model's max
  # the same tensors, bit for bit, as the stage's export of the same student
  mine = {t.name: bytes(t.data) for t in gguf.GGUFReader(out["phone/q8_0"]["file"]).tensors}
  assert mine == {t.name: bytes(t.data)
                  for t in gguf.GGUFReader(student["files"]["q8_0"]).tensors}
  config.export.gguf = "q3_x"
  with pytest.raises(ConfigError, match="export.gguf has 'q3_x'"):
    validate.validate(config)
