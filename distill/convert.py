"""`python -m distill.convert`: the CLI in distill/cli/convert.py."""
from distill.cli import convert

if __name__ == "__main__":
  convert.run_cli()
