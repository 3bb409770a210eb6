"""Tables of examples (JSONL, Parquet, save_to_disk) -> rows and completion-only loss masks.

References are built by hand here: the chat template's expected text is written out, and
token ids come from the test tokenizer's own character table, not from distill's code.
"""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from distill import data
from distill.data import tokenizer as tokenizers
from distill.models import sharding
from distill.models.transformer import LM
from distill.eval import metrics as evaluate
from distill.inference import sampling
from distill.methods import onpolicy, teacher_cache
from distill.train import objectives
from tests.helpers import data_spec, tiny_model_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["<unk>", "<s>", "<|im_end|>", "<|im_start|>", "<pad>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
VOCAB = {t: i for i, t in enumerate(SPECIALS + CHARS)}
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SEQ_LEN = 80


def ids(text):
  """Reference ids: the special strings whole, every other character its own id."""
  out = []
  for part in re.split(r"(<\|im_start\|>|<\|im_end\|>|<s>)", text):
    out += [VOCAB[part]] if part in VOCAB and len(part) > 1 else [VOCAB[c] for c in part]
  return out


def reference(pieces, *, eos=False):
  """(tokens [T+1], mask [T]) from (text, trained) pieces, padded with <pad>."""
  toks, on = [], []
  for text, trained in pieces:
    toks += ids(text)
    on += [trained] * len(ids(text))
  if eos:
    toks.append(VOCAB["<|im_end|>"])
    on.append(True)
  w = np.full(SEQ_LEN + 1, VOCAB["<pad>"], np.int32)
  m = np.zeros(SEQ_LEN + 1, np.float32)
  w[:len(toks)], m[:len(on)] = toks, on
  return w, m[1:]


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
  import tokenizers as hf  # pylint: disable=import-outside-toplevel
  d = tmp_path_factory.mktemp("tok")
  tok = hf.Tokenizer(hf.models.BPE(vocab=VOCAB, merges=[], unk_token="<unk>"))
  tok.add_special_tokens(SPECIALS)
  tok.save(str(d / "tokenizer.json"))
  (d / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<pad>",
      "add_bos_token": False, "chat_template": TEMPLATE}))
  return str(d)


