"""The lr curve (linear warmup to the peak, cosine to the floor at the last step) and accumulation."""

from __future__ import annotations

import math

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback

from medqlora.callbacks.accumulation import GradientAccumulation
from medqlora.callbacks.schedule import CosineWarmup, cosine_with_warmup
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.model.module import QLoRAModule


def test_cosine_with_warmup_shape():
    total, warmup = 100, 5
    lrs = [cosine_with_warmup(s, total, warmup, 0.1) for s in range(total)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])  # linear to the peak at step warmup-1
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))  # then strictly falling
    assert lrs[-1] == pytest.approx(0.1)  # the floor exactly at the last step
    assert lrs[52] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 48 / 95)))


class LrRecorder(Callback):
    """Records the lr each optimizer step actually ran with."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def _fit(tmp_path, accumulation: GradientAccumulation, epochs: int) -> tuple[CosineWarmup, LrRecorder, int]:
    data = MedicalMixDataModule(max_length=256, pack_tokens=256, seed=0)
    schedule, recorder = CosineWarmup(warmup_ratio=0.25), LrRecorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=[accumulation, schedule, recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        limit_train_batches=9,
        default_root_dir=tmp_path,
    )
    trainer.fit(QLoRAModule("tiny", lr=1e-3), datamodule=data)
    return schedule, recorder, trainer.num_training_batches


def test_accumulation_sets_the_optimizer_steps_and_the_schedule_follows(tmp_path):
    schedule, recorder, batches = _fit(tmp_path, GradientAccumulation(accumulate=4), epochs=1)
    assert len(recorder.lrs) == math.ceil(batches / 4) == schedule.total_steps
    warmup = schedule.warmup_steps
    assert recorder.lrs[warmup - 1] == pytest.approx(1e-3)
    assert recorder.lrs[:warmup] == pytest.approx([1e-3 * (s + 1) / warmup for s in range(warmup)])
    assert recorder.lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_accumulation_schedule_by_epoch_is_counted_in_the_schedule(tmp_path):
    schedule, recorder, batches = _fit(tmp_path, GradientAccumulation(accumulate=1, schedule={1: 3}), epochs=2)
    assert len(recorder.lrs) == batches + math.ceil(batches / 3) == schedule.total_steps
    assert recorder.lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_bad_callback_values_name_the_field():
    with pytest.raises(ValueError, match=r"warmup_ratio=1.0 must be in \[0, 1\)"):
        CosineWarmup(warmup_ratio=1.0)
    with pytest.raises(ValueError, match="accumulate=0"):
        GradientAccumulation(accumulate=0)


def test_validation_inside_an_accumulation_window_is_refused(tmp_path):
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        callbacks=[GradientAccumulation(accumulate=2)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_train_batches=9,
        limit_val_batches=1,
        val_check_interval=3,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    message = r"val_check_interval validates every 3 micro-batches.*accumulate=2.*use 4 or 2"
    with pytest.raises(ValueError, match=message):
        trainer.fit(QLoRAModule("tiny"), datamodule=MedicalMixDataModule(max_length=256, pack_tokens=256, seed=0))
