""".litertlm bundles: the exported .tflite + tokenizer + LLM metadata, as LiteRT-LM loads them.

LiteRT-LM (google-ai-edge/LiteRT-LM, `pip install litert-lm-api`) runs one `.litertlm` file
holding every section an app needs; `litert-lm-builder` writes it. What its executor needs
from our model (runtime/executor/litert_compiled_model_executor_utils.cc, litert/state.cc,
llm_litert_compiled_model_executor.cc, read for litert-lm 0.18):

  * signatures `prefill` / `decode` with inputs `tokens` [1, T] and `input_pos` [T] and
    output `logits` [1, T, V]: the "PyTorch CPU-only" convention (no `mask` input; our graph
    builds the causal mask from input_pos itself). Ours already has these names.
  * caches named `kv_cache_k_<i>` / `kv_cache_v_<i>`, passed in and returned under the same
    names (it runs them in place on CPU).
  * the context length: without executor metadata it guesses it from the key cache as
    dims[2] of [batch, heads, seq, head_dim]; ours is [1, seq, kv_heads, head_dim], so it
    read the head count (2) and refused every prompt ("18 >= 2"). Instead of transposing
    the cache (an extra copy of every cache per step), we ship the executor metadata
    section LiteRT-LM provides for exactly this: one StateBuffer per cache tensor with
    `sequence_axis: 1`, which its MetadataBasedCreate reads before any heuristic.
  * prefill: it fills `tokens` left-aligned and zero-pads the rest of the P-long chunk, with
    input_pos = current_step, current_step + 1, ... then 0s; our graph only reads input_pos[0]
    and writes P contiguous slots, which is what it expects. It holds back the prompt's last
    token and feeds it as the first decode step, so every token is cached exactly once.
  * sampling: the CPU sampler implements TOP_P only (TOP_K and GREEDY are "not implemented
    yet" in 0.18), so greedy is TOP_P with k=1: the top-1 token, no randomness.
  * the engine prepends the metadata's start token itself, so tokenizers are bundled without
    their own post-processor (no second BOS). The start token is declared exactly when the
    model was trained with BOS first (`tokenizer.add_bos`, the stage's convention); without
    one the engine feeds the prompt's ids as they are, as training and `distill.load` do.
    A bundle declaring anything else is refused (`start_token`).

Tokenizers: HF tokenizer.json as is (post-processor removed); SentencePiece .model as is; our
byte tokenizer (pad=0, bos=1, eos=2, byte b -> b + 3) written as an HF ByteLevel BPE with no
merges whose ids equal ours (every byte is its own token).
"""
from __future__ import annotations

import json
import os
import tempfile

from distill.export.signatures import cache_names

BUNDLE_NAME = "student.litertlm"


class LitertLmError(ValueError):
  """A bundle that cannot be built (a usage error: exit code 2, nothing written)."""


def builder_module():
  try:
    import litert_lm_builder  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise LitertLmError("--format=litertlm needs litert-lm-builder: pip install "
                        "litert-lm-builder (or -r requirements-edge.txt)") from None
  return litert_lm_builder


def engine_module():
  try:
    import litert_lm  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise LitertLmError("running a .litertlm needs LiteRT-LM's runtime: pip install "
                        "litert-lm-api (or -r requirements-edge.txt)") from None
  return litert_lm


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table, which HF's ByteLevel pre-tokenizer uses."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1)))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return dict(zip(bs, map(chr, cs)))


def byte_tokenizer_json(tokenizer) -> dict:
  """An HF tokenizer.json (ByteLevel BPE, no merges) giving exactly our byte tokenizer's ids."""
  offset = tokenizer.descriptor().get("byte_offset", 3)
  specials = {"<pad>": tokenizer.pad_id, "<s>": tokenizer.bos_id, "</s>": tokenizer.eos_id}
  if sorted(specials.values()) != list(range(offset)):
    raise LitertLmError(f"byte tokenizer with specials {specials} and byte offset {offset}: "
                        "cannot be written as a byte-level HF tokenizer")
  vocab = dict(specials)
  for b, ch in _bytes_to_unicode().items():
    vocab[ch] = b + offset
  byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                "use_regex": False}
  return {
      "version": "1.0", "truncation": None, "padding": None,
      "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False,
                        "rstrip": False, "normalized": False, "special": True}
                       for t, i in sorted(specials.items(), key=lambda kv: kv[1])],
      "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None,
      "decoder": byte_level,
      "model": {"type": "BPE", "dropout": None, "unk_token": None,
                "continuing_subword_prefix": None, "end_of_word_suffix": None,
                "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                "vocab": vocab, "merges": []},
  }


def _hf_json_without_post_processor(path: str) -> dict:
  with open(path) as f:
    data = json.load(f)
  # The engine adds the start token from the metadata; a BOS from the post-processor too
  # would give two.
  data["post_processor"] = None
  return data


def chat_template(tokenizer, tokenizer_dir: str | None) -> str | None:
  """The HF chat template (tokenizer_config.json beside the tokenizer), if the model has one."""
  tmpl = getattr(tokenizer, "chat_template", None)
  if tmpl:
    return tmpl
  for d in filter(None, [tokenizer_dir, os.path.dirname(getattr(tokenizer, "_path", "") or "")]):
    path = os.path.join(d, "tokenizer_config.json")
    if os.path.isfile(path):
      with open(path) as f:
        tmpl = json.load(f).get("chat_template")
      if isinstance(tmpl, str) and tmpl:
        return tmpl
  return None


