"""The package stays readable: no file over 400 lines, no import cycle between its modules."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "distill")
MAX_LINES = 400


def _modules() -> dict:
  """{dotted module name: file path} for every .py file of the package."""
  out = {}
  for d, dirs, files in os.walk(PKG):
    dirs[:] = [x for x in dirs if x != "__pycache__"]
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return out


def _resolve(name: str, mods: dict):
  """The module `name` loads: itself, or the nearest enclosing module that exists."""
  while name and name not in mods:
    name = name.rpartition(".")[0]
  return name or None


def _top_level_imports(tree):
  """Import statements run at import time: at module level, or inside a top-level if/try."""
  for node in tree.body:
    nested = isinstance(node, (ast.If, ast.Try))
    for n in (ast.walk(node) if nested else [node]):
      if isinstance(n, (ast.Import, ast.ImportFrom)):
        yield n


def import_graph() -> dict:
  """{module: set of package modules it imports at module level}.

  `from pkg import name` counts as an import of `pkg.name` when that is a module, else of
  `pkg`. A submodule's implicit import of its parent package is not an edge: a package whose
  __init__ re-exports its submodules is the normal layout, not a cycle.
  """
  mods = _modules()
  graph = {}
  for mod, path in mods.items():
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    is_pkg = path.endswith("__init__.py")
    deps = set()
    for n in _top_level_imports(tree):
      if isinstance(n, ast.Import):
        deps |= {_resolve(a.name, mods) for a in n.names if a.name.split(".")[0] == "distill"}
        continue
      if n.level:  # relative import
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[:len(base) - n.level + 1]
        target = ".".join(base + ([n.module] if n.module else []))
      else:
        target = n.module or ""
      if target.split(".")[0] != "distill":
        continue
      for a in n.names:
        sub = f"{target}.{a.name}"
        deps.add(sub if sub in mods else _resolve(target, mods))
    deps.discard(None)
    deps.discard(mod)
    graph[mod] = deps
  return graph


def find_cycle(graph: dict):
  """One cycle as [a, b, ..., a], or None."""
  state, stack = {}, []

  def visit(u):
    state[u] = "open"
    stack.append(u)
    for v in sorted(graph.get(u, ())):
      if state.get(v) == "open":
        return stack[stack.index(v):] + [v]
      if v not in state:
        found = visit(v)
        if found:
          return found
    stack.pop()
    state[u] = "done"
    return None

  for u in sorted(graph):
    if u not in state:
      found = visit(u)
      if found:
        return found
  return None


def test_no_file_over_400_lines():
  long = {}
  for path in _modules().values():
    rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
    with open(path, encoding="utf-8") as f:
      n = sum(1 for _ in f)
    if n > MAX_LINES:
      long[rel] = n
  assert not long, f"over {MAX_LINES} lines (split by concern): {long}"


def test_no_import_cycle_between_package_modules():
  cycle = find_cycle(import_graph())
  assert cycle is None, "module-level import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_cycles():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"b"}}) is None
  # The graph is real: the package's modules import one another.
  graph = import_graph()
  assert "distill.objectives" in graph["distill.train"]
  assert "distill.losses.core" in graph["distill.losses.sparse"]
