"""The precision policy: bf16 compute with fp32 accumulation, norms, softmax, loss and master
weights stays within the accuracy budget of the fp32 step (issue 16); and which dtype a run
picks: the cpu preset's `auto` from the CPU's flags and a cached GEMM probe, accelerators bf16,
explicit dtypes winning (issue 30; distill/run/precision.py)."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distill.run import hardware as presets
from distill.run import precision
from distill.train import objectives
from distill.train import step as step_lib
from distill.models.transformer import LM
from tests.helpers import tiny_model_config


def _models(dtype, teacher_dtype):
  # Shapes where the blocked causal attention runs (seq 160 > its 64-row blocks), GQA groups.
  t_cfg = tiny_model_config(d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, n_layers=2,
                            vocab_size=96, max_len=256)
  s_cfg = tiny_model_config(d_model=32, n_heads=4, n_kv_heads=2, d_ff=64, n_layers=2,
                            vocab_size=96, max_len=256)
  t_compute = teacher_dtype if teacher_dtype != "float32" else dtype
  return LM(t_cfg.replace(dtype=t_compute)), LM(s_cfg.replace(dtype=dtype))


def _batch():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 96, size=(4, 161)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "mask": np.ones((4, 160), np.float32)}


def _step_outputs(dtype, teacher_dtype):
  teacher, student = _models(dtype, teacher_dtype)
  # Trained-looking weights: a random teacher's soft targets are near uniform, which would
  # make any loss comparison easy. Scale the init up so logits spread over several nats.
  t_params = jax.tree.map(lambda x: (3.0 * x).astype(teacher_dtype),
                          teacher.init(jax.random.key(1)))
  s_params = student.init(jax.random.key(2))
  loss_fn = functools.partial(objectives.distill_loss, student=student, teacher=teacher,
                              cfg=objectives.LossConfig(kind="forward_kl", temperature=2.0, alpha=0.2))
  tx = step_lib.make_optimizer(lr=1e-3, steps=10, warmup=0)
  state = step_lib.TrainState(jnp.zeros((), jnp.int32), s_params, tx.init(s_params))
  step = jax.jit(functools.partial(step_lib.train_step, loss_fn=loss_fn, tx=tx))
  new_state, metrics = step(state, _batch(), jax.random.key(0), t_params)
  return new_state, jax.device_get(metrics), student


def test_bf16_policy_loss_within_one_percent_of_fp32():
  ref_state, ref, _ = _step_outputs("float32", "float32")
  state, got, student = _step_outputs("bfloat16", "bfloat16")
  for k in ("loss", "divergence", "ce"):
    assert abs(got[k] - ref[k]) <= 1e-2 * abs(ref[k]), (k, got[k], ref[k])
  # Not trivially equal: bf16 rounding does move the loss.
  assert got["loss"] != ref["loss"]
  # Master weights and optimizer state stay fp32 under bf16 compute.
  for leaf in jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32, leaf.dtype
  assert student.cfg.param_dtype == "float32" and student.cfg.dtype == "bfloat16"


def test_bf16_logits_are_fp32_and_close():
  """fp32 logits out of bf16 compute (fp32 accumulation, norms and softmax), no further from
  the fp32 forward than rounding the weights alone to bf16 puts them (within 3x)."""
  teacher32, _ = _models("float32", "float32")
  teacher16, _ = _models("bfloat16", "bfloat16")
  params = teacher32.init(jax.random.key(1))
  x = jnp.asarray(_batch()["inputs"])
  ref = np.asarray(teacher32.apply(params, x))
  bf16 = jax.tree.map(lambda a: a.astype(jnp.bfloat16), params)
  got = teacher16.apply(bf16, x)
  assert got.dtype == jnp.float32
  rounded = np.asarray(teacher32.apply(jax.tree.map(lambda a: a.astype(jnp.float32), bf16), x))

  def tv(a, b):  # mean total variation between next-token distributions
    return float((0.5 * np.abs(jax.nn.softmax(a, -1) - jax.nn.softmax(b, -1)).sum(-1)).mean())

  assert tv(ref, np.asarray(got)) < 3 * tv(ref, rounded), (tv(ref, np.asarray(got)),
                                                           tv(ref, rounded))
  assert tv(ref, np.asarray(got)) < 0.01
  assert (np.asarray(got).argmax(-1) == ref.argmax(-1)).mean() > 0.98


def test_cpu_preset_states_the_policy():
  cpu = presets.get("cpu")
  assert cpu.dtype == cpu.teacher_dtype == precision.AUTO
  for name in ("gpu", "tpu_v5e"):
    assert presets.get(name).dtype == "bfloat16"


@pytest.mark.parametrize("block", [64, 10**6], ids=["blocked", "full"])
def test_blocked_causal_attention_equals_full_mask(block, monkeypatch):
  """The query-blocked training attention equals the one-shot masked softmax (NumPy)."""
  from distill.models import ops
  monkeypatch.setattr(ops, "ATTENTION_BLOCK", block)
  teacher, _ = _models("float32", "float32")
  params = teacher.init(jax.random.key(3))
  x = jnp.asarray(_batch()["inputs"][:2])
  got = np.asarray(teacher.apply(params, x))
  # Reference: the KV-cache path (the unblocked einsum + position mask) prefilling all tokens.
  cache = teacher.init_cache(2, 160, jnp.float32)
  ref, _ = teacher.apply_cached(params, x, cache, 0)
  np.testing.assert_allclose(got, np.asarray(ref), atol=2e-5, rtol=2e-5)


@pytest.mark.slow  # two full tiny pipelines (~8 min on 2 cores)
def test_tiny_pipeline_policy_within_1pct_of_fp32(tmp_path):
  """configs/tiny.py under the cpu preset's policy (bf16 where this CPU multiplies it fast)
  against the same run in fp32."""
  from configs import tiny
  from distill.run import pipeline
  reports = {}
  for name, dtypes in (("fp32", ("float32", "float32")), ("policy", None)):
    c = tiny.get_config()
    c.export.enabled = False
    if dtypes:
      c.compute_dtype, c.teacher.dtype = dtypes
    reports[name] = pipeline.run(c, str(tmp_path / name))
  ref, got = reports["fp32"], reports["policy"]
  assert ref["precision"]["dtype"] == "float32"
  assert got["precision"]["dtype"] == precision.auto().dtype  # whichever this machine picks
  for model in ("teacher", "student", "baseline"):
    a, b = ref[model]["val_ce"], got[model]["val_ce"]
    assert abs(b - a) <= 0.01 * a, (model, a, b)
  assert abs(got["gap_closed"] - ref["gap_closed"]) <= 0.03


# ---------------------------------------------------------------------------------------------
# Which dtype the policy picks (issue 30). Every machine is faked: flags passed in, the probe a
# function that counts its calls, the cache a file under tmp_path.

XEON = precision.CpuInfo("Fake Xeon", frozenset({"avx2", "fma", "avx512f", "avx512_bf16",
                                                 "amx_tile", "amx_bf16"}))
EPYC = precision.CpuInfo("Fake EPYC", frozenset({"avx2", "fma"}))


class Probe:
  """A fake GEMM probe: returns (fp32, bf16) GFLOP/s and counts its calls."""

  def __init__(self, fp32, bf16):
    self.figures, self.calls = (fp32, bf16), 0

  def __call__(self):
    self.calls += 1
    return self.figures


def _detect(cpu, probe, tmp_path, **kw):
  return precision.detect_cpu(cpu, probe=probe, cache_path=str(tmp_path / "precision.json"),
                              run_probe=True, **kw)


def test_no_bf16_flags_is_fp32_without_running_the_probe(tmp_path):
  probe = Probe(100.0, 900.0)  # would say bf16 if it were asked
  p = _detect(EPYC, probe, tmp_path)
  assert (p.dtype, p.teacher_dtype, p.source) == ("float32", "float32", "auto")
  assert probe.calls == 0 and p.probe_fp32_gflops is None and p.probe_bf16_gflops is None
  assert not (tmp_path / "precision.json").exists()
  assert p.flags == ("avx2", "fma") and "no avx512_bf16/amx_bf16" in p.reason
  # Flags the OS does not show (not Linux): fp32 too, said so.
  unknown = precision.CpuInfo("arm", frozenset(), known=False)
  assert _detect(unknown, probe, tmp_path).dtype == "float32" and probe.calls == 0


def test_bf16_flags_and_a_faster_bf16_probe_pick_bf16(tmp_path):
  probe = Probe(231.0, 812.0)
  p = _detect(XEON, probe, tmp_path)
  assert (p.dtype, p.teacher_dtype) == ("bfloat16", "bfloat16") and probe.calls == 1
  assert (p.probe_fp32_gflops, p.probe_bf16_gflops, p.cached) == (231.0, 812.0, False)
  assert p.line() == ("precision: bfloat16 matmul inputs (cpu has avx512_bf16+amx_bf16; probe "
                      "bf16 812 GFLOP/s vs fp32 231)")
  assert "amx_bf16" in p.flags and "avx512_bf16" in p.flags


def test_bf16_flags_but_a_slower_bf16_probe_pick_fp32(tmp_path):
  for fp32, bf16 in ((189.0, 110.0), (200.0, 210.0)):  # slower; and faster by less than 1.1x
    p = _detect(XEON, Probe(fp32, bf16), tmp_path / str(bf16))
    assert (p.dtype, p.teacher_dtype) == ("float32", "float32"), (fp32, bf16)
    assert p.probe_bf16_gflops == bf16 and " but probe bf16" in p.reason


def test_probe_skipped_by_env_trusts_the_flags(tmp_path, monkeypatch):
  monkeypatch.setenv(precision.PROBE_ENV, "0")
  probe = Probe(300.0, 100.0)
  p = precision.detect_cpu(XEON, probe=probe, cache_path=str(tmp_path / "c.json"))
  assert p.dtype == "bfloat16" and probe.calls == 0 and "probe skipped" in p.reason


def test_probe_cache_is_written_reused_and_rewritten_when_corrupt(tmp_path):
  path = tmp_path / "precision.json"
  first = Probe(231.0, 812.0)
  assert not _detect(XEON, first, tmp_path).cached
  entries = json.loads(path.read_text())["entries"]
  (key,) = entries
  assert key == precision.cache_key(XEON) and "Fake Xeon" in key and "jax" in key
  assert entries[key]["fp32_gflops"] == 231.0 and entries[key]["bf16_gflops"] == 812.0
  assert not [f for f in os.listdir(tmp_path) if f != "precision.json"]  # no temp file left
  # Second time: the cached figures, no probe.
  again = Probe(1.0, 1.0)
  p = _detect(XEON, again, tmp_path)
  assert again.calls == 0 and p.cached and p.dtype == "bfloat16" and "cached" in p.line()
  # Another machine is another key: probed and added beside the first.
  other = precision.CpuInfo("Other", XEON.flags)
  assert _detect(other, Probe(300.0, 200.0), tmp_path).dtype == "float32"
  assert len(json.loads(path.read_text())["entries"]) == 2
  # A corrupt file (or one of another shape) is ignored, probed again and rewritten.
  for junk in ("{not json", '["a list"]', '{"version": 1, "entries": {"%s": 3}}' % key):
    path.write_text(junk)
    probe = Probe(231.0, 812.0)
    assert not _detect(XEON, probe, tmp_path).cached and probe.calls == 1, junk
    assert json.loads(path.read_text())["entries"][key]["bf16_gflops"] == 812.0


def test_cache_file_follows_the_environment(monkeypatch, tmp_path):
  monkeypatch.delenv("DISTILL_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert precision.cache_file() == str(tmp_path / "xdg" / "distill" / "precision.json")
  monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "d"))
  assert precision.cache_file() == str(tmp_path / "d" / "precision.json")


def test_cpuinfo_flags_are_read_from_the_file(tmp_path):
  f = tmp_path / "cpuinfo"
  f.write_text("processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 amx_bf16\n\n"
               "processor\t: 1\nmodel name\t: Some Xeon\nflags\t\t: fpu avx2 amx_bf16\n")
  info = precision.cpu_info(str(f))
  if info.known:  # Linux
    assert info.model == "Some Xeon" and info.flags == {"fpu", "avx2", "amx_bf16"}


def _bf16_here():
  return precision.Precision("bfloat16", "bfloat16", source="auto", reason="faked bf16 cpu")


def _fp32_here():
  return precision.Precision("float32", "float32", source="auto", reason="faked fp32 cpu")


def test_resolve_cpu_preset_follows_the_machine_and_explicit_dtypes_win():
  cpu = presets.get("cpu")
  for here in (_bf16_here, _fp32_here):
    p = precision.resolve(cpu, "", "", detect=here)
    assert (p.dtype, p.teacher_dtype, p.source) == (here().dtype, here().dtype, "auto")
    assert p.reason == here().reason
  # An explicit compute dtype wins, and an empty teacher dtype follows it (an all-fp32 run).
  p = precision.resolve(cpu, "float32", "", detect=_bf16_here)
  assert (p.dtype, p.teacher_dtype, p.source) == ("float32", "float32", "config")
  assert p.line() == "precision: float32 matmul inputs (set by compute_dtype=float32)"
  p = precision.resolve(cpu, "bfloat16", "", detect=_fp32_here)
  assert (p.dtype, p.teacher_dtype) == ("bfloat16", "bfloat16")
  # An explicit teacher dtype wins for the teacher; the compute dtype stays the machine's.
  p = precision.resolve(cpu, "", "float32", detect=_bf16_here)
  assert (p.dtype, p.teacher_dtype) == ("bfloat16", "float32")
  assert "teacher held in float32" in p.line() and "teacher.dtype=float32" in p.reason
  # Nothing auto: the machine is not asked.
  def never():
    raise AssertionError("detect() called with every dtype explicit")
  assert precision.resolve(cpu, "float32", "bfloat16", detect=never).teacher_dtype == "bfloat16"


def test_accelerator_presets_and_backends_are_bf16_without_asking_the_cpu():
  def never():
    raise AssertionError("an accelerator preset asked the CPU")
  for name in ("gpu", "tpu_v4", "tpu_v5e", "tpu_v5p", "tpu_v6e"):
    p = precision.resolve(presets.get(name), "", "", detect=never)
    assert (p.dtype, p.teacher_dtype, p.source) == ("bfloat16", "bfloat16", "preset"), name
    assert precision.resolve(presets.get(name), "float32", "", detect=never).dtype == "float32"
  # `auto` on an accelerator backend (the cpu preset run on a GPU host): bf16, no probe.
  p = precision.auto("gpu")
  assert p.dtype == "bfloat16" and p.probe_bf16_gflops is None and "gpu" in p.reason


def test_config_fields_reach_the_models(monkeypatch):
  """settings.precision(config) is what the pipeline's models are built with."""
  from configs import tiny
  from distill.run import pipeline, settings
  monkeypatch.setattr(precision, "auto", lambda backend=None: _fp32_here())
  c = tiny.get_config("small")
  assert (c.compute_dtype, c.teacher.dtype) == ("", "")  # the tiny run follows the policy
  assert pipeline.model_config(c.student.model, 264, c).dtype == "float32"
  monkeypatch.setattr(precision, "auto", lambda backend=None: _bf16_here())
  assert settings.precision(c).teacher_dtype == "bfloat16"
  assert pipeline.model_config(c.student.model, 264, c).dtype == "bfloat16"
  c.compute_dtype = "float32"
  teacher = pipeline.read_only_teacher(pipeline.model_config(c.teacher.model, 264, c), c)
  assert teacher.dtype == "float32" and settings.precision(c).source == "config"
