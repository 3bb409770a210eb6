"""Entry point: `python -m distill.main --config=configs/tiny.py [--workdir=runs/tiny]`.

Flags only; the work is `distill.run.pipeline.run(config, workdir)`, which Colab and tests call too.
Overrides: `--config.distill.temperature=2 --config.data.seq_len=256 ...`.
"""
import os

from absl import app, flags

from distill.cli import common as cli
from distill.errors import GateError
from distill.run import pipeline
from distill.run import report

# A configs/*.py path, or a shipped config's name (`--config=tiny`) from any directory.
_CONFIG = cli.define_config("config")
_WORKDIR = flags.DEFINE_string("workdir", "runs/tiny", "Directory for checkpoints and reports.")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show full tracebacks and debug logs.")
_COORD = flags.DEFINE_string("coordinator_address", None,
                             "host:port of process 0 for multi-process runs outside TPU/SLURM.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process runs).")
_PID = flags.DEFINE_integer("process_id", None, "This process's index (multi-process runs).")


def _init_distributed():
  import jax  # pylint: disable=import-outside-toplevel
  if _COORD.value:
    jax.distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
  elif (os.environ.get("DISTILL_MULTIHOST") == "1" or os.environ.get("TPU_WORKER_HOSTNAMES")
        or os.environ.get("SLURM_NTASKS", "1") != "1"):
    jax.distributed.initialize()  # auto-detected on TPU VMs and SLURM


def main(argv):

  def run():
    if _CONFIG.value is None:
      raise ValueError("--config is required, e.g. --config=configs/tiny.py")
    return _run(_WORKDIR.value)
  return cli.run_main(argv, run, verbose=_VERBOSE.value,
                      arg_hint="overrides look like --config.data.seq_len=64")


def _run(workdir):
  cli.check_config_file("config")
  config = _CONFIG.value
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir={workdir} is a file; give a directory path")
  _init_distributed()
  try:
    rep = pipeline.run(config, workdir)
  except GateError as e:  # the results are written: show them, then the one error line
    if e.report:
      _summary(e.report, workdir)
    raise
  _summary(rep, workdir)
  return 0


def _summary(rep: dict, workdir: str) -> None:
  print(report.table(rep))
  if "gap_closed" in rep:
    print(f"gap closed: {rep['gap_closed']:.3f}   report: {os.path.join(workdir, 'report.md')}")


def run_cli():
  app.run(main, flags_parser=cli.parse_flags)

