"""The evaluation benchmarks' rows are named once: what eval scores is what training is decontaminated against."""

from __future__ import annotations

from conftest import REPO

from medqlora.data.benchmarks import BENCHMARK_LOCATIONS
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.eval.items import DEFAULT_BENCHMARKS


def _where(location) -> tuple:
    return location.hub_id, location.config, location.split


def test_decontamination_uses_the_rows_eval_scores(tiny_dir):
    removed = MedicalMixDataModule(max_length=256, decontaminate="benchmarks").decontaminate
    assert sorted(map(_where, removed)) == sorted(map(_where, DEFAULT_BENCHMARKS))
    assert all(spec.column == "question" for spec in removed)


def test_each_benchmark_hub_id_is_written_in_one_file():
    files = [*(REPO / "src").rglob("*.py"), *(REPO / "configs").rglob("*.yaml")]
    for where in BENCHMARK_LOCATIONS.values():
        holders = [f.relative_to(REPO).as_posix() for f in files if where["hub_id"] in f.read_text()]
        assert holders == ["src/medqlora/data/benchmarks.py"], (where["hub_id"], holders)
