"""The precision policy a run uses: which dtype the models multiply in, picked for this machine.

A preset's dtype (and teacher dtype) is either a fixed name (`bfloat16` on every accelerator
preset) or `auto` (the `cpu` preset): bf16 matmul inputs only where the CPU multiplies bf16
natively *and* measurably faster than fp32, fp32 otherwise. "Natively" is the CPU's own flags
(Linux /proc/cpuinfo: `avx512_bf16`, `amx_bf16`, Arm's `bf16`); without one the answer is fp32
and nothing is measured (elsewhere than Linux the flags are unknown: fp32). With one, a short
GEMM probe (a jitted 1024 x 1024 `jnp.dot`, bf16 x bf16 -> fp32 against fp32 x fp32, best of a
few interleaved reps; well under a second) must show bf16 at least `MIN_SPEEDUP` times faster.
The probe's figures are cached per machine (CPU model, flags, usable cores, jax version) in
`$DISTILL_CACHE_DIR`, else `$XDG_CACHE_HOME/distill`, else `~/.cache/distill`
(`precision.json`, written atomically; a corrupt file is ignored and rewritten), so it runs
once per machine, not once per run. `DISTILL_PRECISION_PROBE=0` skips the probe (the flags
alone decide). On an accelerator backend `auto` is bfloat16. An explicit
`--config.compute_dtype` always wins (and an empty `teacher.dtype` follows it), as does an
explicit `--config.teacher.dtype` for the teacher.

`resolve` returns a `Precision`: the dtypes, why, what was seen and measured; the pipeline
prints its `line()` first and records `as_dict()` in report.json, the bench scripts in their
JSON lines.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time

from distill.run import hardware

AUTO = "auto"
# CPU flags that mean the cores multiply bf16 in hardware (x86 AVX-512 BF16 and AMX; Arm's
# BF16 extension): only then is the probe run at all.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
# Flags recorded with the result (what the bench results pages list per CPU).
RECORDED_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                  "bf16", "sve")
# bf16 must beat fp32 by this factor in the probe; a near tie keeps fp32's digits.
MIN_SPEEDUP = 1.1
PROBE_SIZE = 1024
PROBE_REPS = 5
CACHE_VERSION = 1
PROBE_ENV = "DISTILL_PRECISION_PROBE"


@dataclasses.dataclass(frozen=True)
class CpuInfo:
  """What the OS says about the CPU; `known` False where it says nothing (not Linux)."""
  model: str
  flags: frozenset
  known: bool = True


@dataclasses.dataclass(frozen=True)
class Precision:
  """The policy a run uses, and why."""
  dtype: str              # the models' compute dtype: matmul inputs, activations between layers
  teacher_dtype: str      # the read-only teacher's weights (it computes in it unless fp32)
  source: str             # "config" (set explicitly), "preset" (the preset's fixed dtype), "auto"
  reason: str             # one clause: why this dtype
  cpu: str = ""           # CPU model name ('' when not looked at or unknown)
  flags: tuple = ()       # the RECORDED_FLAGS this CPU has
  probe_fp32_gflops: float | None = None
  probe_bf16_gflops: float | None = None
  cached: bool = False    # the probe figures came from the per-machine cache

  def line(self) -> str:
    """The run's first console line."""
    teacher = "" if self.teacher_dtype == self.dtype else f", teacher held in {self.teacher_dtype}"
    return f"precision: {self.dtype} matmul inputs{teacher} ({self.reason})"

  def as_dict(self) -> dict:
    return dataclasses.asdict(self) | {"flags": list(self.flags)}


# ---------------------------------------------------------------------------------------------
# What the machine is.


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> CpuInfo:
  """Model name and flags from /proc/cpuinfo (x86 `flags`, Arm `Features`); unknown elsewhere."""
  if not sys.platform.startswith("linux"):
    return CpuInfo(platform.processor() or platform.machine(), frozenset(), known=False)
  model, flags = "", set()
  try:
    with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
          model = value.strip()
        elif key in ("flags", "features") and not flags:
          flags = set(value.split())
  except OSError:
    return CpuInfo(platform.machine(), frozenset(), known=False)
  return CpuInfo(model or platform.machine(), frozenset(flags))


