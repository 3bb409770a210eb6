"""A quiet start: no warning or error line on a healthy run.

Three sources of noise, each fixed where it starts:
- libtpu (installed by requirements-dev.txt for `distill.aot`) probes for a TPU at the first
  JAX call and prints "could not determine TPU accelerator type", "unexpected worker hostname"
  on any machine without one. `set_platform` tells JAX to use the CPU when no accelerator is
  visible, so libtpu is never loaded; a user's JAX_PLATFORMS always wins.
- TensorFlow's and TFLite's start-up notices: `distill.export.tf` (TF_CPP_MIN_LOG_LEVEL set
  here, before TensorFlow loads; its C-level notices filtered where TensorFlow is imported).
"""
from __future__ import annotations

import glob
import os
import sys


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


def start(preset: str | None = None) -> None:
  """What every CLI calls before it imports jax's backends or TensorFlow."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF's C++ log level, before TF loads
  set_platform(preset)
