"""Shared CLI error handling: one line naming the problem and the fix, and an exit code.

Exit 2 for usage mistakes (bad config, bad flags, bad paths), 1 for runtime failures. Full
tracebacks only with --verbose.
"""
from __future__ import annotations

import sys
import traceback

USAGE_ERRORS = ("ConfigError", "MeshError", "LoadError", "DataError", "BudgetError")


def guarded(fn, *, verbose: bool = False) -> int:
  try:
    return fn() or 0
  except KeyboardInterrupt:
    print("interrupted; re-run the same command to resume", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    if type(e).__name__ == "Preempted":  # SIGTERM with a checkpoint saved: a clean exit
      print(str(e), file=sys.stderr)
      return 0
    if verbose:
      traceback.print_exc()
    usage = type(e).__name__ in USAGE_ERRORS or isinstance(e, (ValueError, FileNotFoundError))
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2 if usage else 1
