"""Export a trained stage to a verified .tflite for an edge preset.

  python -m distill.export --workdir=runs/tiny --preset=watch
  python -m distill.export --workdir=runs/tiny --preset=phone --quant=int8 --stage=student
  python -m distill.export --workdir=runs/tiny --preset=watch --budget_mb=0.1   # BudgetError
  python -m distill.export --workdir=runs/tiny --preset=watch --format=litertlm  # + LiteRT-LM
  python -m distill.export --workdir=runs/tiny --preset=phone --format=gguf --quant=q8_0

Output: <workdir>/export/<preset>[-<quant>]/{student-<quant>.tflite, model_card.json, tokenizer}
and, with --format=litertlm, student.litertlm (the .tflite + tokenizer + metadata in the one
file LiteRT-LM's engine loads; checked in that engine, its figures in the card).
With --format=gguf: <workdir>/export/<preset>-gguf/student-<quant>.gguf for llama.cpp
(--quant f32 | f16 (default) | q8_0 | q4_k_m; distill/export/gguf_writer.py), no .tflite.
Calibration (int8) and verification text come from --data (default: the embedded corpus,
reusing <workdir>/data). Exit code 2 with one line for usage errors, budget overruns included.
"""
import os

from absl import app, flags

from distill import data
from distill.cli import common as cli
from distill.export import default_dirname, resolve
from distill.export import export_stage
from distill.export import gguf_writer
from distill.export.presets import GGUF_QUANTS

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding the stage to export.")
_PRESET = flags.DEFINE_enum("preset", None, ["phone", "watch"], "Edge preset.")
_TFLITE_QUANTS = ["fp32", "fp16", "dynamic_int8", "int8", "int4", "int4_head8"]
_QUANT = flags.DEFINE_string("quant", None, "Quantization mode (default: the preset's): "
                             f"{', '.join(_TFLITE_QUANTS)}; with --format=gguf "
                             f"{', '.join(GGUF_QUANTS)} (default f16).")
_STAGE = flags.DEFINE_string("stage", "student", "Stage subdirectory of --workdir (or a path).")
_OUT = flags.DEFINE_string("out", None, "Output folder (default <workdir>/export/<preset>).")
_CONTEXT = flags.DEFINE_integer("max_context", None, "Override the preset's cache length.")
_PREFILL = flags.DEFINE_integer("prefill_len", None, "Override the preset's prefill length P.")
_BUDGET = flags.DEFINE_float("budget_mb", None, "Override the preset's size budget (10^6 bytes).")
_FORMAT = flags.DEFINE_enum("format", "tflite", ["tflite", "litertlm", "gguf"],
                            "litertlm: also write student.litertlm for LiteRT-LM; gguf: write "
                            "student-<quant>.gguf for llama.cpp instead of a .tflite.")
_START = flags.DEFINE_integer(
    "start_token", None, "The .litertlm's start token id (-1: none). Default: the model's "
    "training convention; any other value is refused (exit 2).")
_VERIFY = flags.DEFINE_enum("verify", "full", ["full", "quick", "none"],
                            "full: prompts of every length 1..2P+1 + 16 windows; quick: the "
                            "prefill boundaries + 4 windows.")
_DATA = flags.DEFINE_string("data", "pydoc_topics", "data.name for calibration/verification text.")
_SEQ_LEN = flags.DEFINE_integer("seq_len", 128, "Validation window length (capped at max_context).")
_THREADS = flags.DEFINE_integer("threads", None, "LiteRT threads for the latency figures.")
_KEEP_SM = flags.DEFINE_bool("keep_saved_model", False, "Keep the intermediate SavedModel.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Full tracebacks.")


def _run():
  if not _WORKDIR.value:
    raise ValueError("--workdir is required, e.g. --workdir=runs/tiny")
  if not _PRESET.value:
    raise ValueError("--preset is required: phone or watch")
  if _START.value is not None and _FORMAT.value != "litertlm":
    raise ValueError("--start_token is a .litertlm setting: add --format=litertlm")
  stage = _STAGE.value if os.path.isabs(_STAGE.value) else os.path.join(_WORKDIR.value, _STAGE.value)
  if _FORMAT.value == "gguf":
    return _gguf(stage)
  if _QUANT.value is not None and _QUANT.value not in _TFLITE_QUANTS:
    raise ValueError(f"--quant={_QUANT.value} is not a TFLite mode; use one of "
                     f"{', '.join(_TFLITE_QUANTS)} (GGUF types need --format=gguf)")
  data_spec = data.DataSpec(name=_DATA.value, data_dir="", tokenizer="byte",
                            seq_len=_SEQ_LEN.value, add_bos=None, max_documents=None,
                            dev_fraction=0.0, columns=(), validation_name="")
  out = _OUT.value
  if out is None:
    p = resolve(_PRESET.value, quant=_QUANT.value)
    out = os.path.join(_WORKDIR.value, "export", default_dirname(p))
  card = export_stage(stage, _PRESET.value, out, quant=_QUANT.value, max_context=_CONTEXT.value,
                      prefill_len=_PREFILL.value, budget_mb=_BUDGET.value, data_spec=data_spec,
                      workdir=_WORKDIR.value, level=_VERIFY.value, num_threads=_THREADS.value,
                      keep_saved_model=_KEEP_SM.value, litertlm=_FORMAT.value == "litertlm",
                      start_token=_START.value)
  print(os.path.join(out, card["model_file"]))
  if "litertlm" in card:
    print(os.path.join(out, card["litertlm"]["file"]))
  return 0


def _gguf(stage: str) -> int:
  quant = _QUANT.value or "f16"
  gguf_writer.check_quant(quant)
  p = resolve(_PRESET.value)
  out = _OUT.value or os.path.join(_WORKDIR.value, "export", f"{p.name}-gguf")
  info = gguf_writer.export_stage(stage, out, quant, context_length=_CONTEXT.value or
                                  p.max_context)
  print(info["file"])
  return 0


def main(argv):
  return cli.run_main(argv, _run, verbose=_VERBOSE.value,
                      arg_hint="flags look like --preset=watch", quiet_level="error")


def run_cli():
  app.run(main, flags_parser=cli.parse_flags)
