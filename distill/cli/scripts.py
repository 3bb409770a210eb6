"""Console scripts (pyproject.toml [project.scripts]): `distill` = `python -m distill.main`, etc.

Each runs the CLI module's `run_cli`, as `python -m distill.X` does, so flags, messages and
exit codes are the same either way. A CLI module is imported only for the command that runs:
its absl flags must be defined for that command alone.
"""
from __future__ import annotations

import functools
import importlib


def _run(name: str) -> None:
  importlib.import_module(f"distill.cli.{name}").run_cli()


# pyproject.toml [project.scripts] names these; each is `python -m distill.<name>`.
main = functools.partial(_run, "main")
aot = functools.partial(_run, "aot")
convert = functools.partial(_run, "convert")
export = functools.partial(_run, "export")
generate = functools.partial(_run, "generate")
prune = functools.partial(_run, "prune")
teacher_cache = functools.partial(_run, "teacher_cache")
to_hf = functools.partial(_run, "to_hf")
