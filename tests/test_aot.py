"""`python -m distill.aot` compiles the real distill step for a TPU topology on this CPU.

Uses libtpu's compile-only devices (no TPU); skipped when libtpu is not installed. The shipped
v5e config is shrunk (2x2 chips, short sequences, 1 layer) so each compile takes about a
minute on 2 shared cores; the full-size figures are in launch/README.md.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/tpu_v5e_gemma7b_to_300m.py"
KEYS = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "total_bytes",
        "hbm_bytes", "fits", "topology", "devices", "mesh")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu not installed (pip install libtpu)")


def _aot(*args, timeout=300):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  r = subprocess.run([sys.executable, "-m", "distill.aot", f"--config={CONFIG}", *args],
                     cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
  lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
  return r, (json.loads(lines[0]) if len(lines) == 1 else None)


SMALL = ["--topology=v5e:2x2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--config.data.batch_size=4",
         "--config.data.seq_len=256", "--config.distill.chunk_size=128"]


# Slow-marked (~70 s) to keep the default run under 15 minutes: the next test compiles the
# same config for the same topology by default and checks the memory line's fields.
@pytest.mark.slow
def test_aot_prints_one_memory_line_for_the_v5e_config():
  # One layer each, compiled as is (one compile: minutes on 2 shared cores otherwise).
  r, out = _aot(*SMALL, "--config.teacher.model.n_layers=1", "--config.student.model.n_layers=1")
  assert out is not None, r.stdout[-2000:] + r.stderr[-3000:]
  for k in KEYS:
    assert k in out, k
  assert out["devices"] == 4 and out["mesh"] == {"data": 1, "fsdp": 2, "tensor": 2}
  assert out["extrapolated"] is False and out["compile_seconds"] > 0
  assert out["teacher_layers"] == 1 and out["student_layers"] == 1
  assert out["hbm_bytes"] == 16 << 30  # v5e chip
  assert out["argument_bytes"] > 0 and out["temp_bytes"] > 0
  # Teacher bf16 + student fp32 + Adam, sharded 4 ways: at least the weights' share.
  assert out["argument_bytes"] >= (2 * out["teacher_params"] + 12 * out["student_params"]) // 4 * 0.95
  assert out["total_bytes"] == (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] +
                                out["temp_bytes"] + out["generated_code_bytes"])
  assert r.returncode == (0 if out["fits"] else 1), r.stderr[-2000:]


def test_aot_exits_nonzero_when_the_step_cannot_fit():
  # 64 sequences of 2048 on 4 chips with dense 256k-vocab logits: far beyond 16 GiB.
  r, out = _aot("--topology=v5e:2x2", "--config.mesh.fsdp=4", "--config.mesh.tensor=1",
                "--config.data.batch_size=64",
                "--config.distill.chunk_size=0", "--layers=1")
  assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-3000:]
  assert out is not None and out["fits"] is False and out["total_bytes"] > out["hbm_bytes"]
  assert "does not fit" in r.stderr


def test_aot_config_error_is_one_line_exit_2():
  # The shipped 4 x 4 (fsdp x tensor) mesh cannot be laid on 4 chips: said before compiling.
  r, out = _aot("--topology=v5e:2x2")
  assert r.returncode == 2 and out is None
  assert "error: --config.mesh" in r.stderr and "v5e:2x2 has 4 devices" in r.stderr
  r, out = _aot("--topology=v5e:2x2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                "--config.data.batch_size=3")
  assert r.returncode == 2 and out is None
  assert "error:" in r.stderr and "batch_size=3" in r.stderr


def test_aot_refuses_a_teacher_ensemble_in_one_line():
  r, out = _aot("--topology=v5e:2x2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                "--config.data.batch_size=4", "--config.teacher.checkpoint=",
                "--config.distill.chunk_size=0", "--config.teachers=({'seed': 0}, {'seed': 1})")
  assert r.returncode == 2 and out is None
  errors = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "compile with --config.teachers=()" in errors[0], r.stderr[-2000:]


def test_multislice_mesh_puts_slices_on_the_data_axis():
  # Compile-only devices of 2 v5e-4 slices; no compile, so this runs in a few seconds.
  code = (
      "from distill.models import sharding\nfrom distill.run import aot\n"
      "d = aot.topology_devices('v5e:2x2', slices=2)\n"
      "m = sharding.make_mesh(sharding.MeshSpec(data=4, fsdp=2, tensor=1, slices=2), d)\n"
      "s = [[x.slice_index for x in row.ravel()] for row in m.devices]\n"
      "print(dict(m.shape), s)\n")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=120, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  # Data rows 0-1 on slice 0, rows 2-3 on slice 1: only the data axis crosses DCN.
  assert "{'data': 4, 'fsdp': 2, 'tensor': 1} [[0, 0], [0, 0], [1, 1], [1, 1]]" in r.stdout


@pytest.mark.slow
def test_shipped_tpu_config_compiles_at_full_depth_on_its_topology():
  """Issue 15's acceptance: the v5e config as shipped (28-layer Gemma-7B teacher, 12-layer
  student, v5e:16x16, batch 256 x 2048) compiles with the layer scan, no extrapolation, in
  under 10 minutes (246 s of compile measured here on a quiet CPU), and fits a 16 GiB chip."""
  r, out = _aot(timeout=900)
  assert out is not None, r.stdout[-2000:] + r.stderr[-3000:]
  assert out["extrapolated"] is False and out["devices"] == 256
  assert out["teacher_layers"] == 28 and out["student_layers"] == 12
  assert out["compile_seconds"] < 600
  assert out["fits"] and r.returncode == 0
