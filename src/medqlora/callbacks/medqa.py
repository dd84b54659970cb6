"""MedQA accuracy during training: a fixed subset scored every N optimizer steps, beside the validation loss.

The loss can fall while the medical accuracy does not move; this logs the accuracy itself (`val/medqa_acc`, raw,
and `val/medqa_acc_norm`, length-normalised) against the optimizer step, with the same scorer and prompts as
`medqlora eval` (`eval.scoring`), on the model being trained (4-bit base + adapter, eval mode, no grad; compiled
layers run eagerly for it, so nothing is compiled again).
"""

from __future__ import annotations

import time
from dataclasses import replace

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from medqlora.callbacks.steps import optimizer_step_done
from medqlora.eval.items import DEFAULT_BENCHMARKS, Item, load_items, with_source
from medqlora.eval.scoring import accuracy, choice_logprobs
from medqlora.hub import load_tokenizer
from medqlora.model.compile import eager_layers


class MedQAAccuracy(Callback):
    """Scores the first `items` MedQA rows every `every_n_steps` optimizer steps (on rank 0).

    Args:
        every_n_steps: interval in optimizer steps (>= 1).
        items: how many rows of the benchmark to score (the first ones, the same every time).
        medqa: hub id or local file with MedQA's columns (default: the benchmark `medqlora eval` scores).
        batch_tokens: tokens per scoring forward pass.
    """

    def __init__(self, every_n_steps: int = 256, items: int = 200, medqa: str | None = None, batch_tokens: int = 4096):
        limits = (("every_n_steps", every_n_steps, 1), ("items", items, 1), ("batch_tokens", batch_tokens, 64))
        for name, value, least in limits:
            if value < least:
                raise ValueError(f"MedQAAccuracy: {name}={value} must be >= {least}")
        self.every_n_steps, self.count, self.batch_tokens = every_n_steps, items, batch_tokens
        default = next(s for s in DEFAULT_BENCHMARKS if s.kind == "medqa")
        self.spec = replace(with_source(default, medqa), limit=items)
        self.items: list[Item] | None = None
        self.tokenizer = None
        self.last_seconds: float | None = None
        self.history: list[tuple[int, float, float]] = []  # (optimizer step, raw, normalised) of every measurement

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and trainer.is_global_zero and self.items is None:
            self.items = load_items(self.spec)  # read once, before training, so a bad file fails early
            self.tokenizer = load_tokenizer(pl_module.name_or_path)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, float]:
        """(raw, length-normalised) accuracy of the model as it is now, in percent."""
        model = pl_module.model
        was_training = model.training
        model.eval()
        begin = time.perf_counter()
        try:
            with torch.no_grad(), eager_layers(model):
                scores = choice_logprobs(model, self.tokenizer, self.items, self.batch_tokens, "medqa")
        finally:
            model.train(was_training)
        self.last_seconds = time.perf_counter() - begin
        return accuracy(self.items, scores)

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raw, norm = self.measure(trainer, pl_module)
        self.history.append((trainer.global_step, raw, norm))
        values = {"val/medqa_acc": raw, "val/medqa_acc_norm": norm, "val/medqa_seconds": self.last_seconds}
        for name, value in values.items():
            pl_module.log(name, value, rank_zero_only=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if optimizer_step_done(trainer) and trainer.global_step % self.every_n_steps == 0 and trainer.is_global_zero:
            self._log(trainer, pl_module)
