"""The package's shape: layers that import downward only, no import cycles (lazy imports
included), few and explained lazy imports of its own modules, no re-export shims, and no run
config read below distill/run and distill/cli.

Every check reads the source (ast), never imports it. The graph builder takes a root directory
and a package name, so tests/ can run it on a planted package too.
"""
from __future__ import annotations

import ast
import dataclasses
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "distill"

# Lower layers never import upper ones. A module's layer is its first path component under
# distill/ (distill.models.hf.params -> models).
LAYERS = ("errors", "losses", "data", "models", "train", "inference", "methods", "eval",
          "export", "run", "cli")
# distill/__init__.py and the `python -m distill.X` launchers (distill/<name>.py) sit above
# every layer: they may import anything, and nothing in a layer may import them.
TOP = len(LAYERS)

# At most this many function-level imports of distill modules, each with its reason written on
# the import line or the line above it.
MAX_LAZY_PROJECT_IMPORTS = 8
# Heavy optional third-party modules may be imported lazily without limit: importing them inside
# the function that needs them keeps them off every other path (and optional installs
# optional). Only imports of distill modules are counted, so these never are; the list says
# the exemption is deliberate, and a planted package checks it.
HEAVY_OPTIONAL = ("tensorflow", "gguf", "libtpu", "litert", "litert_lm", "litert_lm_builder",
                  "litert_lm_api", "ai_edge_litert", "ai_edge_quantizer", "ai_edge_torch",
                  "torch", "transformers", "tensorflow_datasets", "matplotlib", "tensorboardX",
                  "sentencepiece", "tokenizers")
HEAVY_PREFIXES = ("litert", "ai_edge_")

# The run config's sections and top-level fields (configs/base.py).
CONFIG_FIELDS = ("data", "distill", "student", "teacher", "baseline", "eval", "export",
                 "optimizer", "train", "mesh", "on_policy", "hidden", "pretrain", "prune",
                 "checkpoint_every", "log_every", "compute_dtype", "preset", "topology", "seed",
                 "teachers")
# Names a module calls the run config by.
CONFIG_NAMES = ("c", "config", "conf")


# ---------------------------------------------------------------------------------------------
# Reading the package.


def modules(root: str = ROOT, package: str = PACKAGE) -> dict:
  """{dotted module name: file path} for every .py file of `package` under `root`."""
  out = {}
  for d, dirs, files in os.walk(os.path.join(root, package)):
    dirs[:] = sorted(x for x in dirs if x != "__pycache__")
    for f in sorted(files):
      if f.endswith(".py"):
        path = os.path.join(d, f)
        name = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return out


def _resolve(name: str, mods: dict):
  """The module `name` loads: itself, or the nearest enclosing module that exists."""
  while name and name not in mods:
    name = name.rpartition(".")[0]
  return name or None


@dataclasses.dataclass(frozen=True)
class Import:
  """One imported module of one import statement."""
  src: str          # the importing module
  path: str         # its file
  line: int         # first and last line of the statement
  end_line: int
  target: str       # the imported module: a project module, or a third-party/stdlib name
  project: bool     # target is a module of the package
  lazy: bool        # inside a function (runs when the function does, not at import)


def _parents(tree):
  parents = {}
  for node in ast.walk(tree):
    for child in ast.iter_child_nodes(node):
      parents[child] = node
  return parents


def _in_function(node, parents) -> bool:
  while node in parents:
    node = parents[node]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      return True
  return False


def imports(root: str = ROOT, package: str = PACKAGE) -> list:
  """Every import of every module of `package`, lazy ones included (all AST nodes walked).

  `from pkg import name` imports `pkg.name` when that is a module, else `pkg`. A submodule's
  implicit import of its parent package is not counted: a package whose __init__ re-exports
  its submodules is the normal layout, not a cycle. Relative imports are resolved.
  """
  mods = modules(root, package)
  out = []
  for mod, path in mods.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    parents = _parents(tree)
    is_pkg = path.endswith("__init__.py")
    for n in ast.walk(tree):
      if not isinstance(n, (ast.Import, ast.ImportFrom)):
        continue
      targets = []
      if isinstance(n, ast.Import):
        for a in n.names:
          if a.name.split(".")[0] == package:
            targets.append((_resolve(a.name, mods), True))
          else:
            targets.append((a.name, False))
      else:
        if n.level:  # relative import
          base = mod.split(".") if is_pkg else mod.split(".")[:-1]
          base = base[:len(base) - n.level + 1]
          origin = ".".join(base + ([n.module] if n.module else []))
        else:
          origin = n.module or ""
        if origin.split(".")[0] != package:
          targets.append((origin, False))
        else:
          for a in n.names:
            sub = f"{origin}.{a.name}"
            targets.append((sub if sub in mods else _resolve(origin, mods), True))
      lazy = _in_function(n, parents)
      for target, project in targets:
        if target is None or (project and target == mod):
          continue
        out.append(Import(mod, path, n.lineno, n.end_lineno or n.lineno, target, project, lazy))
  return out


