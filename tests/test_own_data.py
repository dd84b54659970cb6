"""A user's own data (issue #38): a chat file trains end to end, a run can start from an existing adapter's weights,
and a run's records describe the data it trained on (a resume on other sources is refused before anything is
rewritten)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from helpers import write_jsonl
from safetensors.torch import load_file

from medqlora.cli import main, run
from medqlora.data.card import RECIPE_SOURCES
from medqlora.model.lora import LoraSpec
from medqlora.model.module import QLoRAModule

TINY = REPO / "configs" / "tiny.yaml"


def chat_file(path: Path, n: int = 16) -> Path:
    """Two-turn clinical dialogues in the `messages` format every peer trainer reads."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Patient {i} has a hot swollen first toe joint. What is it?"},
                {"role": "assistant", "content": "Most likely acute gout."},
                {"role": "user", "content": f"What treats patient {i}?"},
                {"role": "assistant", "content": "Colchicine or an NSAID."},
            ]
        }
        for i in range(n)
    ]
    return write_jsonl(path, rows)


def own_data_config(tmp_path: Path) -> Path:
    path = tmp_path / "my-data.yaml"
    source = {"name": "dialogues", "format": "chat", "path": str(chat_file(tmp_path / "chat.jsonl"))}
    path.write_text(yaml.safe_dump({"data": {"sources": [source], "val_fraction": 0.2}}))
    return path


def _runs() -> list[Path]:
    return sorted(Path("runs/tiny").iterdir())


def _weights(adapter: Path) -> dict[str, torch.Tensor]:
    return load_file(adapter / "adapter_model.safetensors")


