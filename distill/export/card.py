"""The model card: everything an app needs to run the .tflite, as JSON beside it.

An app reads `signatures` for tensor names/shapes/dtypes, `kv_cache` for the zero caches to
allocate, `prefill_len`/`max_context` for chunking and stopping, `vocab_size` (= logits
width = usable token ids), `bos_id`/`eos_id`, and `tokenizer` for the file to load. The
`how_to_run` lines are the whole protocol in prose.
"""
from __future__ import annotations

import json
import os

import numpy as np

from distill.export.signatures import DECODE, PREFILL, cache_names
from distill.export.runtime import CARD_NAME

FORMAT = "distill-litert-generative/1"

HOW_TO_RUN = [
    "Tokenize the prompt with the bundled tokenizer and, when add_bos is true, put bos_id "
    "first (the model was trained that way); never when add_bos is false.",
    "Allocate zero caches: for each name in kv_cache.names an array of kv_cache.shape / dtype.",
    "prefill: feed the prompt in chunks of prefill_len tokens, right-padded with pad_id; "
    "input_pos = the chunk's positions (start, start+1, ...); a chunk starts at most at "
    "max_context - prefill_len. Pass the caches in and take the updated caches out.",
    "The next-token logits are logits[0, i] where i is the last real token of the last chunk.",
    "decode: tokens [[id]], input_pos [position of that token], the caches; "
    "logits [1, 1, vocab_size]. Stop at eos_id or when the position reaches max_context.",
]


def _tensor_info(details: dict) -> dict:
  return {"shape": [int(d) for d in details["shape"]], "dtype": np.dtype(details["dtype"]).name}


def signatures(interpreter, n_layers: int) -> dict:
  """Names, shapes and dtypes read back from the flatbuffer, in the conventional order."""
  order = ["tokens", "input_pos"] + cache_names(n_layers)
  out = {}
  for key in (PREFILL, DECODE):
    runner = interpreter.get_signature_runner(key)
    ins, outs = runner.get_input_details(), runner.get_output_details()
    out[key] = {
        "name": key,
        "inputs": {n: _tensor_info(ins[n]) for n in order if n in ins},
        "outputs": {n: _tensor_info(outs[n]) for n in ["logits"] + cache_names(n_layers)
                    if n in outs},
    }
    missing = (set(ins) ^ set(out[key]["inputs"])) | (set(outs) ^ set(out[key]["outputs"]))
    if missing:
      raise RuntimeError(f"signature {key} has unexpected tensors {sorted(missing)}")
  return out


def tokenizer_entry(tokenizer, files: list[str]) -> dict:
  desc = tokenizer.descriptor()
  main = desc.get("file") or "distill_tokenizer.json"
  return {"type": desc.get("type"), "file": main, "descriptor": "distill_tokenizer.json",
          "files": sorted(files), "vocab_size": int(tokenizer.vocab_size)}


def build(*, model_file: str, nbytes: int, preset, quant_detail: str, cfg, vocab: int,
          tokenizer, tokenizer_files: list[str], sigs: dict, source: dict) -> dict:
  """The card without the measured sections (verification, latency, timings)."""
  shape = [1, preset.max_context, cfg.n_kv_heads, cfg.k]
  return {
      "format": FORMAT,
      "model_file": model_file,
      "preset": preset.name,
      "quantization": preset.quant,
      "quantization_detail": quant_detail,
      "bytes": int(nbytes),
      "budget_bytes": preset.budget_bytes,
      "prefill_len": preset.prefill_len,
      "max_context": preset.max_context,
      "vocab_size": int(vocab),
      "num_layers": cfg.n_layers,
      "kv_cache": {"names": cache_names(cfg.n_layers), "shape": shape, "dtype": "float32",
                   "layout": "[batch, slot, kv_head, head_dim]", "num_kv_heads": cfg.n_kv_heads,
                   "head_dim": cfg.k},
      "bos_id": tokenizer.bos_id,
      "add_bos": bool(tokenizer.add_bos),  # BOS before every prompt, as in training
      "eos_id": tokenizer.eos_id,
      "pad_id": tokenizer.pad_id if tokenizer.pad_id is not None else 0,
      "tokenizer": tokenizer_entry(tokenizer, tokenizer_files),
      "signatures": sigs,
      "how_to_run": HOW_TO_RUN,
      "model": {"d_model": cfg.d_model, "n_heads": cfg.n_heads, "d_ff": cfg.d_ff,
                "pos": cfg.pos, "trained_max_len": cfg.max_len},
      "source": source,
  }


def write(directory: str, card: dict) -> str:
  path = os.path.join(directory, CARD_NAME)
  with open(path, "w") as f:
    json.dump(card, f, indent=1, default=float)
  return path
