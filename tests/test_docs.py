"""The docs match the tree: README is a short user's document linking to pages that exist,
results pages say when, on what code and on what machine, architecture.md draws every module."""
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README_MAX_LINES = 250
# A CPU model as lscpu names it (or as a page names it when lscpu's name was not recorded).
CPU_MODEL = re.compile(r"AMD EPYC|Intel Xeon|\bXeon\b|\bEPYC\b|Ryzen|Core i[3579]|Apple M\d|"
                       r"Graviton|Neoverse|Ampere Altra")
DATE = re.compile(r"\b20\d\d-[01]\d-[0-3]\d\b")
COMMIT = re.compile(r"`[0-9a-f]{7,40}`")


def _read(path):
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return f.read()


def _layout_block(path, heading):
  text = _read(path)
  section = text.split(heading, 1)[1]
  return section.split("```", 2)[1]


def _tree():
  """Top-level folders and files users see, and every module of the distill package."""
  top = {f for f in os.listdir(ROOT) if not f.startswith((".", "__")) and f not in (
      "README.md", "pytest.ini", "runs", "tmp") and not f.startswith("requirements")
         and not f.endswith(".egg-info")}
  mods = {f for f in os.listdir(os.path.join(ROOT, "distill"))
          if f.endswith(".py") and f != "__init__.py" or
          os.path.isdir(os.path.join(ROOT, "distill", f)) and f != "__pycache__"}
  return top, mods


def _mentions(block, name):
  stem = name[:-3] if name.endswith(".py") else name
  return re.search(rf"(^|[\s/,]){re.escape(stem)}(\.py|/|\b)", block, re.M) is not None


def _results_pages():
  return sorted(glob.glob(os.path.join(ROOT, "docs", "results", "*.md")))


def test_readme_is_at_most_250_lines():
  n = len(_read("README.md").splitlines())
  assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail to docs/"


def test_readme_links_to_results_and_guides_exist():
  text = _read("README.md")
  links = re.findall(r"\]\((docs/(?:results|guides)/[^)#\s]+\.md)(?:#[^)]*)?\)", text)
  assert links, "README.md links no docs/results or docs/guides page"
  missing = sorted({l for l in links if not os.path.isfile(os.path.join(ROOT, l))})
  assert not missing, f"README.md links missing pages: {missing}"
  # and every results page is reachable from the README
  pages = {os.path.relpath(p, ROOT).replace(os.sep, "/") for p in _results_pages()}
  unlinked = sorted(pages - set(links))
  assert not unlinked, f"results pages the README does not link: {unlinked}"


def test_every_results_page_names_date_commit_and_cpu():
  pages = _results_pages()
  assert pages, "no docs/results/*.md"
  for path in pages:
    text = open(path, encoding="utf-8").read()
    name = os.path.relpath(path, ROOT)
    assert DATE.search(text), f"{name} names no date (YYYY-MM-DD)"
    assert COMMIT.search(text), f"{name} names no commit (7+ hex digits in backticks)"
    assert CPU_MODEL.search(text), f"{name} names no CPU model"


def test_readme_has_no_session_vocabulary_or_commit_hashes():
  text = _read("README.md")
  for word in ("session", "acceptance"):
    assert word not in text.lower(), f"README.md says {word!r}: that belongs in history, not docs"
  hashes = [h for h in re.findall(r"\b[0-9a-f]{7,40}\b", text) if re.search(r"[a-f]", h)
            and re.search(r"\d", h)]
  assert not hashes, f"README.md names commit hashes {hashes}; results pages hold provenance"


def test_readme_keeps_the_two_setup_commands():
  text = _read("README.md")
  assert "pip install -r requirements.txt && python -m distill.main --config=configs/tiny.py" in text
  assert "pip install -r requirements-dev.txt && python -m pytest -q" in text


def test_architecture_doc_names_every_module():
  block = _layout_block("docs/architecture.md", "## Layout")
  _, mods = _tree()
  missing = sorted(n for n in mods if not _mentions(block, n))
  assert not missing, f"docs/architecture.md ## Layout does not mention {missing}"


def test_readme_links_the_architecture_inside_the_repo():
  text = _read("README.md")
  assert "(docs/architecture.md)" in text and "../shared/" not in text


def test_docs_links_resolve():
  """Relative links between the docs (README, docs/**, launch/README.md) point at files."""
  files = ["README.md", "launch/README.md"] + [
      os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                 recursive=True)]
  broken = []
  for rel in files:
    base = os.path.dirname(os.path.join(ROOT, rel))
    for target in re.findall(r"\]\(([^)\s]+)\)", _read(rel)):
      if re.match(r"[a-z]+:", target) or target.startswith("#"):
        continue
      path = os.path.normpath(os.path.join(base, target.split("#", 1)[0]))
      if not os.path.exists(path):
        broken.append(f"{rel} -> {target}")
  assert not broken, f"broken doc links: {broken}"


def _readme_commands():
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
  out = []
  for block in blocks:
    for line in block.splitlines():
      for part in line.split("&&"):
        words = part.split()
        if words[:2] == ["python", "-m"] and words[2].startswith("distill."):
          out.append((words[2].split(".", 1)[1], words[3:]))
        elif words and (words[0] == "distill" or words[0].startswith("distill-")):
          name = "main" if words[0] == "distill" else words[0][len("distill-"):].replace("-", "_")
          out.append((name, words[1:]))
  return out


def test_readme_commands_name_real_clis_flags_configs_and_fields():
  """Every `python -m distill.X` / console-script line of the README names a CLI that exists,
  flags it defines, a config that resolves and config fields that config has."""
  import importlib  # pylint: disable=import-outside-toplevel
  from distill.cli import config_files  # pylint: disable=import-outside-toplevel
  commands = _readme_commands()
  assert {"main", "generate", "aot"} <= {name for name, _ in commands}, commands
  for name, args in commands:
    src = open(os.path.join(ROOT, "distill", "cli", f"{name}.py")).read()
    config = None
    for arg in args:
      flag, _, value = arg.lstrip("-").partition("=")
      if flag.startswith("config."):
        assert config is not None, (name, arg)
        node = config
        for part in flag.split(".")[1:]:
          assert part in node, (name, arg)
          node = node[part]
        continue
      assert re.search(rf"""(DEFINE_\w+|define_config)\(\s*["']{re.escape(flag)}["']""", src), (
          name, flag)
      if flag == "config":
        path, _, variant = config_files.resolve_config(value).partition(":")
        assert os.path.isfile(path), (name, value)
        spec = importlib.util.spec_from_file_location("readme_config", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        config = module.get_config(variant) if variant else module.get_config()
