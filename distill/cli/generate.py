"""Stream generated text from an exported .tflite (LiteRT, CPU) or a JAX model.

  python -m distill.generate --tflite=runs/tiny/export/watch/student-int8.tflite --prompt="The for"
  python -m distill.generate --model=runs/tiny/student --prompt="The for statement"
  python -m distill.generate --model=hf:/path/to/hf_dir --prompt="Hello"
  python -m distill.generate --model=gguf:/path/model.gguf --prompt="Hello"
  python -m distill.generate --litertlm=runs/tiny/export/watch/student.litertlm --prompt="The for"
  python -m distill.generate --model=runs/tiny/teacher --draft_model=runs/tiny/student --draft_k=4 \
      --prompt="The for statement"   # speculative decoding: the teacher's own text, faster

With --tflite everything (context, prefill length, signature and cache names, tokenizer file,
BOS/EOS) comes from the model card beside the file; JAX is not imported. With --model the
stage directory (or Hugging Face directory, or GGUF file) is loaded with `distill.load`. With --litertlm
the bundle runs in LiteRT-LM's engine (`litert_lm`, CPU), which adds BOS, tokenizes and stops
at EOS itself; neither JAX nor TensorFlow is imported. Greedy by default;
--temperature / --top_k sample (JAX path only). With --draft_model (JAX path) a second model
drafts --draft_k tokens that --model verifies in one forward (`distill.inference.speculative`):
greedy text identical to --model's own, sampled text distributed as its own; the acceptance
figures go to stderr. Bad paths give one `error:` line, exit 2.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags
from distill.cli import common as cli
from distill.data import tokenizer as tokenizers
from distill.export import litertlm_runtime as lrt
from distill.export.runtime import CardError, LiteRTModel, read_card
from distill.inference import model as inference
from distill.inference import speculative

_TFLITE = flags.DEFINE_string("tflite", None, "An exported .tflite (its model_card.json beside it).")
_LITERTLM = flags.DEFINE_string("litertlm", None, "A .litertlm bundle (LiteRT-LM engine, CPU).")
_MODEL = flags.DEFINE_string("model", None,
                             "A stage directory, hf:/path or gguf:/path/model.gguf (JAX).")
_PROMPT = flags.DEFINE_string("prompt", "", "Prompt text.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most.")
_TEMP = flags.DEFINE_float("temperature", 0.0, "0 = greedy (JAX path: >0 samples).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Top-k for sampling (JAX path).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (JAX path).")
_DRAFT = flags.DEFINE_string("draft_model", None,
                            "A drafter for --model (same tokenizer; e.g. its distilled student): "
                            "speculative decoding.")
_DRAFT_K = flags.DEFINE_integer("draft_k", 4, "Tokens the drafter proposes per teacher call.")
_THREADS = flags.DEFINE_integer("threads", None, "LiteRT CPU threads.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Full tracebacks.")


class _Streamer:
  """Prints the text of the ids so far as it grows; holds back a trailing partial character."""

  def __init__(self, tokenizer, out=sys.stdout):
    self.tokenizer, self.out, self.ids, self.shown = tokenizer, out, [], ""

  def add(self, tok: int) -> None:
    self.ids.append(tok)
    text = self.tokenizer.decode(self.ids)
    if text.endswith("\ufffd"):  # a multi-byte character cut in the middle: wait for the rest
      return
    if text.startswith(self.shown):
      self.out.write(text[len(self.shown):])
    else:  # a tokenizer that re-spaces earlier text: print the whole fresh tail
      self.out.write(text[len(os.path.commonprefix([text, self.shown])):])
    self.out.flush()
    self.shown = text

  def finish(self) -> str:
    text = self.tokenizer.decode(self.ids)
    self.out.write(text[len(os.path.commonprefix([text, self.shown])):] + "\n")
    self.out.flush()
    return text


def generate_tflite(path: str, prompt: str, max_new_tokens: int, threads=None, out=sys.stdout):
  card = read_card(path)
  tok_dir = os.path.dirname(os.path.abspath(path))
  tok_file = os.path.join(tok_dir, card["tokenizer"]["descriptor"])
  if not os.path.exists(tok_file):
    tok_file = os.path.join(tok_dir, card["tokenizer"]["file"])
  if not os.path.exists(tok_file):
    raise CardError(f"tokenizer file {tok_file} named by the model card is missing; keep the "
                    "exported folder together")
  tokenizer = tokenizers.load(tok_file)
  model = LiteRTModel(path, card=card, num_threads=threads)
  # The card's convention (cards older than it never trained with BOS).
  ids = tokenizer.encode(prompt, add_bos=bool(card.get("add_bos")))
  if card.get("bos_id") is not None and not ids:
    ids = [card["bos_id"]]
  room = card["max_context"] - len(ids)
  if room <= 0:
    raise ValueError(f"prompt is {len(ids)} tokens; this file's max_context is "
                     f"{card['max_context']}: shorten the prompt")
  stream = _Streamer(tokenizer, out)
  for t in model.generate_ids(ids, min(max_new_tokens, room), eos_id=card.get("eos_id")):
    if t == card.get("eos_id"):
      break
    stream.add(t)
  return stream.finish()


def generate_litertlm(path: str, prompt: str, max_new_tokens: int, threads=None,
                      out=sys.stdout) -> str:
  """Greedy text from LiteRT-LM's engine, streamed as it produces it."""
  engine = lrt.open_engine(path, threads=threads)
  try:
    parts = []
    for chunk in lrt.stream(engine, prompt, max_new_tokens):
      parts.append(chunk)
      out.write(chunk)
      out.flush()
    out.write("\n")
    out.flush()
    return "".join(parts)
  finally:
    engine.close()


