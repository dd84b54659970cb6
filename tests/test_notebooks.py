"""The notebooks: committed without outputs, and every cell runs offline on the CPU with the tiny model."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import nbformat
import pytest
from conftest import REPO
from nbclient import NotebookClient
from safetensors.torch import load_file

from medqlora.runs import read_metrics

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip outputs before committing"


def _execute(name: str, workdir: Path, shown: list[set[str]] | None = None) -> list[str]:
    """Run notebooks/NAME top to bottom in `workdir`; what each code cell printed to stdout (and, into `shown`,
    the MIME types each code cell displayed)."""
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    if shown is not None:
        displayed = ("display_data", "execute_result")
        shown += [
            {m for o in c.outputs if o.output_type in displayed for m in o.get("data", {})}
            for c in nb.cells
            if c.cell_type == "code"
        ]
    return [
        "".join(o.get("text", "") for o in c.outputs if o.output_type == "stream" and o.get("name") == "stdout")
        for c in nb.cells
        if c.cell_type == "code"
    ]


def test_quickstart_trains_writes_its_run_and_generates(tmp_path, monkeypatch, tiny_dir):
    monkeypatch.setenv("MEDQLORA_REPO", str(REPO))  # the kernel inherits the suite's offline cache too
    shown: list[set[str]] = []
    printed = _execute("quickstart.ipynb", tmp_path, shown)
    # the plotting cell shows its figure (the curves callback used to switch the kernel's pyplot to Agg)
    assert "image/png" in shown[5], shown[5]
    run = tmp_path / "runs" / "quickstart" / "version_0"
    metrics = read_metrics(run / "metrics.csv")
    assert len(metrics["train/loss"]) == 24 and metrics["val/loss"], "24 optimizer steps and a validation"
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert weights and any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k), "the adapter trained"
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run / "data_card.json").read_text())["totals"]["train"] > 0
    assert "«" in printed[2] and "<|channel>thought" in printed[2]  # supervised spans and o1's thought channel
    samples = printed[3].split("--- sample ")[1:]  # a multi-turn dialogue: a sample per assistant turn
    assert len(samples) == 2 and all(sample.count("«") == 1 for sample in samples)
    assert "«Most likely acute gout.<turn|>»" in samples[0] and "«<|channel>thought" in samples[1]
    answers = ast.literal_eval(printed[6].strip().splitlines()[-1])
    assert isinstance(answers, list) and len(answers) == 1 and isinstance(answers[0], str)


def test_custom_callback_samples_at_its_steps_from_code_and_from_yaml(tmp_path, monkeypatch, tiny_dir):
    monkeypatch.setenv("MEDQLORA_REPO", str(REPO))
    printed = _execute("custom_callback.ipynb", tmp_path)
    from_code = [line.split(" ", 1)[0] for line in printed[2].strip().splitlines()]
    assert from_code == ["4", "8", "12"]
    from_yaml = ast.literal_eval(printed[3].strip().splitlines()[-1])
    assert [step for step, _ in from_yaml] == [4, 8] and all(isinstance(text, str) for _, text in from_yaml)
    assert not list(tmp_path.glob("data_card.*")), "runs without a logger write no card into the working directory"


def test_committed_notebooks_match_their_generator(tmp_path):
    spec = importlib.util.spec_from_file_location("make_notebooks", REPO / "notebooks" / "make_notebooks.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    generator.write(tmp_path)
    for path in NOTEBOOKS:
        fresh = [c.source for c in nbformat.read(tmp_path / path.name, as_version=4).cells]
        assert fresh == [c.source for c in nbformat.read(path, as_version=4).cells], (
            f"{path.name} differs from notebooks/make_notebooks.py; edit the script and rerun it"
        )
