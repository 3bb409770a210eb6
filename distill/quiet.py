"""A quiet start: no warning or error line on a healthy run. Imports nothing from distill.

Three sources of noise, each fixed where it starts:
- libtpu (installed by requirements-dev.txt for `distill.aot`) probes for a TPU at the first
  JAX call and prints "could not determine TPU accelerator type", "unexpected worker hostname"
  on any machine without one. `set_platform` tells JAX to use the CPU when no accelerator is
  visible, so libtpu is never loaded; a user's JAX_PLATFORMS always wins.
- TensorFlow 2.21 logs "oneDNN custom operations are on" (and, with oneDNN off, a CPU
  feature notice) through absl C++ logging at import, ignoring TF_CPP_MIN_LOG_LEVEL, and the
  TFLite runtime prints "Created TensorFlow Lite XNNPACK delegate" once. `native_stderr`
  runs such a block with the C-level stderr captured and writes back every line except
  those known notices, so a real error from the same block still reaches the user.
- Python-level TF/absl logs: TF_CPP_MIN_LOG_LEVEL for TF's own C++ logger, set before TF loads.
"""
from __future__ import annotations

import contextlib
import glob
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
))


def accelerator_visible() -> bool:
  """True when JAX could find a GPU or TPU here: a PJRT plugin (jax-cuda12/rocm) is installed,
  or a TPU VM's device files exist. Cheap: imports nothing heavy and starts no backend."""
  from importlib.metadata import entry_points  # pylint: disable=import-outside-toplevel
  import importlib.util  # pylint: disable=import-outside-toplevel
  if list(entry_points(group="jax_plugins")) or importlib.util.find_spec("jax_plugins"):
    return True
  return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def set_platform(preset: str | None = None) -> None:
  """Default JAX to the CPU where nothing else could run, before its backends start.

  `preset` is the config's hardware preset: a non-CPU preset names an accelerator, so JAX
  is left to find it. Explicit JAX_PLATFORMS (tests, users) is never changed.
  """
  if "JAX_PLATFORMS" in os.environ or (preset and preset != "cpu") or accelerator_visible():
    return
  os.environ["JAX_PLATFORMS"] = "cpu"
  if "jax" in sys.modules:  # imported (a config file may import distill) but no backend yet
    sys.modules["jax"].config.update("jax_platforms", "cpu")


def quiet_tensorflow() -> None:
  """TF's C++ log level; must be set before TensorFlow's libraries load."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def start(preset: str | None = None) -> None:
  """What every CLI calls before it imports jax's backends or TensorFlow."""
  quiet_tensorflow()
  set_platform(preset)


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
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  return sys.modules["tensorflow"]
