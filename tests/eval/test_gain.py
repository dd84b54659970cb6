"""The harness tells a better model from a worse one, merge keeps the adapter's function, and the model card
carries the numbers a run produced.

A tiny Gemma 4 trains 30 steps on a synthetic multiple-choice task whose right letter follows a topic word
(fixtures.py); scored in the same harness as MedQA, it must beat its own base by 40 points (measured here:
base ~20%, adapter ~95% on 40 held-out items).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO
from fixtures import medqa_rows, pubmedqa_rows
from helpers import write_jsonl
from torch.utils.data import DataLoader

from medqlora.callbacks.medqa import MedQAAccuracy
from medqlora.callbacks.schedule import CosineWarmup
from medqlora.cli import run
from medqlora.data.chat import encode
from medqlora.data.collate import pad_collate
from medqlora.data.sources import Conversation
from medqlora.eval.items import BenchmarkSpec, load_items
from medqlora.eval.run import run_eval
from medqlora.model.adapter import adapter_base, merge, save_adapter
from medqlora.model.lora import LoraSpec
from medqlora.model.module import QLoRAModule


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer) -> tuple[Path, BenchmarkSpec, MedQAAccuracy]:
    """An adapter trained on the synthetic task, saved as a run would, the held-out benchmark spec, and the MedQA
    callback that scored the held-out items during training."""
    tmp = tmp_path_factory.mktemp("gain")
    train_rows = write_jsonl(tmp / "train.jsonl", medqa_rows(128, 1))
    train = load_items(BenchmarkSpec(name="train", kind="medqa", path=str(train_rows)))
    rows = []
    for item in train:
        encoded = encode(Conversation.single(user=item.user, answer=item.choices[item.gold]), tokenizer, 256)
        rows.append({"input_ids": encoded.input_ids, "labels": encoded.labels})
    held_out_rows = write_jsonl(tmp / "test.jsonl", medqa_rows(40, 2))
    torch.manual_seed(0)
    # the recipe's cosine decay: with a constant lr the last steps bounced where a CPU's bf16 kernels round otherwise
    # (5e-3 fell back to chance at step 30 on AVX-512 BF16; 3e-3 stalled near +28 points with oneDNN's BF16 off)
    module = QLoRAModule("tiny", lora=LoraSpec(dropout=0.0), lr=4e-3, gradient_checkpointing=False)
    loader = DataLoader(
        rows,
        batch_size=16,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=lambda batch: pad_collate(batch, tokenizer.pad_token_id),
    )
    medqa = MedQAAccuracy(every_n_steps=5, items=24, medqa=str(held_out_rows))
    L.Trainer(
        accelerator="cpu",
        max_steps=30,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[medqa, CosineWarmup(warmup_ratio=0.1)],
    ).fit(module, loader)
    adapter = save_adapter(module.model, "tiny", tmp / "run" / "adapter")
    held_out = BenchmarkSpec(name="synthetic", kind="medqa", path=str(held_out_rows))
    return adapter, held_out, medqa


def test_trained_adapter_beats_its_base_in_the_harness(trained, tmp_path):
    adapter, held_out, _ = trained
    results = run_eval(adapter, tmp_path, [held_out], with_keypoints=False, batch_tokens=512)
    summary = results["benchmarks"][0]
    assert summary["items"] == 40
    assert summary["adapter_accuracy"] >= summary["base_accuracy"] + 40, summary
    assert summary["delta_ci95_pp"][0] > 0, "the interval excludes no gain"
    items = [json.loads(line) for line in (tmp_path / "eval_items.jsonl").read_text().splitlines()]
    assert len(items) == 40 and {"gold", "base_pred", "adapter_pred"} <= set(items[0])
    assert set(results["phases"]) == {"load", "merge", "synthetic"} and results["eval_wall_s"] > 0
    assert set(results["phases_by_side"]["synthetic"]) == {"base", "adapter"}


def test_medqa_accuracy_during_training_follows_what_the_adapter_learns(trained):
    """Scored at optimizer steps 10, 20 and 30 on the held-out items, the accuracy climbs as the loss falls, and the
    last measurement is the trained adapter's own accuracy in `medqlora eval`'s scorer."""
    adapter, held_out, medqa = trained
    steps = [step for step, _, _ in medqa.history]
    assert steps == [5, 10, 15, 20, 25, 30]
    assert medqa.history[-1][1] >= medqa.history[0][1] + 30, medqa.history
    assert medqa.last_seconds > 0


def test_merged_weights_give_the_unmerged_logits_without_peft(trained, tmp_path, tokenizer):
    """Tolerance: both sides run in bf16, and merging rounds W + BA to bf16 once: logits agree to 0.1 (single
    elements; ~1e-2 typical), and the whole difference is under 10% of what the adapter changes (a lost adapter: 100%;
    30 steps leave a small one, and the rounding came to 5.3% of it with oneDNN's BF16 off, under 5% elsewhere)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter, *_ = trained
    merged_dir = merge(adapter, tmp_path / "merged")
    assert not (merged_dir / "adapter_config.json").exists() and list(merged_dir.glob("*.safetensors"))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.bfloat16).eval()
    base = AutoModelForCausalLM.from_pretrained(adapter_base(adapter), dtype=torch.bfloat16)
    unmerged = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.tensor([tokenizer("A cardiac case. Which option?")["input_ids"]])
    with torch.no_grad():
        expected, got = unmerged(input_ids=ids).logits.float(), merged(input_ids=ids).logits.float()
        with unmerged.disable_adapter():
            plain = unmerged(input_ids=ids).logits.float()
    torch.testing.assert_close(got, expected, atol=1e-1, rtol=0)
    # the merge error is small against what the adapter changes (bf16 rounding, not a lost adapter)
    assert (got - expected).norm() < 0.10 * (expected - plain).norm()


