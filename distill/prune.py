"""`python -m distill.prune`: the CLI in distill/cli/prune.py."""
from distill.cli import prune

if __name__ == "__main__":
  prune.run_cli()
