"""Never lose a run: SIGKILL, SIGTERM, NaN, a corrupt checkpoint and the workdir lock.

The kill tests drive the real CLI (`python -m distill.main`) in a subprocess on a shrunken
tiny config and compare the final teacher and student parameters bit for bit with an
uninterrupted run. Every subprocess shares one TFDS/data directory and the session's persistent
XLA compilation cache (tests/conftest.py), so only the first run pays for the dataset build and
the compiles.
"""
import functools
import glob
import logging
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from distill.run import settings
from distill import data
from distill.run import lock
from tests.helpers import shrunken_config
from tests.test_resume import Interrupt, run_stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
CKPT_EVERY = 3

# configs/tiny.py shrunk on the command line the way a user would (same shapes as
# tests.helpers.shrunken_config), 12 steps per stage, a checkpoint every 3.
SMALL = [
    "--config.data.seq_len=32", "--config.data.batch_size=8", "--config.data.eval_batches=1",
    "--config.teacher.model.d_model=32", "--config.teacher.model.n_layers=2",
    "--config.teacher.model.n_heads=4", "--config.teacher.model.n_kv_heads=2",
    "--config.teacher.model.d_ff=64",
    "--config.student.model.d_model=16", "--config.student.model.n_layers=1",
    "--config.student.model.n_heads=2", "--config.student.model.n_kv_heads=1",
    "--config.student.model.d_ff=32",
    f"--config.teacher.pretrain.steps={STEPS}", f"--config.distill.steps={STEPS}",
    f"--config.checkpoint_every={CKPT_EVERY}", "--config.log_every=1",
    "--config.export.enabled=False", "--config.baseline.enabled=False",
    "--config.eval.prompts=('The',)", "--config.eval.sample_tokens=2",
    # Training, checkpoints and the lock are under test, not evaluation: no sampled-continuation
    # metrics (32 prompts x 96 tokens per model by default) and no held-out text.
    "--config.eval.sample_prompts=0", "--config.eval.heldout=",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
  """Data dir and environment shared by every subprocess of this module."""
  root = tmp_path_factory.mktemp("robust_shared")
  env = dict(os.environ)
  env.update({
      "JAX_PLATFORMS": "cpu",
      # Two fake devices: the sharded code path, at a fraction of the cost of eight.
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
      "TF_CPP_MIN_LOG_LEVEL": "3",
      "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", ""),
  })
  return {"env": env, "data_dir": str(root / "data"), "root": root}


def _argv(shared, workdir, *extra, script=None):
  head = [sys.executable, script] if script else [sys.executable, "-m", "distill.main"]
  return head + ["--config=configs/tiny.py", f"--workdir={workdir}",
                 f"--config.data.data_dir={shared['data_dir']}", *SMALL, *extra]


def _start(shared, workdir, *extra, script=None, log=None):
  log = log or f"{workdir}.{time.monotonic_ns()}.log"
  f = open(log, "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen(_argv(shared, workdir, *extra, script=script), cwd=REPO,
                          env=shared["env"], stdout=f, stderr=subprocess.STDOUT)
  proc.log_path, proc.log_file = log, f
  return proc


