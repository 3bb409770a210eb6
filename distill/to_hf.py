"""`python -m distill.to_hf`: the CLI in distill/cli/to_hf.py."""
from distill.cli import to_hf

if __name__ == "__main__":
  to_hf.run_cli()
