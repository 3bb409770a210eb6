"""Both Colab notebooks run headless, top to bottom, in their SMALL mode, from a directory that
is not the repository (the package importable as if installed: PYTHONPATH stands in for pip)."""
import os
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _execute(name, tmp_path, monkeypatch):
  path = os.path.join(ROOT, "colab", name)
  nb = nbformat.read(path, as_version=4)
  first = nb.cells[0].source if nb.cells[0].cell_type == "code" else nb.cells[1].source
  assert "SMALL = True" in first, "the notebook's first code cell must set SMALL = True"
  # A user's kernel sees one CPU device, not the 8 fake ones conftest gives this process.
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("DISTILL_WORKDIR", str(tmp_path / "run"))
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [ROOT, os.environ.get(
      "PYTHONPATH")])))
  cwd = tmp_path / "elsewhere"
  cwd.mkdir()
  t0 = time.time()
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(cwd)}})
  client.execute()
  return nb, time.time() - t0


def _outputs(nb):
  text = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      text.append(out.get("text", "") or "".join(out.get("data", {}).get("text/plain", "")))
  return "\n".join(text)


# Slow-marked (~60-70 s) to keep the default run under 15 minutes: the notebook calls the
# same library functions (pipeline.run, the export, api.load) that the default tests cover.
@pytest.mark.slow
def test_quickstart(tmp_path, monkeypatch):
  nb, seconds = _execute("quickstart.ipynb", tmp_path, monkeypatch)
  out = _outputs(nb)
  assert "gap closed" in out and ".tflite" in out
  assert "pip install" in nb.cells[2].source and "chdir" not in nb.cells[2].source
  assert os.path.exists(tmp_path / "run" / "report.md")
  print(f"quickstart.ipynb: {seconds:.0f} s")


@pytest.mark.slow  # ~50 s, as the quickstart one: `python -m pytest -m slow tests/test_notebooks.py`
def test_hf_teacher(tmp_path, monkeypatch):
  pytest.importorskip("transformers")
  pytest.importorskip("torch")
  nb, seconds = _execute("hf_teacher.ipynb", tmp_path, monkeypatch)
  assert os.path.exists(tmp_path / "run" / "export" / "phone" / "model_card.json")
  assert "MB, context" in _outputs(nb)
  print(f"hf_teacher.ipynb: {seconds:.0f} s")