def import_graph(root: str = ROOT, package: str = PACKAGE) -> dict:
  """{module: set of the package's modules it imports}, module-level and lazy imports alike."""
  graph = {m: set() for m in modules(root, package)}
  for imp in imports(root, package):
    if imp.project:
      graph[imp.src].add(imp.target)
  return graph


def find_cycles(graph: dict) -> list:
  """One cycle [a, b, ..., a] through each strongly connected component of more than one
  module (Tarjan), sorted; [] when the graph is acyclic."""
  index, low, on_stack, stack, sccs = {}, {}, set(), [], []

  def strongconnect(u):
    index[u] = low[u] = len(index)
    stack.append(u)
    on_stack.add(u)
    for v in sorted(graph.get(u, ())):
      if v not in index:
        strongconnect(v)
        low[u] = min(low[u], low[v])
      elif v in on_stack:
        low[u] = min(low[u], index[v])
    if low[u] == index[u]:
      scc = set()
      while True:
        v = stack.pop()
        on_stack.discard(v)
        scc.add(v)
        if v == u:
          break
      if len(scc) > 1:
        sccs.append(scc)

  for u in sorted(graph):
    if u not in index:
      strongconnect(u)
  return sorted(_cycle_in(graph, scc) for scc in sccs)


def _cycle_in(graph: dict, scc: set) -> list:
  """A shortest cycle through the smallest-named module of `scc` (breadth-first)."""
  start = min(scc)
  prev, frontier = {start: None}, [start]
  while frontier:
    nxt = []
    for u in frontier:
      for v in sorted(graph.get(u, ())):
        if v == start:
          path = [u]
          while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
          return path[::-1] + [start]
        if v in scc and v not in prev:
          prev[v] = u
          nxt.append(v)
    frontier = nxt
  raise AssertionError(f"no cycle through {start} in {sorted(scc)}")


def layer(mod: str, mods: dict):
  """A module's rank in LAYERS; TOP for the package __init__ and the launchers (modules
  directly in the package, and __main__ modules); None for a subpackage the table does not
  name."""
  parts = mod.split(".")
  if len(parts) == 1 or parts[-1] == "__main__":  # the package, or `python -m distill.export`
    return TOP
  if parts[1] in LAYERS:
    return LAYERS.index(parts[1])
  sub = ".".join(parts[:2])
  is_package = mods.get(sub, "").endswith("__init__.py")
  return None if is_package or len(parts) > 2 else TOP


def _rel(path: str) -> str:
  return os.path.relpath(path, ROOT).replace(os.sep, "/")


_DIRECTIVE = re.compile(r"\b(pylint|pytype|pyright|mypy)\s*:\s*[\w\-,= ]*|\bnoqa\b(:\s*[\w, ]+)?"
                        r"|\btype:\s*ignore\S*", re.I)


def _reason(lines: list, imp: Import) -> str:
  """The comment explaining `imp`: on one of its lines, or a comment line just above it;
  lint directives (pylint:, noqa, type: ignore) are not reasons."""
  candidates = [lines[i - 1] for i in range(imp.line, imp.end_line + 1)]
  if imp.line >= 2 and lines[imp.line - 2].lstrip().startswith("#"):
    candidates.append(lines[imp.line - 2])
  for text in candidates:
    if "#" not in text:
      continue
    comment = text.split("#", 1)[1]
    words = re.findall(r"[A-Za-z]{2,}", _DIRECTIVE.sub(" ", comment))
    if len(words) >= 3:
      return comment.strip()
  return ""


def _heavy(name: str) -> bool:
  top = name.split(".")[0]
  return top in HEAVY_OPTIONAL or top.startswith(HEAVY_PREFIXES)


def _by_place(rows):
  """Sorted by file, then line number."""
  def key(row):
    where = row.split(" ", 1)[0]
    path, _, line = where.rpartition(":")
    return (path, int(line) if line.isdigit() else 0, row)
  return sorted(rows, key=key)