def write_tokenizer(tokenizer, directory: str) -> tuple[str, str]:
  """(kind, path) of the tokenizer file to bundle, written into `directory` when needed."""
  kind = tokenizer.descriptor().get("type")
  if kind == "byte":
    data = byte_tokenizer_json(tokenizer)
  elif kind == "hf":
    data = _hf_json_without_post_processor(tokenizer._model_path())  # pylint: disable=protected-access
  elif kind == "sentencepiece":
    return "sentencepiece", tokenizer._model_path()  # pylint: disable=protected-access
  else:
    raise LitertLmError(f"tokenizer type {kind!r} cannot go into a .litertlm: LiteRT-LM takes "
                        "HF tokenizer.json, SentencePiece or byte-level vocabularies")
  path = os.path.join(directory, "litertlm_tokenizer.json")
  with open(path, "w") as f:
    json.dump(data, f, ensure_ascii=False)
  return "hf", path


NO_START_TOKEN = -1


def start_token(tokenizer, requested: int | None = None) -> int | None:
  """The start token id to declare (None: none): the model's convention, which a `requested`
  id (NO_START_TOKEN for none) must equal; anything else is refused (exit 2)."""
  trained = tokenizer.bos_id if tokenizer.add_bos else None
  if requested is None:
    return trained
  want = None if requested == NO_START_TOKEN else int(requested)
  if want != trained:
    how = (f"with BOS (id {trained}) before every sequence" if trained is not None
           else "without a start token")
    raise LitertLmError(
        f"--start_token={requested} disagrees with the model, which was trained {how}: the "
        "engine would feed it a sequence start it never saw; drop --start_token (the bundle "
        "follows the model) or retrain with --config.data.add_bos="
        f"{'true' if trained is None else 'false'}")
  return want


def llm_metadata(tokenizer, max_context: int, requested_start: int | None = None) -> str:
  """LlmMetadata textproto: start/stop tokens, context, greedy sampler (see module doc)."""
  if tokenizer.eos_id is None:
    raise LitertLmError("the tokenizer has no EOS token; LiteRT-LM needs a stop token id: give "
                        "the tokenizer one (tokenizer_config.json eos_token)")
  start = start_token(tokenizer, requested_start)
  lines = [] if start is None else [f"start_token {{ token_ids {{ ids: {int(start)} }} }}"]
  return "\n".join(lines + [
      f"stop_tokens {{ token_ids {{ ids: {int(tokenizer.eos_id)} }} }}",
      f"max_num_tokens: {int(max_context)}",
      "sampler_params { type: TOP_P k: 1 p: 1.0 temperature: 1.0 seed: 0 }",
      "llm_model_type { generic_model {} }", ""])


def executor_metadata(n_layers: int, seq_axis: int = 1) -> str:
  """ExecutorMetadata textproto naming every cache tensor and its sequence axis."""
  rows = []
  for name in cache_names(n_layers):
    kind = "TYPE_GLOBAL_KEY_CACHE" if name.startswith("kv_cache_k_") else "TYPE_GLOBAL_VALUE_CACHE"
    rows.append(f'  state_buffers {{ prefill_input_name: "{name}" prefill_output_name: "{name}" '
                f'decode_input_name: "{name}" decode_output_name: "{name}" type: {kind} '
                f"sequence_axis: {seq_axis} }}")
  return "llm_executor_metadata {\n" + "\n".join(rows) + "\n}\n"


def build(tflite_path: str, out_path: str, *, tokenizer, n_layers: int, max_context: int,
          tokenizer_dir: str | None = None, requested_start: int | None = None) -> dict:
  """Writes the bundle to `out_path` (via a temporary name) and returns what went into it."""
  lb = builder_module()
  directory = os.path.dirname(os.path.abspath(out_path))
  with tempfile.TemporaryDirectory(dir=directory, prefix=".litertlm-") as work:
    meta = os.path.join(work, "llm_metadata.textproto")
    with open(meta, "w") as f:
      f.write(llm_metadata(tokenizer, max_context, requested_start))
    execm = os.path.join(work, "executor_metadata.textproto")
    with open(execm, "w") as f:
      f.write(executor_metadata(n_layers))
    kind, tok_path = write_tokenizer(tokenizer, work)
    tmpl = chat_template(tokenizer, tokenizer_dir)
    tmpl_path = None
    if tmpl:
      tmpl_path = os.path.join(work, "chat_template.jinja")
      with open(tmpl_path, "w") as f:
        f.write(tmpl)
    b = lb.LitertLmFileBuilder()
    b.add_llm_metadata(meta, jinja_prompt_template_path=tmpl_path)
    b.add_executor_metadata(execm)
    b.add_tflite_model(tflite_path, lb.TfLiteModelType.PREFILL_DECODE)
    if kind == "hf":
      b.add_hf_tokenizer(tok_path)
    else:
      b.add_sentencepiece_tokenizer(tok_path)
    tmp_out = os.path.join(work, "bundle.litertlm")
    with open(tmp_out, "wb") as f:
      b.build(f)
    os.replace(tmp_out, out_path)
  return {"file": os.path.basename(out_path), "bytes": os.path.getsize(out_path),
          "tokenizer": "hf tokenizer.json" if kind == "hf" else "sentencepiece",
          "tokenizer_source": tokenizer.descriptor().get("type"),
          "start_token": start_token(tokenizer, requested_start), "stop_tokens": [tokenizer.eos_id],
          "max_num_tokens": max_context, "chat_template": bool(tmpl),
          "kv_cache_sequence_axis": 1, "sampler": "greedy (TOP_P, k=1)"}
