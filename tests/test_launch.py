"""Launch scripts parse (`bash -n`) and pass shellcheck; their headers document the commands."""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["launch/tpu_pod.sh", "launch/slurm_gpu.sbatch"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_bash_syntax(script):
  r = subprocess.run(["bash", "-n", os.path.join(ROOT, script)], capture_output=True, text=True)
  assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(script):
  if shutil.which("shellcheck") is None:
    pytest.skip("shellcheck not installed (apt-get install -y shellcheck; .ci/run installs it)")
  r = subprocess.run(["shellcheck", "--shell=bash", os.path.join(ROOT, script)],
                     capture_output=True, text=True)
  assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_header_documents_usage_and_readme_names_it(script):
  with open(os.path.join(ROOT, script)) as f:
    head = f.read(4000)
  assert "Usage" in head and "distill.main" in head and "Expected runtime" in head
  with open(os.path.join(ROOT, "launch", "README.md")) as f:
    assert os.path.basename(script) in f.read()


def test_tpu_pod_refuses_to_start_without_config():
  # Required settings are checked before any gcloud call, so this runs without gcloud.
  env = {k: v for k, v in os.environ.items() if k not in ("CONFIG", "WORKDIR")}
  r = subprocess.run(["bash", os.path.join(ROOT, "launch/tpu_pod.sh")], capture_output=True,
                     text=True, env=env, timeout=30)
  assert r.returncode != 0 and "CONFIG" in r.stderr
