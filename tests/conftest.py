"""Test setup: 8 fake CPU devices so sharded code paths run on one host."""
import os

# Must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent XLA compilation cache for the session, this process and every CLI, notebook
# kernel and worker it starts (they inherit the environment): most of a tiny:small pipeline's
# minute is compiling programs that other tests compile again (measured: 73 s cold, 32 s warm).
# A fresh directory per session, so the suite's time is what a clean CI checkout sees.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402
  _CACHE = tempfile.mkdtemp(prefix="distill-tests-xla-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update({"JAX_COMPILATION_CACHE_DIR": _CACHE,
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                     "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
# The precision policy's per-machine probe cache (distill/run/precision.py) likewise lives in
# a fresh directory per session, shared by the subprocesses: tests never write ~/.cache.
if "DISTILL_CACHE_DIR" not in os.environ:
  import atexit  # noqa: E402
  import shutil  # noqa: E402
  import tempfile  # noqa: E402
  _DISTILL_CACHE = tempfile.mkdtemp(prefix="distill-tests-cache-")
  atexit.register(shutil.rmtree, _DISTILL_CACHE, ignore_errors=True)
  os.environ["DISTILL_CACHE_DIR"] = _DISTILL_CACHE

# Property tests draw the same examples on every run, so CI cannot fail on a draw nobody can
# reproduce; `HYPOTHESIS_PROFILE=explore` draws new ones (what to run when changing a loss).
from hypothesis import settings  # noqa: E402
import pytest  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: long-running test (deselect with -m 'not slow')")


class SmallRun:
  """A finished `tiny:small` run (see the `small_run` fixture); read it, never write to it."""

  def __init__(self, root, overrides, report):
    self.workdir = str(root / "run")
    self.data_dir = overrides["data.data_dir"]
    self.teacher = os.path.join(self.workdir, "teacher")
    self.overrides = dict(overrides)
    self.report = report

  def config(self, **more):
    """The run's own config (tests.helpers.shrunken_config + its overrides), plus `more`."""
    from tests.helpers import shrunken_config  # pylint: disable=import-outside-toplevel
    return shrunken_config(**{**self.overrides, **more})

  def copy(self, dest) -> str:
    """A private copy of the workdir, for a test that writes to it (a rerun, a guarded tree)."""
    import shutil  # pylint: disable=import-outside-toplevel
    return shutil.copytree(self.workdir, str(dest))


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
  """ONE finished pipeline of configs/tiny.py's `small` variant for the whole session:
  pretrained teacher, distilled student, baseline, evaluation, the watch export and the report.

  Modules that only need *a* finished run (its report, stage dirs, checkpoints, a trained
  teacher via `--config.teacher.checkpoint=<workdir>/teacher`, its data dir) share it instead
  of each training their own. It is read-only: a test that writes copies it (`.copy(dest)`),
  and the session fails at teardown if anything under the workdir changed.
  """
  from distill.run import pipeline  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("small_run")
  # One export preset keeps the run short while still giving the report a .tflite row.
  overrides = {"data.data_dir": str(root / "data"), "export.presets": ("watch",)}
  run = SmallRun(root, overrides, None)
  run.report = pipeline.run(run.config(), run.workdir)
  from tests.helpers import tree_digest  # pylint: disable=import-outside-toplevel
  before = tree_digest(run.workdir)
  yield run
  after = tree_digest(run.workdir)
  changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
  assert not changed, f"a test wrote into the shared small_run workdir: {changed[:10]}"
