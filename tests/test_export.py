"""Edge export acceptance: LiteRT parity with JAX, the card-only app path, budgets, CLIs.

One tiny random student (configs/tiny.py's student shape) is saved as a stage once per
module; each quantization mode is exported once (context 96, P=16, so 64 new tokens fit
after the prompts) and the tests read the resulting cards and files.
"""
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from distill.inference import stage
from distill.inference import model as inference
from distill.data import tokenizer as tokenizers
from distill.models.transformer import LM
from distill.models.model_config import ModelConfig

CONTEXT, PREFILL = 96, 16
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  """A workdir with a saved random student and a small text corpus (train + validation)."""
  from pydoc_data import topics  # pylint: disable=import-outside-toplevel
  from distill import data  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("export")
  cfg = ModelConfig(vocab_size=264, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192,
                    max_len=128)
  stage.save_stage(str(root / "student"), cfg, tokenizers.ByteTokenizer(),
                 LM(cfg).init(jax.random.key(0)), {"note": "random test student"})
  text = root / "text"
  text.mkdir()
  keys = sorted(topics.topics)
  names = [f"doc{i:02d}.txt" for i in range(40)]
  assert any(data.split_for_key(n) == "validation" for n in names)
  for i, n in enumerate(names):
    (text / n).write_text(topics.topics[keys[i]])
  return root


def _data_cfg(root):
  from tests.helpers import data_spec  # pylint: disable=import-outside-toplevel
  return data_spec(f"text:{root}/text/*.txt", seq_len=64, data_dir=str(root / "data"))


_CARDS = {}


def _export(root, quant, level="full"):
  from distill.export import export_stage  # pylint: disable=import-outside-toplevel
  if quant not in _CARDS:
    out = root / "export" / quant
    card = export_stage(str(root / "student"), "phone", str(out), quant=quant,
                        max_context=CONTEXT, prefill_len=PREFILL, data_spec=_data_cfg(root),
                        workdir=str(root), level=level, num_threads=1, log=lambda _: None)
    _CARDS[quant] = (card, out)
  return _CARDS[quant]


def test_fp32_greedy_identical_to_jax(root):
  card, out = _export(root, "fp32")
  g = card["verification"]["greedy"]
  # Every prompt length 1 ... 2P + 1 (one and two prefill chunks, both boundaries).
  assert [r["prompt_tokens"] for r in g["per_prompt"]] == list(range(1, 2 * PREFILL + 2)), g
  assert g["all_identical"] and all(r["new_tokens"] == 16 for r in g["per_prompt"]), g
  assert card["verification"]["teacher_forced"]["top1_agreement"] == 1.0
  assert os.path.exists(out / card["model_file"]) and card["bytes"] == os.path.getsize(
      out / card["model_file"])
  # Builtin ops only: no Flex delegate needed on device.
  assert not any(op.startswith("Flex") for op in card["ops"])


def test_fp16_agreement(root):
  card, _ = _export(root, "fp16")
  v = card["verification"]
  assert v["passed"]
  assert v["greedy"]["all_identical"] or v["teacher_forced"]["top1_agreement"] >= 0.98


def test_fp16_gate_reference_is_closer_than_the_fp32_weights(root):
  """The gate's reference (fp32 compute on the fp16-rounded weights the file holds) is nearer
  the file's logits than the unrounded fp32 weights are: it leaves out the rounding."""
  from distill.export import verify  # pylint: disable=import-outside-toplevel
  from distill.export.runtime import LiteRTModel  # pylint: disable=import-outside-toplevel
  card, out = _export(root, "fp16")
  model = inference.load(str(root / "student"))
  ids = np.asarray([model.tokenizer.encode(" ".join(topics_text(root).split())[:80])], np.int32)
  got = LiteRTModel(str(out / card["model_file"]), card=card, num_threads=1).teacher_forced_logits(ids[0])
  vocab = card["vocab_size"]
  rounded = np.asarray(model.lm.apply(verify.reference_params(model.params, "fp16"), ids))[0]
  plain = np.asarray(model.lm.apply(model.params, ids))[0]
  d_rounded = np.abs(got - rounded[:, :vocab]).max()
  d_plain = np.abs(got - plain[:, :vocab]).max()
  assert d_rounded < d_plain, (d_rounded, d_plain)


def topics_text(root) -> str:
  return " ".join(p.read_text() for p in sorted((root / "text").glob("*.txt"))[:3])


