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


def _stub(bin_dir, name, body):
  path = bin_dir / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(0o755)


def _fake_path(tmp_path, fail_on=""):
  """gcloud / srun / sleep stubs that append their argv to calls.log (one call per line).

  gcloud answers `describe` with ACTIVE and exits 1 when its argv contains `fail_on`.
  """
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.log"
  record = f'printf "%s\\n" "$(basename "$0") $*" >> {log}\n'
  fail = f'[[ -n "{fail_on}" && "$*" == *"{fail_on}"* ]] && exit 1\n' if fail_on else ""
  _stub(bin_dir, "gcloud", record + fail + '[[ "$*" == *describe* ]] && echo ACTIVE\nexit 0\n')
  _stub(bin_dir, "srun", record + "exit 0\n")
  _stub(bin_dir, "sleep", "exit 0\n")  # the queued-resource poll would wait 30 s
  return f"{bin_dir}:{os.environ['PATH']}", log


def _launch(script, tmp_path, path, *args, **env):
  full = dict(os.environ, PATH=path, CONFIG="configs/tpu_v5e_gemma7b_to_300m.py",
              WORKDIR="/mnt/runs/x", EXTRA="--config.seed=1 --config.distill.steps=5",
              LOGDIR=str(tmp_path / "logs"), **env)
  return subprocess.run(["bash", os.path.join(ROOT, script), *args], capture_output=True,
                        text=True, env=full, timeout=60, cwd=tmp_path)


def test_tpu_pod_creates_installs_runs_on_every_worker_and_deletes(tmp_path):
  path, log = _fake_path(tmp_path)
  r = _launch("launch/tpu_pod.sh", tmp_path, path, TPU_NAME="t1", ACCELERATOR="v5litepod-256")
  assert r.returncode == 0, r.stderr
  calls = log.read_text().splitlines()
  create = [c for c in calls if "queued-resources create t1-qr" in c]
  assert len(create) == 1 and "--accelerator-type=v5litepod-256" in create[0]
  assert any("tpu-vm scp --recurse" in c and "--worker=all" in c for c in calls)
  ssh = [c for c in calls if "tpu-vm ssh t1" in c]
  assert all("--worker=all" in c for c in ssh) and len(ssh) == 2  # install, then run
  assert "pip install" in ssh[0]
  assert ("DISTILL_MULTIHOST=1 python -m distill.main --config=configs/tpu_v5e_gemma7b_to_300m.py"
          " --workdir=/mnt/runs/x --config.seed=1 --config.distill.steps=5") in ssh[1]
  assert "queued-resources delete t1-qr" in calls[-1]  # last, after the run
  assert calls.index(ssh[1]) < len(calls) - 1


def test_tpu_pod_deletes_the_slice_when_the_run_fails(tmp_path):
  path, log = _fake_path(tmp_path, fail_on="distill.main")
  r = _launch("launch/tpu_pod.sh", tmp_path, path, TPU_NAME="t2")
  assert r.returncode != 0
  assert "queued-resources delete t2-qr" in log.read_text().splitlines()[-1]


def test_slurm_script_runs_one_srun_with_the_overrides(tmp_path):
  path, log = _fake_path(tmp_path)
  r = _launch("launch/slurm_gpu.sbatch", tmp_path, path)
  assert r.returncode == 0, r.stderr
  (call,) = log.read_text().splitlines()
  assert call == ("srun --kill-on-bad-exit=1 python -m distill.main "
                  "--config=configs/tpu_v5e_gemma7b_to_300m.py --workdir=/mnt/runs/x "
                  "--config.seed=1 --config.distill.steps=5")
