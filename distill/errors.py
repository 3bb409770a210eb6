"""The error types every CLI maps to an exit code; imports nothing else from distill.

Kept apart so `distill.cli` can catch by type without importing jax, TensorFlow or the
modules that raise them (and so a config file can raise `MissingDependencyError` cheaply).
The raising modules re-export their own names (`distill.config.ConfigError`, ...), so old
imports keep working.

Exit codes (`distill.cli.guarded`): `UsageError` (and any ValueError / FileNotFoundError) -> 2,
`Preempted` -> 0 (a checkpoint was saved), `GateError` -> 1 (the file and the report are
written), everything else -> 1.
"""
from __future__ import annotations


class UsageError(ValueError):
  """Something the user gave is wrong (config, flag, path); the message names it and the fix."""


class ConfigError(UsageError):
  """A config mistake; the message is one line naming the problem and the fix."""


class MissingDependencyError(ConfigError):
  """A config needs an optional package that is not installed; the message names the
  install command. Raised while a config file loads (e.g. configs/smollm2_135m.py)."""


class MeshError(UsageError):
  """A mesh shape that does not fit the devices."""


class LoadError(UsageError):
  """A path that is not a loadable model; the message says what is wrong and the fix."""


class BudgetError(UsageError):
  """The exported file does not fit the preset's size budget (a usage error: exit code 2)."""


class GateError(RuntimeError):
  """An exported file failed its verification gate. Raised after the file, its model card
  (marked failed, with the figures) and the report are written, so the run's results are on
  disk; exit 1. `report`, when set, is the pipeline's report dict (the CLI prints its table)."""

  def __init__(self, message: str, report: dict | None = None):
    super().__init__(message)
    self.report = report


class NonFiniteError(RuntimeError):
  """A non-finite loss or gradient with skip_nonfinite off; the last good checkpoint is kept."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was saved at the step boundary. Exit 0, resume later."""