def lazy_project_imports(root: str = ROOT, package: str = PACKAGE) -> tuple:
  """(explained, unexplained): one "path:line src -> targets (reason)" per function-level
  import statement of project modules."""
  statements, cache = {}, {}
  for imp in imports(root, package):
    if imp.lazy and imp.project:
      statements.setdefault((imp.path, imp.line), []).append(imp)
  explained, unexplained = [], []
  for (path, line), imps in statements.items():
    if path not in cache:
      with open(path, encoding="utf-8") as f:
        cache[path] = f.read().splitlines()
    why = _reason(cache[path], imps[0])
    targets = ", ".join(sorted({i.target for i in imps}))
    row = f"{_rel(path)}:{line} {imps[0].src} -> {targets}"
    (explained if why else unexplained).append(f"{row} ({why})" if why else row)
  return _by_place(explained), _by_place(unexplained)


# ---------------------------------------------------------------------------------------------
# The checks on distill/.


def test_no_import_cycle_between_project_modules():
  cycles = find_cycles(import_graph())
  assert not cycles, (f"{len(cycles)} import cycle(s), lazy imports included:\n" +
                      "\n".join(" -> ".join(c) for c in cycles))


def upward_imports(root: str = ROOT, package: str = PACKAGE) -> tuple:
  """(violations, unplaced modules): "path:line src -> target (...)" for every import of a
  higher layer (or of the top) from a lower one, and for any import of the package by its
  errors module."""
  mods = modules(root, package)
  bad, unplaced = [], set()
  for imp in imports(root, package):
    if not imp.project:
      continue
    src, dst = layer(imp.src, mods), layer(imp.target, mods)
    for m, r in ((imp.src, src), (imp.target, dst)):
      if r is None:
        unplaced.add(m)
    if src is None or dst is None or src == TOP:
      continue
    if imp.src == f"{package}.errors" or dst > src:
      kind = "lazy " if imp.lazy else ""
      bad.append(f"{_rel(imp.path)}:{imp.line} {imp.src} -> {imp.target} ({kind}import of "
                 f"{'the top' if dst == TOP else LAYERS[dst]} from {LAYERS[src]})")
  return _by_place(bad), sorted(unplaced)


def test_lower_layers_never_import_upper_ones():
  bad, unplaced = upward_imports()
  assert not unplaced, f"modules in no layer of {LAYERS}: {unplaced}"
  assert not bad, (f"{len(bad)} upward import(s) (layers: {' < '.join(LAYERS)}; "
                   "distill/errors.py imports nothing from distill):\n" + "\n".join(bad))


def test_layer_check_on_a_planted_package(tmp_path):
  _plant(tmp_path, {"pkg/__init__.py": "from pkg.cli import main\n",
                    "pkg/main.py": "import pkg.cli\n",
                    "pkg/errors.py": "from pkg import losses\n",
                    "pkg/losses/__init__.py": "", "pkg/models/__init__.py": "",
                    "pkg/models/m.py": "from pkg.losses import x\ndef f():\n  import pkg.train\n",
                    "pkg/train.py": "", "pkg/cli/__init__.py": "", "pkg/cli/main.py":
                    "import pkg\nfrom pkg.models import m\n", "pkg/extra/__init__.py": ""})
  bad, unplaced = upward_imports(str(tmp_path), "pkg")
  assert [b.split(" ", 1)[1] for b in bad] == [
      "pkg.cli.main -> pkg (import of the top from cli)",
      "pkg.errors -> pkg.losses (import of losses from errors)",
      "pkg.models.m -> pkg.train (lazy import of train from models)"]
  assert unplaced == []
  _plant(tmp_path, {"pkg/extra/x.py": "from pkg import losses\n"})
  assert upward_imports(str(tmp_path), "pkg")[1] == ["pkg.extra.x"]


def test_lazy_imports_of_project_modules_are_few_and_explained():
  explained, unexplained = lazy_project_imports()
  assert not unexplained, (
      f"{len(unexplained)} function-level import statement(s) of distill modules without a "
      "reason (a comment on the import line or the line above; a lint directive is not one): "
      "move them to the top of the module, or say why they must be lazy "
      f"({len(explained)} explained, at most {MAX_LAZY_PROJECT_IMPORTS} in all):\n" +
      "\n".join(unexplained + [f"(explained) {e}" for e in explained]))
  assert len(explained) <= MAX_LAZY_PROJECT_IMPORTS, (
      f"{len(explained)} explained function-level imports of distill modules; at most "
      f"{MAX_LAZY_PROJECT_IMPORTS}:\n" + "\n".join(explained))


