"""Console scripts (pyproject.toml [project.scripts]): `distill` = `python -m distill.main`, etc.

Each one runs the module's own `main` exactly as its `__main__` block does, so
flags, messages and exit codes are the same either way. Modules are imported inside the
functions: their absl flags must only be defined for the command that runs.
"""
from __future__ import annotations

import importlib
import sys


def _absl(module: str) -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from distill import cli  # pylint: disable=import-outside-toplevel
  app.run(importlib.import_module(module).main, flags_parser=cli.parse_flags)


def main() -> None:
  importlib.import_module("distill.main").run_cli()


def aot() -> None:
  _absl("distill.aot")


def convert() -> None:
  _absl("distill.convert")


def export() -> None:
  _absl("distill.export.__main__")


def generate() -> None:
  _absl("distill.generate")


def prune() -> None:
  importlib.import_module("distill.prune.__main__").run_cli()


def teacher_cache() -> None:
  sys.exit(importlib.import_module("distill.teacher_cache").main())


def to_hf() -> None:
  sys.exit(importlib.import_module("distill.to_hf").main())
