"""Runs many `python -m MODULE ARGV` command lines from one warm interpreter, by fork.

Each CLI process spends ~3 s of its life importing JAX, Flax and `distill` before it reads a
flag; a table of 60 bad-input rows paid that 60 times. This server imports the library once
(never a CLI module, whose absl flags must be defined fresh in each child, and without touching
a JAX backend, so forking is safe) and forks one child per command line. The child is the CLI as
`python -m` runs it: its own stdout/stderr files, cwd, environment, `sys.argv`, the module run
as `__main__`, exit handlers, and an uncaught exception printed as a traceback with exit 1.

    python -m tests.cli_runner BATCH.json RESULTS.json

BATCH: {"warm": [modules], "jobs": [{"module", "argv", "cwd", "path": [dirs], "timeout"}],
"workers": N}. RESULTS: [[returncode or "timeout", stdout, stderr], ...] in job order. The
server's own environment (JAX_PLATFORMS, XLA_FLAGS) is every child's.
"""
import atexit
import importlib
import json
import os
import runpy
import shutil
import signal
import sys
import tempfile
import time
import traceback


def _child(job, out_path, err_path):
  code = 1
  try:
    for fd, path in ((1, out_path), (2, err_path)):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(job["cwd"])
    sys.path[1:1] = job.get("path", [])
    sys.argv = [job["module"], *job["argv"]]
    try:
      runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
      code = 0
    except SystemExit as e:  # what the interpreter does with sys.exit(...)
      if e.code is None or isinstance(e.code, int):
        code = e.code or 0
      else:
        print(e.code, file=sys.stderr)
    except BaseException:  # pylint: disable=broad-except
      traceback.print_exc()
    atexit._run_exitfuncs()  # pylint: disable=protected-access
  finally:
    try:
      sys.stdout.flush()
      sys.stderr.flush()
    finally:
      os._exit(code)


def run_batch(batch):
  for name in batch.get("warm", []):
    importlib.import_module(name)
  jobs, workers = batch["jobs"], batch.get("workers", 2)
  # mkdtemp, not TemporaryDirectory: its finalizer is an atexit hook, and each child runs the
  # atexit hooks it inherited, which would delete the directory under its siblings.
  tmp = tempfile.mkdtemp(prefix="cli_runner_")
  try:
    return _run_jobs(jobs, workers, tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _run_jobs(jobs, workers, tmp):
  files = [(os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err"))
           for i in range(len(jobs))]
  codes, running, todo = [None] * len(jobs), {}, list(range(len(jobs)))
  while todo or running:
    while todo and len(running) < workers:
      i = todo.pop(0)
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(jobs[i], *files[i])
      running[pid] = (i, time.monotonic())
    pid, status = os.waitpid(-1, os.WNOHANG)
    if pid:
      codes[running.pop(pid)[0]] = os.waitstatus_to_exitcode(status)
      continue
    for pid, (i, start) in list(running.items()):
      if time.monotonic() - start > jobs[i].get("timeout", 180):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        codes[running.pop(pid)[0]] = "timeout"
    time.sleep(0.01)
  out = []
  for code, (o, e) in zip(codes, files):
    with open(o, encoding="utf-8", errors="replace") as fo, \
         open(e, encoding="utf-8", errors="replace") as fe:
      out.append([code, fo.read(), fe.read()])
  return out


if __name__ == "__main__":
  with open(sys.argv[1], encoding="utf-8") as f:
    results = run_batch(json.load(f))
  with open(sys.argv[2], "w", encoding="utf-8") as f:
    json.dump(results, f)