U, A = "<|im_start|>user\n", "<|im_start|>assistant\n"
E = "<|im_end|>\n"
# (form, rows, the reference pieces of each row, EOS appended)
FORMS = {
    "text": ([{"text": "hello world"}, {"text": "ab"}],
             [[("hello world", True)], [("ab", True)]], True),
    "prompt_completion": ([{"prompt": "2+2=", "completion": "4"},
                           {"prompt": "Say hi:", "completion": " hi there"}],
                          [[("2+2=", False), ("4", True)],
                           [("Say hi:", False), (" hi there", True)]], True),
    "messages": ([{"messages": [{"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "yo"}]},
                  {"messages": [{"role": "system", "content": "be brief"},
                                {"role": "user", "content": "a"},
                                {"role": "assistant", "content": "b"},
                                {"role": "user", "content": "c"},
                                {"role": "assistant", "content": "d"}]}],
                 [[(U + "hi" + E + A, False), ("yo" + E, True)],
                  [("<|im_start|>system\nbe brief" + E + U + "a" + E + A, False), ("b" + E, True),
                   (U + "c" + E + A, False), ("d" + E, True)]], False),
    "chat_prompt_completion": ([{"prompt": [{"role": "user", "content": "hi"}],
                                 "completion": [{"role": "assistant", "content": "yo"}]}],
                               [[(U + "hi" + E + A, False), ("yo" + E, True)]], False),
}


def _write(fmt, path, rows):
  if fmt == "json":
    os.makedirs(path)
    with open(os.path.join(path, "rows.jsonl"), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    return f"json:{path}/*.jsonl"
  if fmt == "parquet":
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    from pyarrow import parquet as pq  # pylint: disable=import-outside-toplevel
    os.makedirs(path)
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(path, "rows.parquet"))
    return f"parquet:{path}/*.parquet"
  import datasets  # pylint: disable=import-outside-toplevel
  datasets.Dataset.from_list(rows).save_to_disk(path)
  return f"hf_disk:{path}"


def _spec(name, tmp_path, **kw):
  # validation_name: the whole table is the train split, in row order.
  kw = dict(dict(seq_len=SEQ_LEN, validation_name=name), **kw)
  return data_spec(name, data_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("fmt", ["json", "parquet", "hf_disk"])
@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_form_and_format_gives_the_reference_rows(form, fmt, chat_tokenizer, tmp_path):
  rows, pieces, eos = FORMS[form]
  spec = _spec(_write(fmt, str(tmp_path / "t"), rows), tmp_path)
  tok = tokenizers.load(chat_tokenizer)
  for split in ("train", "validation"):
    batch = data.eval_batches(spec, tok, str(tmp_path), split=split, batch_size=len(rows))[0]
    for r, p in enumerate(pieces):
      w, m = reference(p, eos=eos)
      np.testing.assert_array_equal(batch["inputs"][r], w[:-1])
      np.testing.assert_array_equal(batch["targets"][r], w[1:])
      np.testing.assert_array_equal(batch["mask"][r], m)
  prompts = data.prompts(spec, tok, str(tmp_path), "train")
  last = pieces[-1]
  want = "".join(t for t, _ in last[:-1]) if form != "text" else ""
  assert prompts[-1].rendered == want and list(prompts[-1].ids) == ids(want)


def test_byte_tokenizer_bos_and_prompt_only_rows(tmp_path):
  rows = [{"prompt": "ab", "completion": "c"}, {"prompt": "only a prompt", "completion": None}]
  spec = _spec(_write("json", str(tmp_path / "t"), rows), tmp_path, add_bos=True)
  tok = tokenizers.ByteTokenizer()
  batch = data.eval_batches(spec, tok, str(tmp_path), batch_size=2)[0]
  w = [1, ord("a") + 3, ord("b") + 3, ord("c") + 3, 2]
  np.testing.assert_array_equal(batch["inputs"][0, :4], w[:4])
  np.testing.assert_array_equal(batch["mask"][0, :5], [0, 0, 1, 1, 0])
  assert batch["mask"][1].sum() == 0  # the prompt-only row is no training row (a pad row)
  ps = data.prompts(spec, tok, str(tmp_path), "train")
  assert [(p.rendered, p.reference) for p in ps] == [("ab", "c"), ("only a prompt", None)]
  assert list(ps[1].ids) == [1] + [b + 3 for b in b"only a prompt"]


def test_md5_rule_splits_rows_and_columns_map(tmp_path):
  rows = [{"q": f"{i}+1=", "a": str(i + 1)} for i in range(60)]
  spec = data_spec(_write("json", str(tmp_path / "t"), rows), seq_len=16,
                   data_dir=str(tmp_path / "cache"), columns=(("completion", "a"), ("prompt", "q")))
  tok = tokenizers.ByteTokenizer()
  got = {s: [p.rendered for p in data.prompts(spec, tok, str(tmp_path), s)]
         for s in ("train", "validation")}
  want = {s: [r["q"] for r in rows if data.split_for_key(json.dumps(r, sort_keys=True)) == s]
          for s in ("train", "validation")}
  assert got == want and want["validation"] and want["train"]


def test_over_long_completion_is_cut_at_the_context(tmp_path):
  rows = [{"prompt": "p", "completion": "x" * 40}]
  spec = _spec(_write("json", str(tmp_path / "t"), rows), tmp_path, seq_len=8)
  batch = data.eval_batches(spec, tokenizers.ByteTokenizer(), str(tmp_path), batch_size=1)[0]
  np.testing.assert_array_equal(batch["inputs"][0], [ord("p") + 3] + [ord("x") + 3] * 7)
  np.testing.assert_array_equal(batch["mask"][0], [1] * 8)


def _lm_batch(tmp_path):
  """(a batch of 8 byte-level examples, their DataSpec)."""
  rows = [{"prompt": "a" * n, "completion": "b" * (9 - n)} for n in range(1, 9)]
  spec = _spec(_write("json", str(tmp_path / "t"), rows), tmp_path, seq_len=16)
  return data.eval_batches(spec, tokenizers.ByteTokenizer(), str(tmp_path), batch_size=8)[0], spec


def test_padded_examples_do_not_interact(tmp_path):
  batch, _ = _lm_batch(tmp_path)
  lm = LM(tiny_model_config(vocab_size=264))
  params = lm.init(jax.random.key(0))
  together = np.asarray(lm.apply(params, batch["inputs"]))
  for r in range(8):
    n = 10  # prompt + completion + EOS = 10 tokens, all inside the first 10 inputs
    alone = np.asarray(lm.apply(params, batch["inputs"][r:r + 1, :n]))[0]
    np.testing.assert_allclose(together[r, :n], alone, atol=1e-5, rtol=1e-5)


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(
      -1, keepdims=True)


def test_completion_only_losses_equal_their_numpy_reference(tmp_path):
  batch, spec = _lm_batch(tmp_path)
  m = batch["mask"].astype(bool)
  assert 0 < m.sum() < m.size  # prompts and pads are really masked out
  student = LM(tiny_model_config(vocab_size=264, d_model=16, n_heads=2, n_kv_heads=1))
  teacher = LM(tiny_model_config(vocab_size=264))
  s_p, t_p = student.init(jax.random.key(1)), teacher.init(jax.random.key(2))
  logq = _log_softmax(student.apply(s_p, batch["inputs"]))
  logp = _log_softmax(teacher.apply(t_p, batch["inputs"]))
  ce_ref = -np.take_along_axis(logq, batch["targets"][..., None], -1)[..., 0][m].mean()
  kl_ref = (np.exp(logp) * (logp - logq)).sum(-1)[m].mean()
  ce, _ = objectives.ce_loss(s_p, batch, None, 0, student=student)
  np.testing.assert_allclose(float(ce), ce_ref, rtol=1e-4)
  for chunk in (0, 4):  # dense, and chunked over the sequence (fused with the unembedding)
    kd, _ = objectives.distill_loss(s_p, batch, t_p, 0, student=student, teacher=teacher,
                                    cfg=objectives.LossConfig(kind="forward_kl",
                                                              chunk_size=chunk))
    np.testing.assert_allclose(float(kd), kl_ref, rtol=1e-4)
  # The offline teacher cache over the same table rows (top-k = the whole vocabulary, so the
  # renormalized sparse KL is the dense one), looked up by row id as training does.
  ts = teacher_cache.TransferSet(data=spec, tokenizer=tokenizers.ByteTokenizer(),
                                 workdir=str(tmp_path), fraction=1.0, teacher="t", seed=0)
  mesh = sharding.make_mesh(sharding.MeshSpec(data=-1, fsdp=1, tensor=1, slices=1))
  out = str(tmp_path / "cache_out")
  teacher_cache.write(teacher, t_p, out, 264, ts, mesh, batch_size=8, show_progress=False)
  cached = dict(batch)
  cached["teacher_ids"], cached["teacher_logprobs"] = teacher_cache.Cache(out).lookup(
      np.arange(8))
  kd, _ = objectives.cached_distill_loss(s_p, cached, None, 0, student=student,
                                         cfg=objectives.LossConfig(kind="forward_kl",
                                                                   top_k=264))
  np.testing.assert_allclose(float(kd), kl_ref, rtol=1e-4)
  np.testing.assert_allclose(evaluate.mean_ce(student, s_p, [batch], mesh), ce_ref, rtol=1e-4)


# ~80 s (an on-policy pipeline in a subprocess): slow-marked to keep the default run near 15
# minutes; the forms, masks and on-policy prompts are checked above without the pipeline.
@pytest.mark.slow
def test_pipeline_runs_on_a_chat_table(chat_tokenizer, tmp_path):
  rows = [{"messages": [{"role": "user", "content": f"{i}+{i}"},
                        {"role": "assistant", "content": str(2 * i)}]} for i in range(40)]
  name = _write("json", str(tmp_path / "t"), rows)
  work = str(tmp_path / "run")
  argv = [sys.executable, "-m", "distill.main", "--config=configs/tiny.py:small",
          f"--workdir={work}", f"--config.data.name={name}",
          f"--config.data.tokenizer={chat_tokenizer}", "--config.export.enabled=False",
          "--config.eval.heldout=", "--config.data.dev_fraction=0.1",
          "--config.train.dev_every=2", "--config.data.seq_len=48",
          "--config.distill.on_policy.fraction=1.0"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  with open(os.path.join(work, "report.json")) as f:
    rep = json.load(f)
  assert np.isfinite(rep["student"]["val_ce"]) and np.isfinite(rep["baseline"]["val_ce"])
  # Every student step was on-policy: the student answered the examples' prompts.
  with open(os.path.join(work, "student", "metrics.jsonl")) as f:
    steps = [json.loads(line) for line in f]
  assert steps and all(m["on_policy"] == 1.0 and m["sample_len"] > 0 for m in steps)
  # The stage carries the chat template (the student and its exports render with it).
  assert tokenizers.load(os.path.join(work, "student", "tokenizer")).chat_template == TEMPLATE


def test_seqkd_answers_each_examples_own_prompt(tmp_path):
  _, spec = _lm_batch(tmp_path)  # prompts "a" * n, n = 1..8, in a 16-token context
  lm = LM(tiny_model_config(vocab_size=264))
  params = lm.init(jax.random.key(0))
  params["embed"] = params["embed"] * 4.0  # peaked logits: no near-ties in argmax
  ts = teacher_cache.TransferSet(data=spec, tokenizer=tokenizers.ByteTokenizer(),
                                 workdir=str(tmp_path), fraction=1.0, teacher="t", seed=0)
  out = str(tmp_path / "seqkd")
  teacher_cache.generate(lm, params, out, ts, prompt_len=4, temperature=0.0, batch_size=4,
                         show_progress=False)
  seqs, mask = np.load(f"{out}/sequences.npy"), np.load(f"{out}/mask.npy")
  assert seqs.shape == (8, 17) and mask.shape == (8, 16)
  greedy = np.asarray(lm.apply(params, seqs[:, :-1])).argmax(-1)
  for r, n in enumerate(range(1, 9)):
    np.testing.assert_array_equal(seqs[r, :n], [ord("a") + 3] * n)  # its prompt, kept
    assert not mask[r, :n - 1].any() and mask[r, n - 1] == 1  # only the answer is trained
    on = mask[r] > 0
    np.testing.assert_array_equal(seqs[r, 1:][on], greedy[r][on])  # the teacher's own answer
    # Trained up to EOS or the context's end, nothing after.
    stop = np.flatnonzero(seqs[r, n:] == 2)
    end = n + stop[0] + 1 if stop.size else 17
    assert on.sum() == end - n


def test_on_policy_samples_answer_each_examples_own_prompt(tmp_path):
  batch, _ = _lm_batch(tmp_path)  # prompts "a" * n, n = 1..8
  lm = LM(tiny_model_config(vocab_size=264))
  params = lm.init(jax.random.key(0))
  params["embed"] = params["embed"] * 4.0  # peaked logits: no near-ties in argmax
  cfg = onpolicy.OnPolicyConfig(
      fraction=1.0, prompt_len=8, divergence="reverse_kl", example_prompts=True, prefill=1,
      sample=sampling.SampleConfig(gen_len=9, temperature=0.0, eos_id=2, vocab=259))
  new, _ = onpolicy.sampled_batch(lm, params, batch, jax.random.key(1), cfg)
  inputs, mask = np.asarray(new["inputs"]), np.asarray(new["mask"])
  greedy = np.asarray(lm.apply(params, inputs)).argmax(-1)
  for r, n in enumerate(range(1, 9)):
    np.testing.assert_array_equal(inputs[r, :n], [ord("a") + 3] * n)  # its own prompt
    assert not mask[r, :n - 1].any() and mask[r, n - 1] == 1  # sampled from its end on
    on = mask[r] > 0
    np.testing.assert_array_equal(np.asarray(new["targets"])[r][on], greedy[r][on])
    stop = np.flatnonzero(np.asarray(new["targets"])[r, n - 1:] == 2)
    assert on.sum() == (stop[0] + 1 if stop.size else 9)  # to EOS or gen_len
