"""Console scripts (pyproject.toml [project.scripts]): `distill` = `python -m distill.main`, etc.

Each runs the CLI module's `run_cli`, as `python -m distill.X` does, so flags, messages and
exit codes are the same either way. A CLI module is imported only for the command that runs:
its absl flags must be defined for that command alone.
"""
from __future__ import annotations

import importlib


def _run(name: str) -> None:
  importlib.import_module(f"distill.cli.{name}").run_cli()


def main() -> None:
  _run("main")


def aot() -> None:
  _run("aot")


def convert() -> None:
  _run("convert")


def export() -> None:
  _run("export")


def generate() -> None:
  _run("generate")


def prune() -> None:
  _run("prune")


def teacher_cache() -> None:
  _run("teacher_cache")


def to_hf() -> None:
  _run("to_hf")