def test_heavy_optional_imports_are_exempt_from_the_count(tmp_path):
  """A lazy `import torch` is free; a lazy project import without a reason is not."""
  pkg = tmp_path / "pkg"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("def f():\n  import torch\n  import tensorflow as tf\n"
                            "  from litert_lm_builder import x\n  from pkg import b\n")
  (pkg / "b.py").write_text("def g():\n  # Lazy: b is only needed when g runs.\n"
                            "  from pkg import a\n  from pkg import a as again  # pylint: x\n")
  lazy = [i for i in imports(str(tmp_path), "pkg") if i.lazy and not i.project]
  assert [i.target for i in lazy] == ["torch", "tensorflow", "litert_lm_builder"]
  assert all(_heavy(i.target) for i in lazy)
  explained, unexplained = lazy_project_imports(str(tmp_path), "pkg")
  assert [e.split(" (")[0] for e in explained] == [f"{_rel(str(pkg / 'b.py'))}:3 pkg.b -> pkg.a"]
  assert unexplained == sorted([f"{_rel(str(pkg / 'a.py'))}:5 pkg.a -> pkg.b",
                                f"{_rel(str(pkg / 'b.py'))}:4 pkg.b -> pkg.a"])


def _plant(root, files: dict):
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cycle_finder_catches_a_planted_lazy_cycle(tmp_path):
  # pkg.a imports pkg.b inside a function, pkg.b imports pkg.a at module level.
  _plant(tmp_path / "bad", {"pkg/__init__.py": "",
                            "pkg/a.py": "def f():\n  from pkg import b\n  return b\n",
                            "pkg/b.py": "import pkg.a\n"})
  graph = import_graph(str(tmp_path / "bad"), "pkg")
  assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
  assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
  # The same modules without the back edge (and a relative import, and a package __init__
  # re-exporting its submodule, which is no cycle): nothing found.
  _plant(tmp_path / "good", {"pkg/__init__.py": "from pkg import a\n",
                             "pkg/a.py": "def f():\n  from . import b\n  return b\n",
                             "pkg/b.py": "import os\n", "pkg/sub/__init__.py": "",
                             "pkg/sub/c.py": "from ..a import f\nfrom pkg.sub import d\n",
                             "pkg/sub/d.py": "import pkg\n"})
  graph = import_graph(str(tmp_path / "good"), "pkg")
  assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.sub.c"] == {"pkg.a", "pkg.sub.d"}
  assert find_cycles(graph) == []
  # A longer cycle, reported once, starting at its smallest module.
  assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [
      ["a", "b", "c", "a"]]


def test_graph_is_the_real_package():
  graph = import_graph()
  assert "distill.losses.core" in graph["distill.losses.sparse"]
  assert "distill.train.objectives" in graph["distill.train.loop"]
  mods = modules()
  assert layer("distill.models.hf.params", mods) == LAYERS.index("models")
  assert layer("distill.main", mods) == layer("distill", mods) == TOP
  assert layer("distill.export.__main__", mods) == TOP


def reexport_shims(root: str = ROOT, package: str = PACKAGE) -> list:
  found = []
  for path in modules(root, package).values():
    with open(path, encoding="utf-8") as f:
      for i, line in enumerate(f, 1):
        if re.search(r"noqa:\s*F401", line):
          found.append(f"{_rel(path)}:{i}: {line.strip()}")
  return _by_place(found)


def test_no_reexport_shims():
  found = reexport_shims()
  assert not found, ("re-export shims (`noqa: F401`): import from the defining module, or "
                     "list public names in __all__:\n" + "\n".join(found))


def test_shim_finder_on_a_planted_package(tmp_path):
  _plant(tmp_path, {"pkg/__init__.py": "from pkg.a import f  # noqa: F401\n",
                    "pkg/a.py": "import os  # noqa: E402\n__all__ = ['f']\ndef f(): pass\n"})
  assert [r.split(": ", 1)[1] for r in reexport_shims(str(tmp_path), "pkg")] == [
      "from pkg.a import f  # noqa: F401"]


# ---------------------------------------------------------------------------------------------
# Config reads stay in distill/run and distill/cli.


