"""A workdir lock: one run per workdir; a stale lock from a killed run is taken over."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket


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


@contextlib.contextmanager
def workdir_lock(workdir: str, enabled: bool = True):
  if not enabled:
    yield
    return
  path = os.path.join(workdir, ".lock")
  me = {"pid": os.getpid(), "host": socket.gethostname()}
  for _ in range(2):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      try:
        with open(path) as f:
          holder = json.load(f)
      except (OSError, json.JSONDecodeError):
        holder = {}
      same_host = holder.get("host") == me["host"]
      if same_host and isinstance(holder.get("pid"), int) and _alive(holder["pid"]):
        raise LockError(f"workdir {workdir} is in use by process {holder['pid']}; wait for it, "
                        "or use another --workdir") from None
      if holder and not same_host:
        raise LockError(f"workdir {workdir} is locked by {holder.get('host')} pid "
                        f"{holder.get('pid')}; if that run is dead, delete {path}") from None
      logging.warning("taking over stale lock %s left by a killed run (%s)", path, holder)
      os.remove(path)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      os.remove(path)