def _usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    return os.cpu_count() or 1


def _jax_version() -> str:
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  try:
    return metadata.version("jax")
  except metadata.PackageNotFoundError:
    return "?"


def cache_file() -> str:
  root = (os.environ.get("DISTILL_CACHE_DIR") or
          os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                       "distill"))
  return os.path.join(root, "precision.json")


def cache_key(cpu: CpuInfo) -> str:
  digest = hashlib.sha1(" ".join(sorted(cpu.flags)).encode()).hexdigest()[:12]
  return f"{cpu.model} | flags {digest} | {_usable_cores()} cores | jax {_jax_version()}"


# ---------------------------------------------------------------------------------------------
# The probe and its cache.


def gemm_probe(n: int = PROBE_SIZE, reps: int = PROBE_REPS) -> tuple:
  """(fp32 GFLOP/s, bf16 GFLOP/s): best of `reps` interleaved calls of a jitted n x n dot,
  f32 x f32 and bf16 x bf16 with fp32 accumulation (`preferred_element_type`, as the models
  multiply), after one untimed call each."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
  args = {"float32": (a, b), "bfloat16": (a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))}
  best = {}
  for dt, xy in args.items():
    dot(*xy).block_until_ready()
  for _ in range(reps):
    for dt, xy in args.items():
      t0 = time.perf_counter()
      dot(*xy).block_until_ready()
      best[dt] = min(best.get(dt, float("inf")), time.perf_counter() - t0)
  return tuple(2.0 * n ** 3 / best[dt] / 1e9 for dt in ("float32", "bfloat16"))


def _read_cache(path: str) -> dict:
  """The cache's entries; {} when missing or unreadable (a corrupt file is rewritten later)."""
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    entries = data["entries"] if data.get("version") == CACHE_VERSION else {}
    return entries if isinstance(entries, dict) else {}
  except (OSError, ValueError, AttributeError, KeyError, TypeError):
    return {}


def _write_cache(path: str, entries: dict) -> None:
  """Atomically (a temporary file in the same directory, then os.replace); a cache that cannot
  be written (read-only home) only costs a probe next time."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".precision.", dir=os.path.dirname(path))
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump({"version": CACHE_VERSION, "entries": entries}, f, indent=1)
    os.replace(tmp, path)
  except OSError as e:
    logging.warning("precision cache %s not written: %s", path, e)


def _probe_figures(cpu: CpuInfo, probe, path: str) -> tuple:
  """(fp32, bf16, cached): from the cache entry of this machine, else probed and stored."""
  key = cache_key(cpu)
  entries = _read_cache(path)
  entry = entries.get(key)
  try:
    fp32, bf16 = float(entry["fp32_gflops"]), float(entry["bf16_gflops"])
    if fp32 > 0 and bf16 > 0:
      return fp32, bf16, True
  except (TypeError, KeyError, ValueError):
    pass
  fp32, bf16 = (float(x) for x in probe())
  entries[key] = {"fp32_gflops": fp32, "bf16_gflops": bf16, "cpu": cpu.model,
                  "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
  _write_cache(path, entries)
  return fp32, bf16, False


# ---------------------------------------------------------------------------------------------
# The decision.


def detect_cpu(cpu: CpuInfo | None = None, *, probe=gemm_probe, cache_path: str | None = None,
               run_probe: bool | None = None) -> Precision:
  """`auto` on a CPU: bfloat16 where the flags say native bf16 and the probe (or its cached
  figures) says bf16 is MIN_SPEEDUP x faster, float32 otherwise. Arguments fake the machine."""
  cpu = cpu_info() if cpu is None else cpu
  if run_probe is None:
    run_probe = os.environ.get(PROBE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
  flags = tuple(f for f in RECORDED_FLAGS if f in cpu.flags)
  native = [f for f in NATIVE_BF16_FLAGS if f in cpu.flags]
  seen = dict(source=AUTO, cpu=cpu.model, flags=flags)
  if not native:
    why = ("cpu flags unknown on this OS" if not cpu.known
           else f"cpu has no {'/'.join(NATIVE_BF16_FLAGS[:2])}")
    return Precision("float32", "float32", reason=why, **seen)
  has = f"cpu has {'+'.join(native)}"
  if not run_probe:
    return Precision("bfloat16", "bfloat16", reason=f"{has}; probe skipped ({PROBE_ENV}=0)",
                     **seen)
  fp32, bf16, cached = _probe_figures(cpu, probe, cache_path or cache_file())
  figures = (f"probe bf16 {bf16:.0f} GFLOP/s vs fp32 {fp32:.0f}"
             f"{', cached' if cached else ''}")
  fast = bf16 >= MIN_SPEEDUP * fp32
  dtype = "bfloat16" if fast else "float32"
  reason = f"{has}; {figures}" if fast else f"{has} but {figures}"
  return Precision(dtype, dtype, reason=reason, probe_fp32_gflops=round(fp32, 1),
                   probe_bf16_gflops=round(bf16, 1), cached=cached, **seen)


def _agree(p: Precision) -> Precision:
  """Every process of a multi-process run takes process 0's choice (the probe may differ)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return p
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  bf16 = bool(multihost_utils.broadcast_one_to_all(np.int32(p.dtype == "bfloat16")))
  if bf16 == (p.dtype == "bfloat16"):
    return p
  dtype = "bfloat16" if bf16 else "float32"
  return dataclasses.replace(p, dtype=dtype, teacher_dtype=dtype,
                             reason=f"process 0's choice (here: {p.reason})")


