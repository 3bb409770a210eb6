"""`python -m distill.generate`: the CLI in distill/cli/generate.py."""
from distill.cli import generate

if __name__ == "__main__":
  generate.run_cli()