def test_fp16_reference_is_the_rounded_weights(root):
  """`reference_params` for fp16 equals NumPy's float16 round trip; other modes pass through."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from distill.export import verify  # pylint: disable=import-outside-toplevel
  params = {"w": np.asarray([1.0001, 3.14159, -2e-8, 60000.0], np.float32),
            "i": np.asarray([1, 2], np.int32)}
  got = verify.reference_params(params, "fp16")
  np.testing.assert_array_equal(np.asarray(got["w"]),
                                params["w"].astype(np.float16).astype(np.float32))
  assert np.asarray(got["w"]).dtype == np.float32 and np.asarray(got["i"]).dtype == np.int32
  assert verify.reference_params(params, "int8") is params


def test_dynamic_int8_agreement(root):
  card, _ = _export(root, "dynamic_int8")
  assert card["verification"]["teacher_forced"]["top1_agreement"] >= 0.95
  assert card["bytes"] < 0.7 * _export(root, "fp32")[0]["bytes"]


def _briefly_trained_stage(root, steps=150):
  """The random student fitted for a few CE steps: static int8 is judged on peaked logits.

  A random model's next-token distribution is nearly flat, so top-1 flips under any
  activation quantization; a trained student (as in the pipeline) is what int8 is for.
  """
  from distill import data  # pylint: disable=import-outside-toplevel
  from tests.helpers import fit_ce  # pylint: disable=import-outside-toplevel
  model = inference.load(str(root / "student"))
  it = data.make_train_iterator(_data_cfg(root), model.tokenizer, str(root), batch_size=16, seed=0)
  lm, params = model.lm, fit_ce(model.lm, model.params, it, steps)
  stage.save_stage(str(root / "trained"), lm.cfg, model.tokenizer, params, {"steps": steps})
  return str(root / "trained")


@pytest.mark.slow
def test_int8_static_agreement(root):
  from distill.export import export_stage  # pylint: disable=import-outside-toplevel
  stage = _briefly_trained_stage(root)
  card = export_stage(stage, "watch", str(root / "export" / "int8"), quant="int8",
                      max_context=CONTEXT, prefill_len=PREFILL, data_spec=_data_cfg(root),
                      workdir=str(root), level="full", num_threads=1, log=lambda _: None)
  assert card["quantization"] == "int8"
  assert card["verification"]["teacher_forced"]["top1_agreement"] >= 0.95
  assert card["calibration"]["samples"] > 0


def test_app_drives_artifact_from_card_alone(root):
  """What an app developer writes: json + numpy + ai_edge_litert, names from the card."""
  card0, out = _export(root, "fp32")
  model = inference.load(str(root / "student"))
  prompt = list(b"The for statement ")
  prompt = [b + 3 for b in prompt]  # byte tokenizer: id = byte + 3 (in the descriptor)
  want = model.generate_ids(prompt, 40, stop_at_eos=False)

  # ---- from here on: only json, numpy and ai_edge_litert
  from ai_edge_litert import interpreter as litert  # pylint: disable=import-outside-toplevel
  with open(out / "model_card.json") as f:
    card = json.load(f)
  with open(out / card["tokenizer"]["descriptor"]) as f:
    tok = json.load(f)
  assert tok["byte_offset"] == 3 and card["vocab_size"] == tok["vocab_size"]
  interp = litert.Interpreter(model_path=str(out / card["model_file"]))
  prefill = interp.get_signature_runner(card["signatures"]["prefill"]["name"])
  decode = interp.get_signature_runner(card["signatures"]["decode"]["name"])
  kv = card["kv_cache"]
  cache = {n: np.zeros(kv["shape"], kv["dtype"]) for n in kv["names"]}
  p = card["prefill_len"]
  pos, got = 0, []
  while pos < len(prompt):  # chunks of P, the last right-padded with pad_id
    chunk = prompt[pos:pos + p]
    tokens = np.full((1, p), card["pad_id"], np.int32)
    tokens[0, :len(chunk)] = chunk
    res = prefill(tokens=tokens, input_pos=np.arange(pos, pos + p, dtype=np.int32), **cache)
    cache = {n: res[n] for n in kv["names"]}
    logits = res["logits"][0, len(chunk) - 1]
    pos += len(chunk)
  for _ in range(40):
    t = int(np.argmax(logits))
    got.append(t)
    res = decode(tokens=np.array([[t]], np.int32), input_pos=np.array([pos], np.int32), **cache)
    cache = {n: res[n] for n in kv["names"]}
    logits, pos = res["logits"][0, 0], pos + 1
  # ---- end of app code
  assert len(prompt) > p  # two prefill chunks
  assert got == want
  assert card0["signatures"]["decode"]["inputs"]["tokens"]["shape"] == [1, 1]
  assert card["signatures"]["prefill"]["outputs"]["logits"]["shape"] == [1, p, card["vocab_size"]]


def test_card_fields(root):
  card, out = _export(root, "fp32")
  for key in ("prefill_len", "max_context", "vocab_size", "num_layers", "kv_cache", "bos_id",
              "eos_id", "tokenizer", "quantization", "bytes", "latency", "signatures",
              "verification"):
    assert key in card, key
  assert card["vocab_size"] == 259 and card["num_layers"] == 2
  assert card["kv_cache"]["shape"] == [1, CONTEXT, 2, 16]
  assert os.path.exists(out / card["tokenizer"]["file"])
  assert card["latency"]["decode_tokens_per_s"] > 0
  ins = card["signatures"]["prefill"]["inputs"]
  assert list(ins)[:4] == ["tokens", "input_pos", "kv_cache_k_0", "kv_cache_v_0"]


def test_budget_error_leaves_nothing(root):
  from distill.export import BudgetError, export_stage  # pylint: disable=import-outside-toplevel
  fp32_bytes = _export(root, "fp32")[0]["bytes"]
  out = root / "export" / "over"
  # Just under the real file: passes the estimate, fails on the converted file.
  budget = (fp32_bytes - 2000) / 1e6
  with pytest.raises(BudgetError, match=r"watch budget is .* but the fp32 file is .*% over"):
    export_stage(str(root / "student"), "watch", str(out), quant="fp32", max_context=CONTEXT,
                 prefill_len=PREFILL, budget_mb=budget, data_spec=_data_cfg(root),
                 workdir=str(root), level="none", log=lambda _: None)
  assert not out.exists()
  assert not [p for p in os.listdir(root / "export") if p.startswith(".")]


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=300)


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith("error:")]


def test_cli_budget_exit_2_one_line(root):
  r = _cli("distill.export", f"--workdir={root}", "--preset=watch", "--budget_mb=0.01",
           "--verify=none")
  assert r.returncode == 2, r.stderr[-2000:]
  lines = _error_lines(r.stderr)
  assert len(lines) == 1 and "watch budget is 0.010 MB" in lines[0] and "% over" in lines[0]
  assert not (root / "export" / "watch").exists()


def test_generate_cli(root):
  _, out = _export(root, "fp32")
  r = _cli("distill.generate", f"--tflite={out}/student-fp32.tflite", "--prompt=The",
           "--max_new_tokens=8")
  assert r.returncode == 0, r.stderr[-2000:]
  model = inference.load(str(root / "student"))
  ids = model.generate_ids(model.tokenizer.encode("The"), 8)
  assert r.stdout.rstrip("\n") == model.tokenizer.decode(ids)
  bad = _cli("distill.generate", "--tflite=/no/such.tflite", "--prompt=x")
  assert bad.returncode == 2 and len(_error_lines(bad.stderr)) == 1
  bad = _cli("distill.generate", f"--model={root}/nope", "--prompt=x")
  assert bad.returncode == 2 and len(_error_lines(bad.stderr)) == 1


_CONVERT_ONE = """
import jax
from distill.export import converter
from distill.models.model_config import ModelConfig
from distill.models.transformer import LM
lm = LM(ModelConfig(vocab_size=64, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=32,
                    max_len=32))
lm32, p32 = converter.export_lm(lm, lm.init(jax.random.key(0)))
converter.save_saved_model(converter.build_module(lm32, p32, vocab=64, max_context=32,
                                                  prefill_len=8, int8_embedding=False), {sm!r})
for mode in ("fp32", "dynamic_int8"):
  assert converter.to_tflite({sm!r}, mode)[0]
print("converted")
"""


def test_conversion_prints_no_converter_warnings(tmp_path):
  """A healthy conversion shows no TensorFlow/TFLite warning lines: the converter's absl C++
  `W0000 ... Ignored output_format.` lines ignore TF_CPP_MIN_LOG_LEVEL (quiet_tf filters them)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user's shell has it
  env.pop("XLA_FLAGS", None)
  r = subprocess.run([sys.executable, "-c", _CONVERT_ONE.format(sm=str(tmp_path / "sm"))],
                     capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert r.returncode == 0 and r.stdout.strip() == "converted", r.stderr[-3000:]
  noisy = [line for line in r.stderr.splitlines()
           if re.match(r"[WEF]\d{4} ", line) or "Ignored output_format" in line
           or "Ignored drop_control_dependency" in line]
  assert not noisy, "\n".join(noisy)