@functools.lru_cache(maxsize=None)
def auto(backend: str | None = None) -> Precision:
  """What `auto` means in this process (computed once): bfloat16 on an accelerator backend,
  `detect_cpu()` on the CPU."""
  if backend is None:
    import jax  # pylint: disable=import-outside-toplevel
    backend = jax.default_backend()
  if backend != "cpu":
    return Precision("bfloat16", "bfloat16", source=AUTO,
                     reason=f"{backend} backend multiplies bf16 natively")
  return _agree(detect_cpu())


def resolve(preset: hardware.Hardware, compute_dtype: str = "", teacher_dtype: str = "", *,
            detect=None) -> Precision:
  """The policy for `preset` given the config's `compute_dtype` and `teacher.dtype`: '' =
  the preset's (an empty teacher dtype follows an explicit compute_dtype, so
  `--config.compute_dtype=float32` alone is an all-fp32 run), `auto` = this machine's, a dtype
  name = that. `detect()` answers `auto` (default: `auto()`); it is only called when some
  field is `auto`."""
  want = compute_dtype or preset.dtype
  want_t = teacher_dtype or compute_dtype or preset.teacher_dtype
  found = (detect or auto)() if AUTO in (want, want_t) else None
  dtype = found.dtype if want == AUTO else want
  t_dtype = found.teacher_dtype if want_t == AUTO else want_t
  if compute_dtype and compute_dtype != AUTO:
    source, reason = "config", f"set by compute_dtype={compute_dtype}"
  elif want == AUTO:
    source, reason = AUTO, found.reason
  else:
    source, reason = "preset", f"the {preset.name} preset's"
  if teacher_dtype and teacher_dtype != AUTO:
    reason += f"; teacher set by teacher.dtype={teacher_dtype}"
  elif want_t == AUTO and want != AUTO:
    reason += f"; teacher: {found.reason}"
  measured = dataclasses.asdict(found) if found else {}
  keep = {k: measured[k] for k in ("cpu", "flags", "probe_fp32_gflops", "probe_bf16_gflops",
                                   "cached") if k in measured}
  return Precision(dtype, t_dtype, source=source, reason=reason, **keep)


def record(dtype: str = AUTO, teacher_dtype: str = "") -> dict:
  """The policy as every bench JSON line carries it (`precision`): the cpu preset's with these
  dtypes ('auto' = what a run on this machine picks, with the CPU and probe figures behind it),
  whatever dtypes the bench itself then runs."""
  return resolve(hardware.get("cpu"), dtype, teacher_dtype).as_dict()
