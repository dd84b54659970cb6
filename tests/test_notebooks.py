"""The notebooks: committed without outputs, and every cell runs offline on the CPU with the tiny model."""

from __future__ import annotations

import importlib.util

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_runs_top_to_bottom(path, tmp_path, monkeypatch, tiny_dir):
    monkeypatch.setenv("MEDQLORA_REPO", str(REPO))  # the kernel inherits the suite's offline cache too
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert (tmp_path / "runs").exists() or path.name != "quickstart.ipynb"


def test_committed_notebooks_match_their_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("make_notebooks", REPO / "notebooks" / "make_notebooks.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.write(tmp_path)
    for path in NOTEBOOKS:
        fresh = [c.source for c in nbformat.read(tmp_path / path.name, as_version=4).cells]
        assert fresh == [c.source for c in nbformat.read(path, as_version=4).cells], \
            f"{path.name} differs from notebooks/make_notebooks.py; edit the script and rerun it"