def generate_jax(path: str, prompt: str, max_new_tokens: int, *, temperature=0.0, top_k=0,
                 seed=0, draft=None, draft_k=4, out=sys.stdout, err=sys.stderr):
  model = inference.load(path)
  stream = _Streamer(model.tokenizer, out)
  ids = model.tokenizer.encode_prompt(prompt)
  if draft is None:
    model.generate_ids(ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed,
                       on_token=stream.add)
    return stream.finish()
  drafter = inference.load(draft)
  _, stats = speculative.generate_ids(model, drafter, ids, max_new_tokens, k=draft_k,
                                      temperature=temperature, top_k=top_k, seed=seed,
                                      on_token=stream.add)
  text = stream.finish()
  err.write(f"speculative: k={draft_k}, {stats.tokens_per_call:.2f} tokens per teacher call, "
            f"{stats.acceptance_rate:.1%} of {stats.drafted} drafts accepted, "
            f"{stats.teacher_calls} teacher calls for {stats.new_tokens} tokens\n")
  return text


def _run():
  if sum(map(bool, (_TFLITE.value, _MODEL.value, _LITERTLM.value))) != 1:
    raise ValueError("give exactly one of --tflite=PATH.tflite, --litertlm=PATH.litertlm or "
                     "--model=STAGE_DIR|hf:PATH|gguf:FILE")
  if _DRAFT.value and not _MODEL.value:
    raise ValueError("--draft_model drafts for a JAX --model; give --model=TEACHER as well")
  if _DRAFT_K.value < 1:
    raise ValueError(f"--draft_k={_DRAFT_K.value}: draft at least one token per call (e.g. 4)")
  if _LITERTLM.value:
    generate_litertlm(_LITERTLM.value, _PROMPT.value, _MAX_NEW.value, _THREADS.value)
  elif _TFLITE.value:
    generate_tflite(_TFLITE.value, _PROMPT.value, _MAX_NEW.value, _THREADS.value)
  else:
    generate_jax(_MODEL.value, _PROMPT.value, _MAX_NEW.value, temperature=_TEMP.value,
                 top_k=_TOP_K.value, seed=_SEED.value, draft=_DRAFT.value, draft_k=_DRAFT_K.value)
  return 0


def main(argv):
  return cli.run_main(argv, _run, verbose=_VERBOSE.value,
                      arg_hint='quote the prompt: --prompt="..."')


def run_cli():
  app.run(main, flags_parser=cli.parse_flags)
