"""`python -m distill.to_hf --workdir=W --out=DIR`: a finished stage as a Hugging Face
checkpoint (`distill.export.hf`)."""
import argparse
import sys

from distill.cli import quiet
from distill.errors import LoadError
from distill.export import hf

def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m distill.to_hf", description=hf.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="the run's workdir")
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--stage", default="student", help="stage to write (student, baseline…)")
  args = parser.parse_args(argv)
  quiet.start()  # before jax starts a backend (no libtpu probe on a CPU machine)
  try:
    out = hf.export_stage(args.workdir, args.out, args.stage)
  except (LoadError, hf.ExportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {out} (load with transformers.AutoModelForCausalLM.from_pretrained)")
  return 0


def run_cli():
  sys.exit(main())
