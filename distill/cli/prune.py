"""`python -m distill.prune`: write a pruned teacher as a normal stage directory.

  python -m distill.prune --teacher=runs/tiny/teacher --out=/tmp/pruned --depth=2 \
      --width.d_model=64 --width.d_ff=192 --width.heads=4 [--vocab=K] [--calib_batches=8] \
      [--method=activation|random] [--config=configs/tiny.py]

`--teacher` is a stage directory or `hf:DIR`. Calibration batches come from the transfer set
of `--config`'s data section, tokenized with the teacher's tokenizer. Every target shape is
checked before anything is loaded or written: an impossible one is one `error:` line, exit 2.
"""
import os
import tempfile

from absl import app, flags

from distill.cli import common as cli
from distill.inference import stage
from distill.methods.prune import core
from distill.models import hf
from distill.run import settings, student_init as pipeline_init
from distill.errors import ConfigError

_CONFIG = cli.define_config("config", "tiny", "configs/*.py file (or a shipped config's name) "
                            "whose data section gives the calibration (transfer) set.")
_TEACHER = flags.DEFINE_string("teacher", None, "Teacher stage directory or hf:DIR.")
_OUT = flags.DEFINE_string("out", None, "Output stage directory (must not exist).")
_DEPTH = flags.DEFINE_integer("depth", None, "Blocks to keep (default: all).")
_D_MODEL = flags.DEFINE_integer("width.d_model", None, "Embedding channels to keep.")
_D_FF = flags.DEFINE_integer("width.d_ff", None, "MLP neurons per block to keep.")
_HEADS = flags.DEFINE_integer("width.heads", None, "Query heads per block to keep (a multiple "
                              "of the teacher's KV group size).")
_VOCAB = flags.DEFINE_integer("vocab", None, "Keep the K most frequent token ids of the "
                              "transfer set plus special and byte-fallback tokens.")
_CALIB = flags.DEFINE_integer("calib_batches", 8, "Calibration batches for the importance pass.")
_METHOD = flags.DEFINE_string("method", "activation", "activation (Minitron ranking) or random.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random method.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Where data caches go ('' = a temporary dir).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and debug logs.")


def main(argv):
  return cli.run_main(argv, _run, verbose=_VERBOSE.value,
                      arg_hint="flags look like --width.d_ff=192")


def _teacher_config(path):
  if path.startswith("hf:"):
    return hf.model_config(hf.read_config(path[3:]), "float32")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"--teacher={path} does not exist; give a stage directory such as "
                            "runs/tiny/teacher or hf:/path")
  return stage.read_model_config(path)


def _run():
  if not _TEACHER.value or not _OUT.value:
    raise ConfigError("--teacher and --out are required, e.g. --teacher=runs/tiny/teacher "
                      "--out=/tmp/pruned")
  if os.path.exists(_OUT.value):
    raise ConfigError(f"--out={_OUT.value} already exists; give a new directory")
  if _METHOD.value not in core.METHODS:
    raise ConfigError(f"--method={_METHOD.value!r} is unknown; use one of "
                      f"{', '.join(core.METHODS)}")
  if _CALIB.value < 1:
    raise ConfigError(f"--calib_batches={_CALIB.value} must be >= 1")
  t_cfg = _teacher_config(_TEACHER.value)
  # Shape errors before any weight is read or any file written.
  target = core.target_config(t_cfg, n_layers=_DEPTH.value, d_model=_D_MODEL.value,
                              d_ff=_D_FF.value, n_heads=_HEADS.value)
  cli.check_config_file("config")
  config = _CONFIG.value
  with tempfile.TemporaryDirectory() as tmp:
    info = pipeline_init.prune_to_stage(
        _TEACHER.value, _OUT.value, target, data_spec=settings.data_spec(config.data),
        batch_size=int(config.data.batch_size),
        fraction=float(config.distill.transfer_fraction), workdir=_WORKDIR.value or tmp,
        calib_batches=_CALIB.value, method=_METHOD.value, seed=_SEED.value, vocab=_VOCAB.value)
  print(f"pruned {info['teacher_params']:,} -> {info['params']:,} parameters: {_OUT.value}")
  return 0


def run_cli():
  app.run(main, flags_parser=cli.parse_flags)

