"""The installable package: pyproject extras, console scripts, `--config=NAME` from anywhere.

The slow test installs a clean clone into a fresh venv (`pip install git+file://...` and
`pip install -e`) and runs from an empty directory, as a new user would.
"""
import os
import re
import subprocess
import sys
import tomllib

import pytest

from distill.cli import config_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)


def _requirements(name, skip=("requirements.txt",)):
  """Requirement lines of a file, following `-r` includes except those in `skip`."""
  out = set()
  with open(os.path.join(ROOT, name)) as f:
    for line in f:
      line = line.split("#")[0].strip()
      if line.startswith("-r"):
        inc = line[2:].strip()
        if inc not in skip:
          out |= _requirements(inc, skip)
      elif line:
        out.add(line)
  return out


def test_extras_mirror_the_requirement_files():
  extras = {k: set(v) for k, v in _pyproject()["project"]["optional-dependencies"].items()}
  assert extras["real"] == _requirements("requirements-real.txt")
  assert extras["edge"] == _requirements("requirements-edge.txt")
  assert extras["llamacpp"] == _requirements("requirements-llamacpp.txt")
  assert extras["dev"] == _requirements("requirements-dev.txt")
  dev = _requirements("requirements-dev.txt")
  assert extras["hf"] <= dev and {re.split(r"[=<>]", r)[0] for r in extras["hf"]} == {
      "torch", "transformers"}
  assert extras["tpu"] == {"libtpu"} and "libtpu" not in _requirements("requirements.txt")


def test_every_python_m_entry_point_has_a_console_script():
  scripts = _pyproject()["project"]["scripts"]
  mains = {"distill": "main"}
  for path in ("distill", "distill/export"):
    for f in os.listdir(os.path.join(ROOT, path)):
      src = open(os.path.join(ROOT, path, f)).read() if f.endswith(".py") else ""
      if '__name__ == "__main__"' in src and f != "main.py":
        mod = os.path.basename(path) if f == "__main__.py" else f[:-3]
        mains["distill-" + mod.replace("_", "-")] = mod
  assert set(mains) <= set(scripts), sorted(set(mains) - set(scripts))
  from distill.cli import scripts as scripts_mod  # noqa: PLC0415
  for name, target in scripts.items():
    module, func = target.split(":")
    assert module == "distill.cli.scripts" and callable(getattr(scripts_mod, func)), name


@pytest.mark.parametrize("arg,expect", [
    ("tiny", "configs/tiny.py"),
    ("tiny.py", "configs/tiny.py"),
    ("configs/tiny.py:small", "configs/tiny.py:small"),
    ("tiny:small", "configs/tiny.py:small"),
    ("gpu_llama3_8b_to_1b", "configs/gpu_llama3_8b_to_1b.py"),
])
def test_named_config_resolves(arg, expect, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # not the repository: the `configs` package is found on sys.path
  monkeypatch.syspath_prepend(ROOT)
  got = config_files.resolve_config(arg)
  assert got.endswith(expect) and os.path.isfile(got.split(":")[0]), got


def test_unknown_names_and_real_paths_pass_through(tmp_path):
  own = tmp_path / "mine.py"
  own.write_text("def get_config():\n  return {}\n")
  assert config_files.resolve_config(str(own)) == str(own)
  assert config_files.resolve_config("no_such_config") == "no_such_config"
  assert config_files.resolve_config("a/b/tiny.py") == "a/b/tiny.py"  # a path, not a name


def _run(argv, cwd, env=None, timeout=300):
  return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                        env=env)


def test_config_by_name_from_another_directory(tmp_path):
  """`--config=tiny` from an empty directory: the name resolves and overrides apply (a bad
  override is refused by validation, so nothing trains)."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  r = _run([sys.executable, "-m", "distill.main", "--config=tiny", "--workdir=w",
            "--config.distill.steps=-1"], tmp_path, env)
  assert r.returncode == 2 and "--config.distill.steps=-1 must be >= 0" in r.stderr, r.stderr
  r = _run([sys.executable, "-m", "distill.main", "--config=no_such", "--workdir=w"], tmp_path,
           env)
  assert r.returncode == 2 and "no such config file" in r.stderr and "tiny" in r.stderr, r.stderr
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.slow  # two venvs and installs (~2-4 min) plus a shrunk pipeline run
@pytest.mark.parametrize("how", ["git", "editable"])
def test_install_from_clean_clone(tmp_path, how):
  clone, venv, empty = tmp_path / "clone", tmp_path / "venv", tmp_path / "empty"
  assert _run(["git", "clone", "-q", ROOT, str(clone)], tmp_path).returncode == 0
  # --system-site-packages: the dependencies (jax, TensorFlow, ...) are already installed
  # here, so the test checks the package, not the network.
  assert _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
              tmp_path).returncode == 0
  py = str(venv / "bin" / "python")
  target = ["-e", str(clone)] if how == "editable" else [f"git+file://{clone}"]
  r = _run([py, "-m", "pip", "install", "-q", "--no-build-isolation", *target], tmp_path,
           timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  empty.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  r = _run([py, "-c", "import importlib.util, distill, distill_configs; print(distill.__file__); print(distill_configs.__file__); assert importlib.util.find_spec('configs') is None"],
           empty, env)
  assert r.returncode == 0, r.stderr
  home = str(clone) if how == "editable" else str(venv)
  assert all(line.startswith(home) for line in r.stdout.split()), r.stdout  # not this checkout
  # The console script, a named config with its `small` variant, from the empty directory.
  r = _run([str(venv / "bin" / "distill"), "--config=tiny:small", "--workdir=w",
            "--config.export.enabled=False", "--config.baseline.enabled=False"], empty, env,
           timeout=1800)  # ~1 min on a quiet 2-core machine; 600 s ran out beside other jobs
  assert r.returncode == 0, r.stderr[-3000:]
  assert "teacher" in r.stdout and os.path.exists(empty / "w" / "report.md")
  r = _run([py, "-m", "distill.main", "--config=tiny", "--workdir=w2",
            "--config.distill.steps=-1"], empty, env)
  assert r.returncode == 2 and "distill.steps=-1" in r.stderr, r.stderr


def test_pyproject_lists_every_package_and_no_generic_configs():
  listed = set(_pyproject()["tool"]["setuptools"]["packages"])
  tree = {os.path.relpath(d, ROOT).replace(os.sep, ".")
          for d, _, files in os.walk(os.path.join(ROOT, "distill")) if "__init__.py" in files}
  assert listed == tree | {"distill_configs"}, sorted(listed ^ (tree | {"distill_configs"}))
  assert _pyproject()["tool"]["setuptools"]["package-dir"] == {"distill_configs": "configs"}


def test_wheel_ships_configs_as_distill_configs(tmp_path):
  """The built wheel holds distill_configs/*.py and no top-level `configs` package."""
  import shutil  # pylint: disable=import-outside-toplevel
  import zipfile  # pylint: disable=import-outside-toplevel
  src = tmp_path / "src"  # a copy: setuptools writes build/ and *.egg-info into the source
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
      ".git", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis"))
  r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
            "-w", str(tmp_path), str(src)], tmp_path, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  (wheel,) = [f for f in os.listdir(tmp_path) if f.endswith(".whl")]
  names = zipfile.ZipFile(tmp_path / wheel).namelist()
  assert "distill_configs/tiny.py" in names and "distill_configs/base.py" in names
  assert "distill/data/heldout_docs.md" in names and "distill/cli/config_files.py" in names
  assert not [n for n in names if n.startswith("configs/")], names
