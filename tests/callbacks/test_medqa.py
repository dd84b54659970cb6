"""MedQAAccuracy from the command line: appended to the tiny config's callbacks, it logs the MedQA accuracy into the
run's metrics.csv at its interval; bad arguments are refused naming them."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import REPO
from helpers import write_jsonl

from medqlora.callbacks.medqa import MedQAAccuracy
from medqlora.cli import main


def test_appended_on_the_command_line_it_logs_medqa_accuracy_beside_the_loss(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = {"A": "aspirin", "B": "insulin", "C": "heparin", "D": "oxygen"}
    rows = [{"question": f"Case {i}: which drug?", "options": options, "answer_idx": "ABCD"[i % 4]} for i in range(6)]
    medqa = write_jsonl(tmp_path / "medqa.jsonl", rows)
    callback = ["--trainer.callbacks+=medqlora.callbacks.medqa.MedQAAccuracy", "--trainer.callbacks.every_n_steps", "1"]
    callback += ["--trainer.callbacks.items", "4", "--trainer.callbacks.medqa", str(medqa)]
    code = main(["fit", "--config", str(REPO / "configs" / "tiny.yaml"), "--trainer.max_steps", "2", *callback])
    assert code == 0
    (metrics,) = Path("runs/tiny").glob("*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("val/medqa_acc")]
    assert [int(r["step"]) for r in rows] == [0, 1]  # logged at optimizer steps 1 and 2 (Lightning counts from 0)
    assert all(0 <= float(r["val/medqa_acc"]) <= 100 and float(r["val/medqa_seconds"]) > 0 for r in rows)
    assert all(r["val/medqa_acc_norm"] != "" for r in rows)


@pytest.mark.parametrize("kwargs, name", [({"every_n_steps": 0}, "every_n_steps"), ({"items": 0}, "items")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"MedQAAccuracy: {name}=0 must be >= 1"):
        MedQAAccuracy(**kwargs)
