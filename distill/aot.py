"""`python -m distill.aot`: the CLI in distill/cli/aot.py."""
from distill.cli import aot

if __name__ == "__main__":
  aot.run_cli()
