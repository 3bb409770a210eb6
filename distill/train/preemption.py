"""SIGTERM as a flag checked at step boundaries, agreed on by every process of a run.

A preemption notice (SIGTERM) reaches one VM of a multi-host slice, or all of them at slightly
different steps. Each process raises its own flag in the signal handler; at every step
boundary `StopFlag.agreed()` all-gathers the flags, so every process sees "stop" at the same
step, saves the same checkpoint (orbax saves are collective) and exits 0. With one process
there is nothing to agree on and no collective runs.

Hand-written rather than jax's preemption service
(`jax.experimental.multihost_utils.reached_preemption_sync_point`, which orbax's
CheckpointManager also uses): that service lives in `jax.distributed`'s coordination client,
so a single-process run (no `jax.distributed.initialize`) always gets False and would never
stop on SIGTERM (tests/test_robustness.py); and it picks the save step itself, asynchronously,
as one past the largest step any process had reached when the notice propagated, so the step
a run stops at depends on timing, where tests/test_multihost.py's 2-process gloo run expects
the step during which the signal arrived (3) on both processes. One all-gather of a bool per
step boundary gives both.
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np


class StopFlag:
  """Turns SIGTERM into a flag (signal handlers live on the main thread only)."""

  def __init__(self):
    self.raised = False
    self._old = None
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def agreed(self) -> bool:
    """True on every process once any process has been signalled (a collective per call
    when there are several processes: call it at the same step boundaries everywhere)."""
    if jax.process_count() == 1:
      return self.raised
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    flags = multihost_utils.process_allgather(np.asarray([self.raised], np.int32))
    return bool(np.asarray(flags).any())

  def restore(self):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)
      self._old = None