def test_model_card_holds_the_numbers_the_run_produced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            "--trainer.max_steps",
            "2",
            "--trainer.val_check_interval",
            "2",
        ]
    )
    run_dir = next(Path("runs/tiny").iterdir())
    medqa = write_jsonl(tmp_path / "medqa.jsonl", medqa_rows(6))
    pubmedqa = write_jsonl(tmp_path / "pubmedqa.jsonl", pubmedqa_rows(6))
    run(
        [
            "eval",
            str(run_dir / "adapter"),
            "--medqa",
            str(medqa),
            "--pubmedqa",
            str(pubmedqa),
            "--limit",
            "5",
            "--max-new-tokens",
            "4",
        ]
    )
    card = (run_dir / "adapter" / "README.md").read_text()
    results = json.loads((run_dir / "eval-adapter" / "eval.json").read_text())
    memory = json.loads((run_dir / "memory.json").read_text())
    data = json.loads((run_dir / "data_card.json").read_text())
    for bench in results["benchmarks"]:
        base = f"{bench['base_accuracy']:.1f} ({bench['base_accuracy_norm']:.1f})"
        tuned = f"{bench['adapter_accuracy']:.1f} ({bench['adapter_accuracy_norm']:.1f})"
        assert f"| {base} | {tuned} | {bench['delta_pp']:+.1f} |" in card
    assert f"| **average** | {results['keypoints']['base']['average']:.1f} |" in card
    assert f"peak memory {memory['peak_gib']:.2f} GiB" in card
    for name, source in data["sources"].items():
        assert f"| {name} | {source['location']} | {source['license']} | {source['train_rows']} |" in card
    assert "5e-3" in card or "0.005" in card  # the learning rate from the resolved config
    assert "Intended use and limitations" in card and "PeftModel.from_pretrained" in card


def test_generate_command_prints_one_answer_per_prompt(trained, tmp_path, capsys):
    adapter, *_ = trained
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("A cardiac case. Which option?\n\nA renal case. Which option?\n")
    run(["generate", str(adapter), "--prompts-file", str(prompts), "--max-new-tokens", "3", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [line["prompt"] for line in lines] == ["A cardiac case. Which option?", "A renal case. Which option?"]
    assert all(isinstance(line["answer"], str) and "<turn|>" not in line["answer"] for line in lines)
    run(["generate", str(adapter), "--prompts-file", str(prompts), "--max-new-tokens", "3"])  # as text
    text = capsys.readouterr().out
    assert text.startswith("> A cardiac case. Which option?\n") and "\n\n> A renal case. Which option?\n" in text
