"""`python -m distill.teacher_cache`: the CLI in distill/cli/teacher_cache.py."""
from distill.cli import teacher_cache

if __name__ == "__main__":
  teacher_cache.run_cli()
