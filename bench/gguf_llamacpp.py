"""llama.cpp tokens/s of the exported GGUF student per quant type, on this CPU; one JSON line.

  python bench/gguf_llamacpp.py [--workdir=runs/tiny] [--preset=phone] [--threads=2]

Uses `<workdir>/export/<preset>-gguf/student-<quant>.gguf`, exporting the ones that are missing
(`python -m distill.export --format=gguf`), and runs each in llama.cpp through
llama-cpp-python (requirements-llamacpp.txt): prefill tokens/s for one --prompt_len batch of
held-out text and decode tokens/s over --new_tokens single-token steps, best of 3; and, on
4 held-out windows of 128 tokens (distill/data/heldout_docs.md), the top-1 agreement with the
JAX fp32 student and max |Δ logits| / logits range. The LiteRT figures of the preset's .tflite
(its model card, measured when it was exported) are printed next to them when present.
"""
import json
import os
import platform
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "Run directory with student/.")
_PRESET = flags.DEFINE_enum("preset", "phone", ["phone", "watch"], "Export preset folder.")
_QUANTS = flags.DEFINE_list("quants", ["f32", "f16", "q8_0", "q4_k_m"], "GGUF quant types.")
_THREADS = flags.DEFINE_integer("threads", 2, "llama.cpp threads.")
_PROMPT = flags.DEFINE_integer("prompt_len", 128, "Prefill length (tokens).")
_NEW = flags.DEFINE_integer("new_tokens", 64, "Decode steps.")


def _cpu() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    return next(l.split(":", 1)[1].strip() for l in out.splitlines()
                if l.startswith("Model name"))
  except (OSError, subprocess.CalledProcessError, StopIteration):
    return platform.processor() or "unknown"


def main(argv):
  del argv
  import numpy as np  # pylint: disable=import-outside-toplevel
  import distill  # pylint: disable=import-outside-toplevel
  from distill.export import gguf_runtime, gguf_writer, presets  # pylint: disable=import-outside-toplevel
  llama_cpp = gguf_runtime.llama_cpp_module()
  stage_dir = os.path.join(_WORKDIR.value, "student")
  out_dir = os.path.join(_WORKDIR.value, "export", f"{_PRESET.value}-gguf")
  preset = presets.resolve(_PRESET.value)
  m = distill.load(stage_dir)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "distill", "data", "heldout_docs.md")) as f:
    ids = m.tokenizer.encode(f.read())
  starts = np.linspace(0, len(ids) - 129, 4).astype(int)
  windows = np.stack([ids[s:s + 128] for s in starts]).astype(np.int32)
  ref = m.logits(windows)
  prompt = ids[:_PROMPT.value]
  result = {"bench": "gguf_llamacpp", "cpu": _cpu(), "threads": _THREADS.value,
            "llama_cpp_python": llama_cpp.__version__, "workdir": _WORKDIR.value,
            "preset": _PRESET.value, "quants": {}}
  for quant in _QUANTS.value:
    path = os.path.join(out_dir, gguf_writer.file_name(quant))
    if not os.path.exists(path):
      gguf_writer.export_stage(stage_dir, out_dir, quant, context_length=preset.max_context)
    fast = gguf_runtime.LlamaCpp(path, n_ctx=_PROMPT.value + _NEW.value + 1,
                                 threads=_THREADS.value, logits_all=False)
    row = {"bytes": os.path.getsize(path), **fast.speed(prompt, _NEW.value)}
    del fast
    full = gguf_runtime.LlamaCpp(path, n_ctx=128, threads=_THREADS.value)
    figs = [gguf_runtime.compare(r, full.logits(w)) for r, w in zip(ref, windows)]
    row.update(top1_agreement=round(float(np.mean([f["top1_agreement"] for f in figs])), 4),
               max_abs_diff_over_range=float(max(f["relative"] for f in figs)))
    result["quants"][quant] = row
  card = os.path.join(_WORKDIR.value, "export", _PRESET.value, "model_card.json")
  if os.path.exists(card):
    with open(card) as f:
      c = json.load(f)
    result["litert"] = {"file": c.get("model_file"), "bytes": c.get("bytes"),
                        **{k: c["latency"].get(k) for k in ("prefill_tokens_per_s",
                                                            "decode_tokens_per_s",
                                                            "num_threads")}}
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
