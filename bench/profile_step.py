"""Where the distill step's time goes: a jax.profiler trace of the bench step, summarised.

  JAX_PLATFORMS=cpu python bench/profile_step.py [--config=configs/bench_small.py] [--steps=3]
      [--trace_dir=/tmp/distill_profile]

Builds the same step as bench/step_throughput.py, traces `steps` calls and prints one JSON
line: op time per step (summed over threads) by XLA op kind (`ynn_fusion` = YNNPACK: the matmuls,
loop fusions = elementwise work, copies/transposes) and by the model source line each op came
from (forward or backward). Needs `xprof` (pip install xprof) to read the trace; the trace
itself stays in --trace_dir for TensorBoard/XProf. On a machine with libtpu installed, set
JAX_PLATFORMS=cpu: the TPU plugin's tracer crashes the CPU profiler.
"""
from __future__ import annotations

import collections
import glob
import json
import os
import re
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_throughput  # pylint: disable=wrong-import-position  # defines --config

_STEPS = flags.DEFINE_integer("steps", 3, "Traced steps (after 2 untraced ones).")
_TRACE_DIR = flags.DEFINE_string("trace_dir", "/tmp/distill_profile", "Where the trace goes.")
_TOP = flags.DEFINE_integer("top", 15, "Rows per table.")

# Events that are the runtime's own bookkeeping, not ops.
_RUNTIME = ("ThreadpoolListener", "ThunkExecutor", "SlinkyThreadPool", "PjitFunction", "$",
            "CommonPjRt", "ParseArguments", "Handle ", "Allocate", "Wait for", "end: ",
            "PythonRefManager")


def _source_of_ops(hlo_text: str) -> dict:
  """{instruction name: 'fwd|bwd function:line'} from the compiled HLO's stack-frame tables."""
  section, functions, locations, frames, out = None, {}, {}, {}, {}
  for line in hlo_text.splitlines():
    s = line.strip()
    if s in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = s
      continue
    if s.startswith(("%", "ROOT", "ENTRY", "HloModule")) or not s:
      section = None if s.startswith(("%", "ENTRY")) else section
    if section == "FunctionNames" and s[:1].isdigit():
      i, name = s.split(" ", 1)
      functions[int(i)] = name.strip('"')
    elif section == "FileLocations" and s[:1].isdigit():
      m = re.search(r"function_name_id=(\d+) line=(\d+)", s)
      locations[int(s.split(" ")[0])] = f"{functions[int(m.group(1))]}:{m.group(2)}"
    elif section == "StackFrames" and s[:1].isdigit():
      loc = re.search(r"file_location_id=(\d+)", s)
      parent = re.search(r"parent_frame_id=(\d+)", s)
      frames[int(s.split(" ")[0])] = (int(loc.group(1)), int(parent.group(1)) if parent else 0)
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
    if not m:
      continue
    frame = re.search(r"stack_frame_id=(\d+)", line)
    op = re.search(r'op_name="([^"]*)"', line)
    where = locations.get(frames.get(int(frame.group(1)), (0, 0))[0], "?") if frame else "?"
    direction = "bwd" if op and "transpose(" in op.group(1) else "fwd"
    out[m.group(1)] = f"{direction} {where}"
  return out


def main(argv):
  del argv
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import jax  # pylint: disable=import-outside-toplevel
  from xprof.convert import raw_to_tool_data  # pylint: disable=import-outside-toplevel
  c = step_throughput._CONFIG.value  # pylint: disable=protected-access
  b = step_throughput.build(c)
  args = [b["state"], b["batch"], jax.random.key(0), b["t_params"]]
  compiled = b["step_fn"].lower(*args).compile()
  source = _source_of_ops(compiled.as_text())

  def run(n):
    for _ in range(n):
      out = compiled(*args)
      jax.block_until_ready(out)
      args[0] = out[0]

  run(2)
  jax.profiler.start_trace(_TRACE_DIR.value)
  run(_STEPS.value)
  jax.profiler.stop_trace()
  files = sorted(glob.glob(os.path.join(_TRACE_DIR.value, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)[-1:]
  data, _ = raw_to_tool_data.xspace_to_tool_data(files, "trace_viewer", {})
  events = json.loads(data)
  events = events["traceEvents"] if isinstance(events, dict) else events
  by_kind, by_source = collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e["name"].startswith(_RUNTIME):
      continue
    ms = e.get("dur", 0) / 1e3 / _STEPS.value
    by_kind[re.sub(r"\.\d+$", "", e["name"])] += ms
    by_source[source.get(e["name"], "unattributed")] += ms
  total = sum(by_kind.values())
  top = lambda counter: {k: round(v, 1) for k, v in counter.most_common(_TOP.value)}
  policy = b["precision"]
  print(json.dumps({"bench": "profile_step", "dtype": policy.dtype,
                    "teacher_dtype": policy.teacher_dtype, "precision": policy.as_dict(),
                    "op_ms_per_step_all_threads": round(total, 1),
                    # YNNPACK runs the matmuls (and a few reductions); the rest is XLA's own
                    # elementwise fusions, copies and transposes.
                    "ynn_share": round(by_kind["ynn_fusion"] / max(total, 1e-9), 3),
                    "by_kind_ms": top(by_kind), "by_source_ms": top(by_source),
                    "trace": files[0]}))


if __name__ == "__main__":
  app.run(main)
