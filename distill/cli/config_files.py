"""Config files by path or by name, from a clone or from an installed package.

The shipped configs live in the repository's `configs/` folder; an installed distribution
carries the same files as the package `distill_configs` (pyproject.toml maps it), so nothing
generic named `configs` lands in site-packages. `--config=tiny` (or `tiny.py`,
`configs/tiny.py`, `tiny:small`) names one of them; an existing path is used as given.
A config reaches its siblings with `sibling("base")`, which works however it was loaded:
from a path by ml_collections, as `configs.tiny` in a clone, as `distill_configs.tiny`.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

# The repository's configs/ beside the distill package (a clone or an editable install).
_CLONE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "configs")


def shipped_dirs() -> list[str]:
  """Where shipped configs are, in lookup order: ./configs (the clone you stand in), the
  installed `distill_configs`, the clone this package was imported from."""
  dirs = [os.path.join(os.getcwd(), "configs")]
  spec = importlib.util.find_spec("distill_configs")
  if spec is not None:
    dirs += list(spec.submodule_search_locations or [])
  dirs.append(_CLONE)
  out = []
  for d in dirs:
    if os.path.isfile(os.path.join(d, "base.py")) and os.path.realpath(d) not in map(
        os.path.realpath, out):
      out.append(d)
  return out


def config_names() -> list[str]:
  """Names of the shipped configs (what `--config=NAME` accepts)."""
  return sorted({f[:-3] for d in shipped_dirs() for f in os.listdir(d)
                 if f.endswith(".py") and not f.startswith("_")})


def resolve_config(arg: str) -> str:
  """`--config=` value -> a config file path ml_collections can load; `:variant` is kept."""
  path, sep, rest = arg.partition(":")
  if not path or os.path.exists(path):
    return arg
  name = path.removeprefix("configs/").removesuffix(".py")
  if not name.isidentifier():
    return arg
  for d in shipped_dirs():
    candidate = os.path.join(d, name + ".py")
    if os.path.isfile(candidate):
      return candidate + sep + rest
  return arg


def sibling(name: str):
  """The shipped config module `name` (e.g. "base"), loaded once per process."""
  if importlib.util.find_spec("distill_configs") is not None:
    return importlib.import_module(f"distill_configs.{name}")
  key = f"distill_configs_{name}"  # a clone without an install: by path, under our own name
  if key not in sys.modules:
    path = os.path.join(_CLONE, name + ".py")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]
