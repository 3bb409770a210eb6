"""A workdir lock: one run per workdir; a stale lock from a killed run is taken over.

Two files in the workdir while a run holds it:

  .lock        {"pid": ..., "host": ...} of the holder: what a refused run names, what a user
               reads, and what tells a killed run's lock (dead pid on this host) from a live one.
  .lock.flock  an OS lock (flock, through `filelock.FileLock`) held for the whole run: the
               kernel drops it when the holder dies, so checking and claiming `.lock` is atomic
               between runs started at once, and a crashed run can never keep the workdir.

A `.lock` whose holder is alive on this host refuses the run even when nobody holds the
flock (a holder that does not use it); one from another host is never taken over (its pid
cannot be checked from here). A clean exit removes both files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket

import filelock


class LockError(RuntimeError):
  """Another live run holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _holder(path: str) -> dict:
  """The recorded holder of `.lock`; {} when there is none or it is empty or garbled."""
  try:
    with open(path) as f:
      holder = json.load(f)
  except (OSError, json.JSONDecodeError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _in_use(workdir: str, pid) -> LockError:
  return LockError(f"workdir {workdir} is in use by process {pid}; wait for it, "
                   "or use another --workdir")


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True):
  if not enabled:
    yield
    return
  path = os.path.join(workdir, ".lock")
  me = {"pid": os.getpid(), "host": socket.gethostname()}
  guard = filelock.FileLock(path + ".flock", timeout=0)
  try:
    guard.acquire()
  except filelock.Timeout:
    # A live process on this host holds the flock; `.lock` says which (it may still be
    # writing it).
    raise _in_use(workdir, _holder(path).get("pid", "(starting)")) from None
  try:
    holder = _holder(path)
    same_host = holder.get("host") == me["host"]
    if same_host and isinstance(holder.get("pid"), int) and _alive(holder["pid"]):
      raise _in_use(workdir, holder["pid"])
    if holder and not same_host:
      raise LockError(f"workdir {workdir} is locked by {holder.get('host')} pid "
                      f"{holder.get('pid')}; if that run is dead, delete {path}")
    if os.path.exists(path):
      logging.warning("taking over stale lock %s left by a killed run (%s)", path, holder)
    with open(path, "w") as f:
      json.dump(me, f)
  except BaseException:
    _release(guard)  # a refused run leaves the other run's `.lock` as it found it
    raise
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.remove(path)
    _release(guard)


def _release(guard: filelock.FileLock) -> None:
  """Drop the flock, then its file, so a finished run leaves the workdir as it found it.

  Unlinking a flock file has one known gap: a run that opened it in the instant between the
  unlock and the unlink locks a file no later run opens. That run still reads `.lock` before
  claiming anything, so it takes the workdir only if `.lock` is gone too (a clean exit).
  """
  guard.release()
  with contextlib.suppress(OSError):
    os.remove(guard.lock_file)
