"""Hugging Face parity: tiny random transformers checkpoints load with identical logits,
greedy generations and tokenizer ids; students written by `to_hf` load in transformers.

transformers + torch (CPU) are dev dependencies only; every checkpoint is built here.
"""
import json
import os
import pickle

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import distill  # noqa: E402
from distill.errors import LoadError
from distill.inference import stage  # noqa: E402
from distill.cli import to_hf as to_hf_cli  # noqa: E402
from distill.data import tokenizer as dtok  # noqa: E402
from distill.models import hf  # noqa: E402
from distill.models.transformer import LM  # noqa: E402
from distill.models.model_config import ModelConfig  # noqa: E402

TEXT = ("The for statement iterates over the items of any sequence, in the order that they "
        "appear. Handlers for exceptions are written with try and except; classes define "
        "methods and attributes. ")
CHAT = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
SEQ, WINDOW, NEW = 12, 4, 20

SMALL = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
FAMILIES = {
    # Llama 3.1-style rope scaling (with a band of blended frequencies at this head size).
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        SMALL, rms_norm_eps=1e-5, rope_parameters=dict(
            rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=64))),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(SMALL, sliding_window=WINDOW)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(SMALL, tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(SMALL)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(SMALL)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        SMALL, sliding_window=WINDOW, query_pre_attn_scalar=16, attn_logit_softcapping=3.0,
        final_logit_softcapping=4.0)),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        SMALL, num_hidden_layers=3, sliding_window=WINDOW, query_pre_attn_scalar=12,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1000.0}})),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=32, n_layer=2, n_head=4,
                                                   n_positions=64)),
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  """A tiny BPE tokenizer.json trained offline, with tokenizer_config.json and a chat template."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  d = tmp_path_factory.mktemp("tok")
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  trainer = trainers.BpeTrainer(vocab_size=96, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
  tok.train_from_iterator([TEXT] * 4, trainer)
  tok.save(str(d / "tokenizer.json"))
  with open(d / "tokenizer_config.json", "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
               "chat_template": CHAT, "tokenizer_class": "PreTrainedTokenizerFast"}, f)
  return d


def _randomize(model, gemma: bool):
  # Random norms and biases too: init leaves them at 1/0, which would hide layout mistakes.
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if p.ndim == 1 and ("norm" in name or "ln_" in name) and name.endswith("weight"):
        p.copy_((0.0 if gemma else 1.0) + 0.2 * noise)
      else:
        p.copy_(0.15 * noise)


def _make(family, tok_dir, out):
  cfg_cls, model_cls, kw = FAMILIES[family]
  vocab = dtok.load(str(tok_dir)).vocab_size
  cfg = getattr(transformers, cfg_cls)(vocab_size=vocab, bos_token_id=1, eos_token_id=2,
                                       pad_token_id=0, **kw)
  cfg._attn_implementation = "eager"  # pylint: disable=protected-access
  torch.manual_seed(0)
  model = getattr(transformers, model_cls)(cfg).eval()
  _randomize(model, family.startswith("gemma"))
  model.save_pretrained(out, safe_serialization=True)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    with open(tok_dir / name) as src, open(out / name, "w") as dst:
      dst.write(src.read())
  return model, vocab


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_logits_and_greedy_generation_match_transformers(family, tok_dir, tmp_path):
  model, vocab = _make(family, tok_dir, tmp_path)
  ids = np.random.default_rng(1).integers(3, vocab, (2, SEQ)).astype(np.int32)
  with torch.no_grad():
    want = model(torch.tensor(ids, dtype=torch.long)).logits.numpy()

  m = distill.load("hf:" + str(tmp_path))
  assert m.tokenizer.chat_template == CHAT and m.tokenizer.eos_id == 2
  got = m.logits(ids)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

  prompt = ids[0, :5].tolist()
  model.generation_config.eos_token_id = None  # run all NEW steps on both sides
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW, do_sample=False,
                         pad_token_id=0)
  assert m.generate_ids(prompt, NEW, stop_at_eos=False) == out[0, len(prompt):].tolist()


def test_tokenizer_ids_match_transformers(tok_dir):
  ours = hf.load_tokenizer(str(tok_dir), {})
  theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
  for text in (TEXT, "Handlers iterate the sequence of items", "unseen wörds ç"):
    assert ours.encode(text) == theirs.encode(text, add_special_tokens=False)
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (1, 2, 0)
  assert ours.chat_template == CHAT


def test_sharded_checkpoint_and_bf16_teacher(tok_dir, tmp_path):
  model, _ = _make("qwen3", tok_dir, tmp_path / "one")
  model.save_pretrained(tmp_path / "two", safe_serialization=True, max_shard_size="20KB")
  assert os.path.exists(tmp_path / "two" / "model.safetensors.index.json")
  (tmp_path / "two" / "tokenizer.json").write_text((tok_dir / "tokenizer.json").read_text())
  mesh = hf.default_mesh()
  lm, params, tok = hf.load_teacher(str(tmp_path / "two"), mesh, dtype="bfloat16")
  assert lm.cfg.dtype == "bfloat16" and tok.vocab_size == lm.cfg.vocab_size
  assert params["block_0"]["attn"]["q"].dtype == jax.numpy.bfloat16
  assert params["embed"].sharding.spec[1] == "fsdp"  # d_model split over the 8 devices
  _, ref, _ = hf.load(str(tmp_path / "one"), mesh, "float32")
  for (_, a), (_, b) in zip(hf.flatten(params), hf.flatten(ref)):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b), atol=1e-2, rtol=1e-2)


def test_student_round_trip_through_transformers(tmp_path):
  tok = dtok.ByteTokenizer()
  cfg = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                    max_len=64, tie_embeddings=False)
  lm = LM(cfg)
  params = jax.jit(lm.init)(jax.random.key(0))
  stage.save_stage(str(tmp_path / "run" / "student"), cfg, tok, params, {})
  assert to_hf_cli.main([f"--workdir={tmp_path / 'run'}", f"--out={tmp_path / 'hf'}"]) == 0
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  ids = np.asarray([tok.encode("The for statement", add_bos=True)], np.int32)
  with torch.no_grad():
    want = model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(np.asarray(jax.jit(lm.apply)(params, ids)), want, atol=1e-4, rtol=0)
  assert json.load(open(tmp_path / "hf" / "config.json"))["vocab_size"] == 264
  assert dtok.load(str(tmp_path / "hf")).encode("hi") == tok.encode("hi")
  back = distill.load("hf:" + str(tmp_path / "hf"))  # and our own loader reads it back
  assert isinstance(back.tokenizer, dtok.ByteTokenizer)
  np.testing.assert_allclose(back.logits(ids), want, atol=1e-4, rtol=0)


class _Boom:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):  # unpickling this creates the marker file: it must never happen
    return (open, (self.marker, "w"))


def test_pickled_weights_are_refused_without_running_them(tmp_path):
  marker = tmp_path / "ran"
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8}))
  (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(str(marker))))
  with pytest.raises(LoadError, match="pickled weights.*safe_serialization") as e:
    distill.load("hf:" + str(tmp_path))
  assert "\n" not in str(e.value) and not marker.exists()


@pytest.mark.parametrize("case", ["corrupt_config", "unknown_type", "truncated", "no_config"])
def test_broken_checkpoints_give_one_line_errors(case, tmp_path):
  from safetensors.numpy import save_file
  cfg = {"model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8,
         "num_hidden_layers": 1, "num_attention_heads": 1}
  (tmp_path / "config.json").write_text(json.dumps(cfg))
  save_file({"model.embed_tokens.weight": np.zeros((8, 4), np.float32)},
            str(tmp_path / "model.safetensors"))
  expect = {"corrupt_config": "corrupt.*re-download", "unknown_type": "not supported",
            "truncated": "truncated or corrupt.*re-download", "no_config": "no config.json"}[case]
  if case == "corrupt_config":
    (tmp_path / "config.json").write_text('{"model_type": "lla')
  elif case == "unknown_type":
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, model_type="mamba")))
  elif case == "truncated":
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-9])
  else:
    os.remove(tmp_path / "config.json")
  with pytest.raises(LoadError, match=expect) as e:
    distill.load("hf:" + str(tmp_path))
  assert "\n" not in str(e.value)


def test_align_vocab_keeps_shared_ids_and_refuses_other_tokenizers(tok_dir):
  cfg = ModelConfig(vocab_size=104, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=32,
                    max_len=32, tie_embeddings=False)
  lm = LM(cfg)
  params = jax.jit(lm.init)(jax.random.key(0))
  tok = dtok.load(str(tok_dir))
  ids = np.asarray([[1, 5, 9, 20, 60]], np.int32)
  full = np.asarray(jax.jit(lm.apply)(params, ids))
  n = tok.vocab_size
  for size in (n, 112):  # shrink to the tokenizer, grow past the teacher's padding
    lm2, p2 = hf.align_vocab(lm, params, size, tokenizer=tok, other_tokenizer=tok)
    got = np.asarray(jax.jit(lm2.apply)(p2, ids))
    assert got.shape[-1] == size
    np.testing.assert_allclose(got[..., :n], full[..., :n], atol=1e-5)
  with pytest.raises(hf.VocabMismatchError, match="tokenizers differ"):
    hf.align_vocab(lm, params, n, tokenizer=tok, other_tokenizer=dtok.ByteTokenizer())


def test_sentencepiece_tokenizer_model_is_used_when_no_tokenizer_json(tmp_path):
  import sentencepiece as spm
  (tmp_path / "corpus.txt").write_text(TEXT * 3)
  spm.SentencePieceTrainer.train(
      input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "tokenizer"),
      vocab_size=60, model_type="bpe", bos_id=1, eos_id=2, pad_id=0, unk_id=3, minloglevel=2)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHAT}))
  tok = hf.load_tokenizer(str(tmp_path), {})
  sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
  assert isinstance(tok, dtok.SentencePieceTokenizer)
  assert tok.encode(TEXT, add_bos=True) == [1] + sp.encode(TEXT)
  assert (tok.bos_id, tok.eos_id, tok.chat_template) == (1, 2, CHAT)


def test_multimodal_gemma3_checkpoint_loads_its_language_model(tmp_path):
  text = transformers.Gemma3TextConfig(vocab_size=100, **dict(SMALL, sliding_window=WINDOW))
  vision = transformers.SiglipVisionConfig(hidden_size=16, intermediate_size=32, image_size=28,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           patch_size=14)
  cfg = transformers.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                  mm_tokens_per_image=4, image_token_index=99,
                                  boi_token_index=97, eoi_token_index=98)
  torch.manual_seed(0)
  model = transformers.Gemma3ForConditionalGeneration(cfg).eval()
  _randomize(model, gemma=True)
  model.save_pretrained(tmp_path, safe_serialization=True)
  ids = np.random.default_rng(2).integers(3, 96, (1, SEQ)).astype(np.int32)
  with torch.no_grad():
    want = model(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()
  lm, params, _ = hf.load(str(tmp_path), hf.default_mesh(), "float32", with_tokenizer=False)
  np.testing.assert_allclose(np.asarray(jax.jit(lm.apply)(params, ids)), want, atol=1e-4, rtol=0)
