"""TensorFlow and TFLite without their start-up notices. Imports nothing from distill.

TensorFlow 2.21 logs "oneDNN custom operations are on" (and, with oneDNN off, a CPU feature
notice) through absl C++ logging at import, ignoring TF_CPP_MIN_LOG_LEVEL, and the TFLite
runtime prints "Created TensorFlow Lite XNNPACK delegate" once; the TFLite converter warns
"Ignored output_format." and "Ignored drop_control_dependency." on every conversion (options
its own Python wrapper sets). `native_stderr` runs such a
block with the C-level stderr captured and writes back every line except those known
notices, so a real error from the same block still reaches the user. TF_CPP_MIN_LOG_LEVEL
quiets TF's own C++ logger when set before TF loads.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import tempfile

# Informational notices native libraries print on every healthy start; nothing to act on.
HARMLESS = tuple(re.compile(p) for p in (
    r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"\] oneDNN custom operations are on\.",
    r"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized",
    r"^To enable the following instructions: .* rebuild TensorFlow",
    r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.",
    # The TFLite converter (TF 2.21) warns through absl C++ logging, whatever
    # TF_CPP_MIN_LOG_LEVEL says, that two legacy options of its own Python wrapper are unused.
    r"tf_tfl_flatbuffer_helpers\.cc:\d+\] Ignored (output_format|drop_control_dependency)\.",
))


def quiet_tensorflow() -> None:
  """TF's C++ log level; must be set before TensorFlow's libraries load."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def native_stderr():
  """Run the block with file descriptor 2 captured; replay it without the HARMLESS lines.

  For native code (absl C++ logging, TFLite) that Python's logging cannot reach. Keep the
  block short: its stderr appears when it ends, not while it runs.
  """
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError):  # no real fd 2 (an embedding host): nothing to filter
    yield
    return
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      try:
        sys.stderr.flush()
      except (OSError, ValueError):
        pass
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      kept = [line for line in tmp.read().decode("utf-8", "replace").splitlines(keepends=True)
              if not any(p.search(line) for p in HARMLESS)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def import_tensorflow():
  """`import tensorflow` without its start-up notices (see module docstring)."""
  if "tensorflow" not in sys.modules:
    quiet_tensorflow()
    with native_stderr():
      return importlib.import_module("tensorflow")
  return sys.modules["tensorflow"]
