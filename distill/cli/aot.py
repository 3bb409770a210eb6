"""`python -m distill.aot`: flags for `distill.run.aot` (compile the step for a TPU topology)."""
import json
import sys

from absl import app, flags
from ml_collections import config_flags

from distill.run import aot  # first: it sets libtpu's compile-only environment before jax loads
from distill.cli import common
from distill.errors import ConfigError

_CONFIG = common.define_config("config")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:16x16; default: the "
                                "config's `topology` field, else the preset's.")
_LAYERS = flags.DEFINE_integer("layers", 0, "0: compile the full depth. k > 0: compile k and 2k "
                               "layers and extrapolate (labelled in the output).")

def main(argv):
  del argv
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.WARNING)
  if _CONFIG.value is None:
    print("error: --config is required, e.g. --config=configs/tpu_v5e_gemma7b_to_300m.py",
          file=sys.stderr)
    return 2
  try:
    out = aot.analyze(_CONFIG.value, _TOPOLOGY.value, _LAYERS.value)
    out["config"] = config_flags.get_config_filename(flags.FLAGS["config"])
  except (aot.AotError, ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(out), flush=True)
  if not out["fits"]:
    bound = " at least" if "error" in out else ""
    print(f"error: {out['total_gib']} GiB per device{bound} does not fit in "
          f"{out['hbm_gib']} GiB on {out['topology']}", file=sys.stderr)
    return 1
  return 0


def run_cli():
  app.run(main, flags_parser=common.parse_flags)