def test_own_chat_data_trains_evaluates_generates_and_its_cards_describe_it(tmp_path, monkeypatch, capsys):
    """The README's "Train on your own data": chat JSONL -> fit -> eval -> generate."""
    from eval.fixtures import medqa_rows, pubmedqa_rows

    monkeypatch.chdir(tmp_path)
    mine = own_data_config(tmp_path)
    assert main(["fit", "--config", str(TINY), "--config", str(mine), "--trainer.max_steps", "2"]) == 0
    (run_dir,) = _runs()
    medqa, pubmedqa = (
        write_jsonl(tmp_path / "mq.jsonl", medqa_rows(8)),
        write_jsonl(tmp_path / "pq.jsonl", pubmedqa_rows(8)),
    )
    adapter = str(run_dir / "adapter")
    evaluated = ["eval", adapter, "--medqa", str(medqa), "--pubmedqa", str(pubmedqa), "--limit", "4", "--no-keypoints"]
    assert main(evaluated) == 0
    assert (run_dir / "eval-adapter" / "eval.json").is_file()
    capsys.readouterr()
    assert main(["generate", adapter, "--prompt", "What treats gout?", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.strip()
    data_card = json.loads((run_dir / "data_card.json").read_text())
    assert set(data_card["sources"]) == {"dialogues"} and not data_card["recipe_sources"]
    assert "recipe_target" not in data_card and "model card's recipe" not in (run_dir / "data_card.md").read_text()
    card = (run_dir / "adapter" / "README.md").read_text()
    data_section = card[card.index("## Data") : card.index("## Training")]
    use_section = card[card.index("## Intended use") : card.index("## Use")]
    assert "dialogues" in data_section and str(tmp_path / "chat.jsonl") in use_section
    for recipe_source in ("MedQA", "medical-o1", "AlpaCare"):
        assert recipe_source not in data_section + use_section, recipe_source


def test_resume_on_other_sources_is_refused_and_rewrites_nothing(tmp_path, monkeypatch):
    """Both ways: a sample-mix run resumed with a user's file, and a user's-file run resumed with the default sources
    (before issue #38 both exited 0, trained no step, and rewrote the run's records)."""
    monkeypatch.chdir(tmp_path)
    mine = own_data_config(tmp_path)
    run(["fit", "--config", str(TINY), "--trainer.max_steps", "2"])
    run(["fit", "--config", str(TINY), "--config", str(mine), "--trainer.max_steps", "2"])
    sample_run, own_run = _runs()
    records = ("config.yaml", "data_card.json", "data_card.md", "curves.png", "adapter/README.md")
    before = {d: {r: (d / r).read_bytes() for r in records} for d in (sample_run, own_run)}
    attempts = [
        (
            sample_run,
            ["--config", str(mine)],
            r"data.sources are dialogues \(chat, .*chat.jsonl, target None\) here "
            r"but medqa \(medqa_options, .*medqa.jsonl, target None\); o1 .* in the checkpoint",
        ),
        (
            own_run,
            [],
            r"data.sources are medqa \(medqa_options, .*\) here but dialogues \(chat, .*\) in the checkpoint",
        ),
    ]
    for run_dir, extra, message in attempts:
        checkpoint = run_dir / "checkpoints" / "last.ckpt"
        with pytest.raises(ValueError, match=message):
            run(["fit", "--config", str(TINY), *extra, "--ckpt_path", str(checkpoint), "--trainer.max_steps", "4"])
    assert before == {d: {r: (d / r).read_bytes() for r in records} for d in (sample_run, own_run)}
    cli = run(
        [
            "fit",
            "--config",
            str(TINY),
            "--config",
            str(mine),
            "--ckpt_path",
            str(own_run / "checkpoints" / "last.ckpt"),
            "--trainer.max_steps",
            "3",
        ]
    )
    assert cli.trainer.global_step == 3  # the same sources resume


def test_a_run_starts_from_an_adapters_weights_and_trains_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(["fit", "--config", str(TINY), "--trainer.max_steps", "2"])
    (parent_run,) = _runs()
    parent = parent_run / "adapter"

    module = QLoRAModule("tiny", lora=None, init_adapter=str(parent))
    module.configure_model()
    start = {k: v.detach().cpu() for k, v in __import__("peft").get_peft_model_state_dict(module.model).items()}
    assert start.keys() == _weights(parent).keys()
    assert all(torch.equal(start[k], v.to(start[k].dtype)) for k, v in _weights(parent).items()), "step 0 == parent"

    mine = own_data_config(tmp_path)
    specialty = ["--config", str(mine), "--model.init_adapter", str(parent), "--model.lr", "1e-3"]
    assert main(["fit", "--config", str(TINY), *specialty, "--trainer.max_steps", "2"]) == 0
    child_run = next(d for d in _runs() if d != parent_run)
    child = _weights(child_run / "adapter")
    moved = [k for k, v in _weights(parent).items() if not torch.equal(v, child[k])]
    assert moved, "training moved the weights it started from"
    ckpt = torch.load(child_run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 2  # optimizer and schedule started fresh: this run's own two steps
    metrics = (child_run / "metrics.csv").read_text().splitlines()
    parent_metrics = (parent_run / "metrics.csv").read_text().splitlines()
    lr = [line.split(",")[metrics[0].split(",").index("lr")] for line in metrics[1:3]]
    parent_lr = [line.split(",")[parent_metrics[0].split(",").index("lr")] for line in parent_metrics[1:3]]
    assert float(lr[0]) == pytest.approx(float(parent_lr[0]) * 1e-3 / 5e-3)  # warmup from step 0 again
    card = (child_run / "adapter" / "README.md").read_text()
    assert f"continued from the adapter `{parent}`" in card


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lora": LoraSpec(r=8, alpha=16)}, r"model.lora.r=8 but the adapter has 16.*drop model.lora"),
        ({"lora": LoraSpec(targets=["q_proj"])}, r"model.lora.targets=\['q_proj'\] but the adapter has \["),
    ],
)
def test_a_lora_that_contradicts_the_adapter_is_refused_naming_both(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.chdir(tmp_path)
    run(["fit", "--config", str(TINY), "--trainer.max_steps", "1"])
    (parent_run,) = _runs()
    with pytest.raises(ValueError, match=message):
        QLoRAModule("tiny", init_adapter=str(parent_run / "adapter"), **kwargs)


def test_an_adapter_of_another_base_is_refused_naming_both(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"base_model_name_or_path": "google/gemma-4-E4B-it", "r": 16, "lora_alpha": 16, "target_modules": []}
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"was trained on 'google/gemma-4-E4B-it', but model.name_or_path='tiny'"):
        QLoRAModule("tiny", init_adapter=str(adapter))
    with pytest.raises(FileNotFoundError, match=r"model.init_adapter='missing-folder': adapter missing-folder is not"):
        QLoRAModule("tiny", init_adapter="missing-folder")


def test_the_recipe_sources_the_cards_compare_with_are_the_recipes():
    recipe = yaml.safe_load((REPO / "configs" / "gemma4-e2b-medical.yaml").read_text())["data"]["sources"]
    assert {s["name"]: (s["format"], s["target"]) for s in recipe} == RECIPE_SOURCES
