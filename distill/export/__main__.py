"""`python -m distill.export`: the CLI in distill/cli/export.py."""
from distill.cli import export

if __name__ == "__main__":
  export.run_cli()
