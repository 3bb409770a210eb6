"""Shared CLI error handling: one line naming the problem and the fix, and an exit code.

Exit 2 for usage mistakes (bad config, bad flags, bad paths), 1 for runtime failures and for
an export that failed its verification gate (`errors.GateError`, raised once its file, card
and the report are written). Full tracebacks only with --verbose.
"""
from __future__ import annotations

import os
import re
import sys
import traceback

from distill import errors
from distill.cli import quiet
from distill.cli.config_files import config_names, resolve_config

# Exit 2: the user gave something wrong. ValueError covers the library's own argument checks
# (and every errors.UsageError); FileNotFoundError a path that is not there.
USAGE_ERRORS = (errors.UsageError, ValueError, FileNotFoundError)


def run_main(argv, fn, *, verbose: bool, arg_hint: str, quiet_level: str = "warning") -> int:
  """The shared body of every CLI's `main`: refuse stray arguments, quiet library logs, run.

  Orbax, TFDS and TensorFlow log every file they touch; the console is for our own lines.
  """
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:  # e.g. an override without its dashes would otherwise be ignored
    print(f"error: unexpected arguments {argv[1:]}; {arg_hint}", file=sys.stderr)
    return 2
  quiet.start()  # before any JAX backend or TensorFlow library loads
  absl_logging.set_verbosity(absl_logging.DEBUG if verbose else quiet_level)
  return guarded(fn, verbose=verbose)


def guarded(fn, *, verbose: bool = False) -> int:
  try:
    return fn() or 0
  except KeyboardInterrupt:
    print("interrupted; re-run the same command to resume", file=sys.stderr)
    return 130
  except errors.Preempted as e:  # SIGTERM with a checkpoint saved: a clean exit
    print(str(e), file=sys.stderr)
    return 0
  except errors.GateError as e:  # everything else is written; the gate's verdict is the exit
    if verbose:
      traceback.print_exc()
    print(f"error: {_first_line(e)}", file=sys.stderr)
    return 1
  except Exception as e:  # pylint: disable=broad-except
    if verbose:
      traceback.print_exc()
    usage = isinstance(e, USAGE_ERRORS)
    print(f"error: {_first_line(e)}", file=sys.stderr)
    return 2 if usage else 1


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _config_flag_error(e: Exception, argv) -> str:
  """One line for an ml_collections override naming a field the config does not have.

  Read from the message text because ml_collections (1.1) puts the field nowhere else: its
  config_path raises KeyError(message) and ConfigDict re-raises that as
  AttributeError(KeyError(message)), with difflib's 'Did you mean "x" instead of "y"?'
  appended. Two forms: "'field'..." (a ConfigDict without that key) and "Attribute <class
  'float'>.field does not exist ..." (a path through a leaf). The flag is then the override in
  argv whose path holds that field.
  """
  text = str(e).replace("\\n", " ").replace("\\'", "'").replace('\\"', '"')
  m = (re.search(r"Attribute <class '[^']*'>\.(\S+) does not exist", text) or
       re.search(r"'([^'\s]+)'", text))
  field = m.group(1) if m else "?"
  flag = next((a for a in argv if a.startswith("--config.") and
               re.search(rf"\.{re.escape(field)}(\.|\[|$)", a.split("=", 1)[0])),
              f"--config....{field}")
  hint = re.search(r'Did you mean "([^"]+)"', text)
  fix = (f"did you mean {hint.group(1)!r}?" if hint else
         "see the commented fields in your configs/*.py file")
  return f"{flag.split('=')[0]}: the config has no field {field!r}; {fix}"


def parse_flags(argv):
  """absl `flags_parser` for our CLIs: a bad flag is one `error:` line and exit 2.

  absl prints its own multi-line usage and ml_collections a traceback for a typo in a
  `--config.x.y=` override; both bury the one thing the user got wrong.
  """
  from absl import flags  # pylint: disable=import-outside-toplevel
  try:
    rest = flags.FLAGS(argv, known_only=False)
  except flags.UnrecognizedFlagError as e:
    name = getattr(e, "flagname", "") or str(e)
    sugg = re.findall(r"Did you mean: ([\w.-]+)", str(e))
    fix = f"did you mean --{sugg[0]}?" if sugg else "run with --helpshort to list the flags"
    _die(f"unknown flag --{name}; {fix}")
  except flags.Error as e:
    msg = " ".join(str(e).split("\n")[0].split()).removeprefix("flag ")
    if "Error whilst parsing config file" in str(e):
      cause = [l.strip() for l in str(e).splitlines() if l.strip()][-1]
      _die(f"{msg.split(':', 1)[0]} failed to load ({cause}); fix the config file")
    _die(f"{msg}; give a value of the field's type (see the config file)")
  except (AttributeError, KeyError) as e:  # ml_collections: no such field
    _die(_config_flag_error(e, argv))
  except errors.MissingDependencyError as e:  # the config is fine; the machine lacks a package
    _die(str(e))
  except Exception as e:  # pylint: disable=broad-except
    # Anything else comes from executing a config file (syntax error, NameError, ...).
    where = next((a for a in argv if a.startswith("--config=")), "the command line")
    first = (str(e).strip().splitlines() or [""])[0]
    _die(f"{where} failed to load ({type(e).__name__}: {first}); fix the config file")
  return rest


def check_config_file(flag_name: str = "config"):
  """Raise FileNotFoundError/ValueError when ml_collections could not load the config file.

  ml_collections defers a failed load until the config is first touched; touch it here so the
  user reads which file failed and why, not a traceback from deep inside the pipeline.
  """
  from absl import flags  # pylint: disable=import-outside-toplevel
  flag = flags.FLAGS[flag_name]
  try:
    flag.value.keys()
  except OSError as e:
    path = getattr(flag, "config_filename", "") or ""
    if not os.path.exists(resolve_config(path).split(":")[0]):
      names = ", ".join(config_names()) or "tiny"
      raise FileNotFoundError(f"--{flag_name}={path}: no such config file; give a path such as "
                              f"configs/tiny.py or a shipped config's name ({names})") from None
    cause = str(e.__cause__ or e).strip().splitlines() or ["?"]
    raise ValueError(f"--{flag_name}={path} failed to load ({cause[-1][:160]}); fix the file"
                     ) from None


def define_config(name: str = "config", default: str | None = None, help_string: str = "",
                  lock_config: bool = True):
  """`config_flags.DEFINE_config_file` whose value may also be a shipped config's name.

  Overrides (`--config.distill.steps=2`) work as before; only the file lookup changes.
  """
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  # The parser class is public in the module that defines it, not re-exported by the package.
  from ml_collections.config_flags import config_flags as config_flags_impl  # pylint: disable=import-outside-toplevel

  class _Parser(config_flags_impl.ConfigFileFlagParser):

    def parse(self, path):
      return super().parse(resolve_config(path))

  holder = config_flags.DEFINE_config_file(
      name, resolve_config(default) if default else None,
      help_string or "A configs/*.py file, or a shipped config's name (e.g. tiny).",
      lock_config=lock_config)
  flags.FLAGS[name].parser = _Parser(name=name, lock_config=lock_config)
  return holder


def _die(msg: str):
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(2)
