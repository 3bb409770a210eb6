"""`python -m distill.convert --gguf=MODEL.gguf --out=DIR`: a GGUF file as a Hugging Face
directory (`distill.export.gguf_to_hf`)."""
from absl import app, flags

from distill.cli import common
from distill.export import gguf_to_hf

_GGUF = flags.DEFINE_string("gguf", None, "The .gguf file to convert.")
_OUT = flags.DEFINE_string("out", None, "Output directory (must not exist).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                           "dtype of the written weights.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Full tracebacks.")

def _run():
  if not _GGUF.value or not _OUT.value:
    raise ValueError("give --gguf=MODEL.gguf and --out=DIR")
  out = gguf_to_hf.convert(_GGUF.value, _OUT.value, _DTYPE.value)
  print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained or "
        f"distill.load('hf:{out}'))")
  return 0


def main(argv):
  return common.run_main(argv, _run, verbose=_VERBOSE.value,
                      arg_hint="use --gguf=MODEL.gguf --out=DIR")


def run_cli():
  app.run(main, flags_parser=common.parse_flags)
