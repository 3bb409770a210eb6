"""`python -m distill.main`: the CLI in distill/cli/main.py."""
from distill.cli import main

if __name__ == "__main__":
  main.run_cli()