def _section_fields() -> set:
  """Every field name under a section of configs/base.py (nested sections included), read
  from its source: `c.<section>.<field> = ...` and `m.<field> = ...` in model()."""
  with open(os.path.join(ROOT, "configs", "base.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  fields = set()
  for node in ast.walk(tree):
    for target in getattr(node, "targets", []):
      chain = []
      while isinstance(target, ast.Attribute):
        chain.append(target.attr)
        target = target.value
      if isinstance(target, ast.Name) and target.id in ("c", "m") and chain:
        fields.add(chain[0])
  return fields - set(CONFIG_FIELDS)


def _config_free(mod: str, mods: dict) -> bool:
  """Modules that may read the run config: distill/run, distill/cli, the launchers and
  distill/__init__.py."""
  return layer(mod, mods) == TOP or mod.split(".")[1] in ("run", "cli")


_DICT_METHODS = {"get", "items", "keys", "values", "update", "copy", "pop", "setdefault",
                 "to_dict", "lock", "unlock"}


def _scopes(tree):
  """The module, then every function: each scope's own nodes (nested functions excluded)."""
  todo = [tree]
  while todo:
    scope = todo.pop()
    nodes, stack = [], list(ast.iter_child_nodes(scope))
    while stack:
      n = stack.pop()
      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        todo.append(n)
        continue
      nodes.append(n)
      stack.extend(ast.iter_child_nodes(n))
    yield nodes


def _root_name(node):
  while isinstance(node, ast.Attribute):
    node = node.value
  return node.id if isinstance(node, ast.Name) else None


def config_reads(root: str = ROOT, package: str = PACKAGE) -> list:
  """"path:line what" for every ml_collections import and run-config read outside the modules
  allowed to read the config.

  A read is `c.<section or top-level field>` (c, config or conf, not bound by an import), or
  `x.get("<field>")` with a field of configs/base.py where `x` is read like a ConfigDict: one
  of those names, or a name the same function also reads config fields from as attributes
  (`d.alpha` and `d.get("alpha_end")`). A JSON dict read with .get (an HF config.json, a
  metrics row) has no attribute reads, so it is not a config read.
  """
  fields = set(CONFIG_FIELDS) | _section_fields()
  found = []
  mods = modules(root, package)
  for mod, path in mods.items():
    if _config_free(mod, mods):
      continue
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    imported = set()
    for n in ast.walk(tree):
      if isinstance(n, (ast.Import, ast.ImportFrom)):
        names = [n.module or ""] if isinstance(n, ast.ImportFrom) else [a.name for a in n.names]
        if any(x.split(".")[0] == "ml_collections" for x in names):
          found.append(f"{_rel(path)}:{n.lineno} imports ml_collections")
        imported |= {(a.asname or a.name).split(".")[0] for a in n.names}
    config_names = set(CONFIG_NAMES) - imported
    for nodes in _scopes(tree):
      attr_read = {n.value.id for n in nodes if isinstance(n, ast.Attribute)
                   and isinstance(n.value, ast.Name) and n.attr in fields
                   and n.attr not in _DICT_METHODS}
      configish = config_names | (attr_read - imported)
      for n in nodes:
        if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            and n.value.id in config_names and n.attr in CONFIG_FIELDS):
          found.append(f"{_rel(path)}:{n.lineno} reads {n.value.id}.{n.attr}")
        elif (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
              and n.func.attr == "get" and _root_name(n.func.value) in configish
              and n.args and isinstance(n.args[0], ast.Constant) and n.args[0].value in fields):
          found.append(f"{_rel(path)}:{n.lineno} reads "
                       f"{ast.unparse(n.func.value)}.get({n.args[0].value!r})")
  return _by_place(set(found))


def test_no_config_reads_below_run_and_cli():
  found = config_reads()
  assert not found, (f"{len(found)} run-config read(s) outside distill/run, distill/cli and "
                     "the launchers (pass typed values in instead):\n" + "\n".join(found))


def test_config_read_finder_flags_reads_and_spares_lookalikes(tmp_path):
  _plant(tmp_path, {"pkg/__init__.py": "", "pkg/run/__init__.py": "import ml_collections\n",
                    "pkg/data/__init__.py": "", "pkg/main.py": "import ml_collections\n",
                    "pkg/data/low.py": ("import ml_collections\nfrom jax import config\n"
                                   "def f(c, rows):\n  x = c.distill.steps\n"
                                   "  y = rows.get('alpha_schedule', 'constant')\n"
                                   "  z = config.data\n  w = other.distill\n"
                                   "  v = rows.get('host')\n  u = meta.get('loss')\n"
                                   "  return x, y, z, w, v, u, rows.alpha\n")})
  assert [r.split(" ", 1)[1] for r in config_reads(str(tmp_path), "pkg")] == [
      "imports ml_collections", "reads c.distill", "reads rows.get('alpha_schedule')"]
