"""The README's layout section and docs/architecture.md match the tree."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _layout_block(path, heading):
  text = open(os.path.join(ROOT, path)).read()
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


def test_readme_layout_names_every_module_and_folder():
  block = _layout_block("README.md", "## Layout")
  top, mods = _tree()
  missing = sorted(n for n in top | mods if not _mentions(block, n))
  assert not missing, f"README ## Layout does not mention {missing}"
  for line in block.splitlines():  # and names nothing that is gone
    m = re.match(r"(distill/[\w/]+\.py)", line)
    if m:
      assert os.path.exists(os.path.join(ROOT, m.group(1))), line


def test_architecture_doc_names_every_module():
  block = _layout_block("docs/architecture.md", "## Layout")
  _, mods = _tree()
  missing = sorted(n for n in mods if not _mentions(block, n))
  assert not missing, f"docs/architecture.md ## Layout does not mention {missing}"


def test_readme_links_the_architecture_inside_the_repo():
  text = open(os.path.join(ROOT, "README.md")).read()
  assert "(docs/architecture.md)" in text and "../shared/" not in text
