"""MedicalMixDataModule: the three-source mix as a LightningDataModule.

raw rows -> conversations (mix.py) -> token ids + labels (chat.py) -> batches (collate.py). The prepared splits
are saved once and reused by an identical run (prepare.py: keyed on sources, tokenizer, settings and code).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from importlib import resources
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from datasets import Dataset
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from medqlora.data.card import DataCard, no_training_rows
from medqlora.data.chat import Truncation
from medqlora.data.collate import (
    Collator,
    LengthGroupedBatchSampler,
    PackedRows,
    PackingBatchSampler,
    ResumableDataLoader,
)
from medqlora.data.location import column
from medqlora.data.mix import EvalQuestions, SamplePolicy, benchmark_questions
from medqlora.data.prepare import MixSettings, prepare_mix
from medqlora.data.sources import ReasoningMode, SourceSpec
from medqlora.hub import load_tokenizer, max_positions


def sample_sources() -> list[SourceSpec]:
    """The small made-up files shipped with the package, one per real source, with its exact columns."""
    root = resources.files("medqlora.data") / "samples"
    return [
        SourceSpec(name="medqa", format="medqa_options", path=str(root / "medqa.jsonl"), license="sample"),
        SourceSpec(name="o1", format="reasoning", path=str(root / "o1.jsonl"), license="sample"),
        SourceSpec(name="alpacare", format="instruction", path=str(root / "alpacare.jsonl"), license="sample"),
    ]


def check_lengths(max_length: int, pack_tokens: int, model: str) -> None:
    """The one check of row lengths: `max_length` fits the model's positions, and a packed row holds the longest
    row. Run when the data module is built, before any data is read or written."""
    if max_length < 16:
        raise ValueError(f"data.max_length={max_length} is too small; use at least 16 (recipe: 2048)")
    positions = max_positions(model)
    if max_length > positions:
        raise ValueError(
            f"data.max_length={max_length} exceeds the {positions} positions of "
            f"model.name_or_path={model!r}; set data.max_length <= {positions}"
        )
    if pack_tokens < max_length:
        raise ValueError(
            f"data.pack_tokens={pack_tokens} < data.max_length={max_length}; a packed row must hold the longest row"
        )


class MedicalMixDataModule(L.LightningDataModule):
    """The medical instruction mix, rendered in Gemma 4's chat format, padded or packed.

    Args:
        sources: the sources of the mix (default: the small sample files shipped with medqlora).
        tokenizer: tokenizer name or path; linked from `model.name_or_path` by the CLI.
        max_length: longest row in tokens (prompt + answer).
        micro_batch_size: rows per micro-batch; `auto`: chosen within `model.lean.memory_budget_gib` by `medqlora fit`
            (model/budget.py), else the recipe's 2.
        packing: pack samples into `micro_batch_size` rows of `pack_tokens` tokens, instead of one sample per row.
        pack_tokens: length of one packed row (default: max_length).
        group_by_length: padded layout only: batch rows of similar length together.
        reasoning: where o1's chain of thought goes: Gemma 4's thinking channel, inline, or dropped.
        system_prompt: optional system turn for every row.
        truncation: rows over max_length are dropped, or their answer is truncated.
        sample_policy: sources with fewer rows than their target: take all, or upsample training rows.
        val_fraction: share of each source held out for validation (stratified by source).
        test_fraction: share of each source held out for `medqlora test` alone (0: test scores the validation rows).
        seed: seed of sampling, splitting and batch order.
        decontaminate: evaluation sets whose questions are removed from the mix; `benchmarks` for the MedQA and
            PubMedQA rows `medqlora eval` scores (`data/benchmarks.py`).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        sources: list[SourceSpec] | None = None,
        tokenizer: str = "tiny",
        max_length: int = 2048,
        micro_batch_size: int | Literal["auto"] = 2,
        packing: bool = True,
        pack_tokens: int | None = None,
        group_by_length: bool = False,
        reasoning: ReasoningMode = "thinking",
        system_prompt: str | None = None,
        truncation: Truncation = "drop",
        sample_policy: SamplePolicy = "all",
        val_fraction: float = 0.05,
        test_fraction: float = 0.0,
        seed: int = 42,
        decontaminate: list[EvalQuestions] | Literal["benchmarks"] | None = None,
        num_workers: int = 0,
    ):
        super().__init__()
        # saved in checkpoints, so a resume can refuse settings that would change its rows (medqlora.resume);
        # not logged: the model's hyperparameters are, and both have a `seed`
        self.save_hyperparameters(logger=False)
        check_lengths(max_length, pack_tokens or max_length, tokenizer)
        if micro_batch_size == "auto":
            micro_batch_size = 2  # the recipe's; `medqlora fit` resolves auto within a memory budget before this
        elif micro_batch_size < 1:
            raise ValueError(f"data.micro_batch_size={micro_batch_size} must be >= 1, or auto")
        if not 0.0 <= val_fraction < 0.5:
            raise ValueError(f"data.val_fraction={val_fraction} must be in [0, 0.5) (recipe: 0.05)")
        if not 0.0 <= test_fraction or val_fraction + test_fraction >= 0.5:
            raise ValueError(
                f"data.test_fraction={test_fraction} must be >= 0 and leave half the rows for training with "
                f"data.val_fraction={val_fraction} (their sum < 0.5)"
            )
        self.sources = sources if sources is not None else sample_sources()
        self.tokenizer_name, self.max_length, self.micro_batch_size = tokenizer, max_length, micro_batch_size
        self.packing, self.pack_tokens = packing, pack_tokens or max_length
        self._sample_slots: int | None = None  # sample_slots(), once the splits exist
        self.group_by_length, self.reasoning, self.system_prompt = group_by_length, reasoning, system_prompt
        self.truncation, self.sample_policy, self.val_fraction = truncation, sample_policy, val_fraction
        self.test_fraction = test_fraction
        if decontaminate == "benchmarks":
            decontaminate = benchmark_questions()
        self.seed, self.decontaminate, self.num_workers = seed, decontaminate or [], num_workers
        self.tokenizer = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.card: DataCard | None = None

    # -- stages -------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Download and cache everything once (rank 0 of a multi-GPU run)."""
        self._build()

    def setup(self, stage: str | None = None) -> None:
        """Build (or read from the datasets cache) the tokenised splits and write the data card into the run
        directory (with `logger=False` there is none, so none is written: `card.write(DIR)` writes one)."""
        if self.train_set is None:
            self._build()
        logged = self._trainer_attached() and bool(self.trainer.loggers)
        log_dir = self.trainer.log_dir if logged else None  # without a logger, log_dir is the working directory
        if log_dir and self.card is not None and self.trainer.is_global_zero:
            self.card.write(Path(log_dir))

    def _trainer_attached(self) -> bool:
        return self.trainer is not None

    def _build(self) -> None:
        self.tokenizer = self.tokenizer or load_tokenizer(self.tokenizer_name)
        settings = MixSettings(**{f.name: getattr(self, f.name) for f in fields(MixSettings)})  # same names here
        prepared = prepare_mix(self.sources, self.decontaminate, self.tokenizer, settings)
        self.train_set, self.val_set, self.test_set = prepared.train, prepared.val, prepared.test
        self.card = DataCard.from_run(self, prepared.stats)
        for notice in self.card.content["notices"]:
            rank_zero_info(f"medqlora data: {notice}")
        errors = no_training_rows(self.card.content, {s.name: s.required for s in self.sources})
        if errors:
            raise ValueError(" | ".join(errors))

    # -- loaders ------------------------------------------------------------------------------------
    def batch_sampler(self, data: Dataset, shuffle: bool):
        """The batch plan for a split: packs of `pack_tokens`, or padded micro-batches."""
        rank = self.trainer.global_rank if self._trainer_attached() else 0
        world = self.trainer.world_size if self._trainer_attached() else 1
        lengths = column(data, "length")
        if self.packing:
            return PackingBatchSampler(
                lengths, self.pack_tokens, self.seed, shuffle, rank, world, rows_per_batch=self.micro_batch_size
            )
        return LengthGroupedBatchSampler(
            lengths, self.micro_batch_size, self.seed, shuffle, self.group_by_length, rank, world
        )

    def _loader(self, data: Dataset, shuffle: bool, cls: type[DataLoader] = DataLoader, **extra) -> DataLoader:
        rows = data.select_columns(["row_id", "input_ids", "labels"])
        sampler = self.batch_sampler(data, shuffle)
        return cls(
            PackedRows(rows) if self.packing else rows,
            batch_sampler=sampler,
            collate_fn=Collator(
                self.packing, self.tokenizer.pad_token_id, self.pack_tokens, self.micro_batch_size, self.sample_slots()
            ),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # leaves the global RNG alone
            **extra,
        )

    def sample_slots(self) -> int | None:
        """With packing, the most samples any micro-batch of this epoch's training or validation plan holds: every
        batch's sample bounds get that many slots, so training and validation keep one shape (compiled layers and
        the CUDA graph compile and capture once; model/attention.py)."""
        if not self.packing:
            return None
        if self._sample_slots is None:  # packing a split's plan takes a second or two on the mix: once
            splits = ((self.train_set, True), (self.val_set, False), (self.test_set, False))  # as loaders draw them
            self._sample_slots = max(
                self.batch_sampler(data, shuffle).most_samples() for data, shuffle in splits if data is not None
            )
        return self._sample_slots

    def _batches_done(self) -> int:
        # processed (not completed): a checkpoint written in on_train_batch_end has trained that batch
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self._trainer_attached() else 0

    def train_dataloader(self) -> DataLoader:
        """Training batches, reshuffled every epoch (seeded), resumable mid-epoch."""
        return self._loader(self.train_set, shuffle=True, cls=ResumableDataLoader, batches_done=self._batches_done)

    def val_dataloader(self) -> DataLoader:
        """Validation batches, same layout as training, fixed order."""
        return self._loader(self.val_set, shuffle=False)

    def test_split(self) -> tuple[str, Dataset]:
        """What `medqlora test` scores: the test split when `test_fraction` held one out, else the validation split."""
        return ("test", self.test_set) if self.test_set is not None and len(self.test_set) else ("val", self.val_set)

    def test_dataloader(self) -> DataLoader:
        """The test split (`test_fraction` > 0), else the validation split; `test_split` says which."""
        return self._loader(self.test_split()[1], shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The validation split, for `medqlora predict` (a line of predictions per row: callbacks/predictions.py)."""
        return self.val_dataloader()

    def state_dict(self) -> dict:
        """Saved in checkpoints: the settings that decide which rows exist."""
        return {"seed": self.seed, "sources": [asdict(s) for s in self.sources]}