def _finish(proc, timeout=240):
  try:
    proc.wait(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    proc.log_file.close()
  with open(proc.log_path) as f:
    return proc.returncode, f.read()


def _run(shared, workdir, *extra, script=None, timeout=240):
  return _finish(_start(shared, workdir, *extra, script=script), timeout)


def _wait_until(proc, pred, what, timeout=180, poll=0.01):
  t0 = time.time()
  while not pred():
    if proc.poll() is not None:
      _, out = _finish(proc)
      pytest.fail(f"run ended (rc {proc.returncode}) before {what}:\n{out[-3000:]}")
    if time.time() - t0 > timeout:
      proc.kill()
      _finish(proc)
      pytest.fail(f"timed out waiting for {what}")
    time.sleep(poll)


def _ckpt(workdir, stage, step):
  """True once `<stage>/checkpoints/<step>` is a finished (renamed into place) checkpoint."""
  return lambda: os.path.isdir(os.path.join(workdir, stage, "checkpoints", str(step)))


def _saving(workdir, stage):
  """True while orbax is writing a checkpoint of `stage` (its temporary directory exists)."""
  return lambda: bool(glob.glob(os.path.join(workdir, stage, "checkpoints", "*tmp*")))


def _params(stage_dir):
  with ocp.StandardCheckpointer() as c:
    return c.restore(os.path.join(os.path.abspath(stage_dir), "params"))


def _assert_bitwise(workdir, ref_workdir):
  for stage in ("teacher", "student"):
    got, want = _params(os.path.join(workdir, stage)), _params(os.path.join(ref_workdir, stage))
    assert jax.tree.structure(got) == jax.tree.structure(want), stage
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      a, b = np.asarray(a), np.asarray(b)
      assert a.dtype == b.dtype and a.shape == b.shape, stage
      # Bitwise, not approximately: a resumed run must be the run that was interrupted.
      assert a.tobytes() == b.tobytes(), f"{stage} parameters differ from the uninterrupted run"


@pytest.fixture(scope="module")
def reference(shared):
  """An uninterrupted run: the bitwise reference for every interrupted one."""
  workdir = str(shared["root"] / "reference")
  rc, out = _run(shared, workdir)
  assert rc == 0, out[-3000:]
  return workdir


# ---------------------------------------------------------------------------------------------
# SIGKILL at three points; each time the same command is re-run to completion.

KILL_POINTS = {
    # Mid-distillation, right after the step-3 checkpoint landed: resume from 3.
    "distill_after_save": lambda w: _ckpt(w, "student", 3),
    # Teacher pretraining, while orbax writes a checkpoint (its tmp dir exists) when the poll
    # catches it, else just after checkpoint 6: a half-written checkpoint must not matter.
    "teacher_during_save": lambda w: (lambda: _saving(w, "teacher")() or _ckpt(w, "teacher", 6)()),
    # Between stages: the teacher is finished and the student has not saved anything yet.
    "between_stages": lambda w: (lambda: os.path.exists(os.path.join(w, "teacher", "stage.json"))),
}


@pytest.mark.parametrize("point", [
    "distill_after_save",
    pytest.param("teacher_during_save", marks=pytest.mark.slow),
    pytest.param("between_stages", marks=pytest.mark.slow),
])
def test_sigkill_then_rerun_is_bitwise_identical(shared, reference, tmp_path, point):
  workdir = str(tmp_path / "run")
  proc = _start(shared, workdir)
  _wait_until(proc, KILL_POINTS[point](workdir), point)
  proc.send_signal(signal.SIGKILL)
  rc, _ = _finish(proc)
  assert rc == -signal.SIGKILL
  # The killed run left its lock behind; the rerun must take it over, not refuse.
  assert os.path.exists(os.path.join(workdir, ".lock"))
  rc, out = _run(shared, workdir)
  assert rc == 0, out[-3000:]
  assert "taking over stale lock" in out
  assert not os.path.exists(os.path.join(workdir, ".lock"))
  _assert_bitwise(workdir, reference)


# ---------------------------------------------------------------------------------------------
# SIGTERM: checkpoint at the next step boundary, one message, exit 0; the rerun finishes.
# The same test checks the lock: a second run on the busy workdir refuses with one line.


def test_sigterm_saves_exits_zero_and_rerun_finishes(shared, reference, tmp_path):
  workdir = str(tmp_path / "run")
  proc = _start(shared, workdir)
  lock_file = os.path.join(workdir, ".lock")
  _wait_until(proc, lambda: os.path.exists(lock_file), "the workdir lock")

  rc2, out2 = _run(shared, workdir)
  assert rc2 == 1, out2[-2000:]
  errors = [l for l in out2.splitlines() if l.startswith("error:")]
  assert errors == [f"error: workdir {workdir} is in use by process {proc.pid}; wait for it, "
                    "or use another --workdir"], out2[-2000:]
  assert "Traceback" not in out2

  _wait_until(proc, _ckpt(workdir, "student", 3), "student checkpoint 3")
  proc.send_signal(signal.SIGTERM)
  rc, out = _finish(proc)
  assert rc == 0, out[-3000:]
  msgs = [l for l in out.splitlines() if "preempted" in l]
  assert len(msgs) == 1 and msgs[0].startswith("[student] preempted: checkpoint saved at step ")
  assert "re-run the same command to resume" in msgs[0]
  saved = int(msgs[0].split("at step ")[1].split()[0])
  assert 3 <= saved < STEPS
  assert os.path.isdir(os.path.join(workdir, "student", "checkpoints", str(saved)))
  assert not os.path.exists(lock_file)  # a clean exit releases the lock
  assert "Traceback" not in out

  rc, out = _run(shared, workdir)
  assert rc == 0, out[-3000:]
  assert "taking over stale lock" not in out
  assert os.path.exists(os.path.join(workdir, "report.json"))
  _assert_bitwise(workdir, reference)


# ---------------------------------------------------------------------------------------------
# Non-finite loss: one line naming stage and step, exit 1, last good checkpoint kept; with
# --config.train.skip_nonfinite=True the same bad step is skipped and the run finishes.

NAN_STEP = 5  # the step (1-based, as logged) whose loss is poisoned

_NAN_SCRIPT = f'''
"""distill.main with the student's loss replaced by NaN at step {NAN_STEP}."""
import jax.numpy as jnp
from distill.cli import main
from distill.train import objectives
from distill.train import step

_orig = step.train_step


def _poisoned_step(state, batch, rng, teacher_params, *, loss_fn, **kw):
  if getattr(loss_fn, "func", None) is not objectives.distill_loss:
    return _orig(state, batch, rng, teacher_params, loss_fn=loss_fn, **kw)

  def poisoned(*args, **kwargs):
    loss, metrics = loss_fn(*args, **kwargs)
    loss = jnp.where(state.step == {NAN_STEP - 1}, jnp.nan, loss)
    return loss, dict(metrics, loss=loss)
  return _orig(state, batch, rng, teacher_params, loss_fn=poisoned, **kw)


step.train_step = _poisoned_step  # make_step (train.run's builder) reads it at build time
main.run_cli()
'''


def test_nonfinite_loss_stops_with_one_line_then_skip_finishes(shared, tmp_path):
  script = tmp_path / "nan_main.py"
  script.write_text(_NAN_SCRIPT)
  workdir = str(tmp_path / "run")
  rc, out = _run(shared, workdir, script=str(script))
  assert rc == 1, out[-3000:]
  errors = [l for l in out.splitlines() if l.startswith("error:")]
  assert len(errors) == 1, out[-3000:]
  assert errors[0].startswith(f"error: [student] non-finite loss or gradient at step {NAN_STEP}")
  assert "last good checkpoint is kept" in errors[0]
  assert "Traceback" not in out
  ckpts = os.path.join(workdir, "student", "checkpoints")
  steps = sorted(int(d) for d in os.listdir(ckpts) if d.isdigit())
  assert steps and max(steps) < NAN_STEP, steps  # nothing saved from the poisoned state on
  assert not os.path.exists(os.path.join(workdir, "student", "stage.json"))
  assert os.path.exists(os.path.join(workdir, "teacher", "stage.json"))  # earlier stage kept

  rc, out = _run(shared, workdir, "--config.train.skip_nonfinite=True", script=str(script))
  assert rc == 0, out[-3000:]
  assert f"step {NAN_STEP}: non-finite loss or gradient, batch skipped" in out
  assert "error:" not in out
  assert os.path.exists(os.path.join(workdir, "student", "stage.json"))
  params = _params(os.path.join(workdir, "student"))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


# ---------------------------------------------------------------------------------------------
# A truncated newest checkpoint: fall back to the previous one with a warning (in-process,
# on one training stage, like tests/test_resume.py).


_Interrupt, _stage = Interrupt, run_stage  # shared with tests/test_resume.py


def _truncate_tree(directory):
  n = 0
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      size = os.path.getsize(path)
      with open(path, "r+b") as f:
        f.truncate(size // 2)
      n += 1
  return n


def test_truncated_latest_checkpoint_falls_back_to_previous(shared, tmp_path, caplog):
  workdir = str(tmp_path)
  stage = functools.partial(_stage, data_dir=shared["data_dir"])
  data.prepare(settings.data_spec(shrunken_config(**{"data.data_dir": shared["data_dir"]}).data), workdir)
  ref = stage(workdir, str(tmp_path / "ref"))
  with pytest.raises(_Interrupt):
    stage(workdir, str(tmp_path / "cut"), kill_after=5)  # checkpoints at 2 and 4
  ckpts = tmp_path / "cut" / "checkpoints"
  assert sorted(int(d) for d in os.listdir(ckpts) if d.isdigit()) == [2, 4]
  assert _truncate_tree(ckpts / "4") > 0
  with caplog.at_level(logging.WARNING):
    resumed = stage(workdir, str(tmp_path / "cut"))
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any("checkpoint at step 4" in w and "trying the previous one" in w for w in warnings)
  assert resumed.resumed_from == 2
  # Moved aside (kept for a post-mortem), so the resumed run could write step 4 again.
  assert (ckpts / "unreadable-4").is_dir() and (ckpts / "4").is_dir()
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
               resumed.params, ref.params)


# ---------------------------------------------------------------------------------------------
# The workdir lock on its own.


def _dead_pid():
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
  workdir = str(tmp_path)
  path = os.path.join(workdir, ".lock")
  host = socket.gethostname()
  with open(path, "w") as f:
    f.write(f'{{"pid": {os.getpid()}, "host": "{host}"}}')
  with pytest.raises(lock.LockError, match=f"in use by process {os.getpid()}"):
    with lock.workdir_lock(workdir):
      pass
  assert os.path.exists(path)  # a refused run never deletes someone else's lock

  with open(path, "w") as f:
    f.write(f'{{"pid": {_dead_pid()}, "host": "{host}"}}')
  with lock.workdir_lock(workdir):
    with open(path) as f:
      assert f'"pid": {os.getpid()}' in f.read()
  assert not os.path.exists(path)


def test_lock_takes_over_an_empty_or_garbled_lock_file(tmp_path):
  # A kill between creating the lock file and writing it leaves it empty.
  path = tmp_path / ".lock"
  for junk in ("", "{not json"):
    path.write_text(junk)
    with lock.workdir_lock(str(tmp_path)):
      assert str(os.getpid()) in path.read_text()
    assert not path.exists()


def test_lock_from_another_host_is_not_taken_over(tmp_path):
  path = tmp_path / ".lock"
  path.write_text('{"pid": 1, "host": "some-other-host"}')
  with pytest.raises(lock.LockError, match="delete"):
    with lock.workdir_lock(str(tmp_path)):
      pass
  assert path.exists()
