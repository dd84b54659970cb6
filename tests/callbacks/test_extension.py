"""Every built-in callback can be configured or subclassed through a public hook, without copying code."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from medqlora.callbacks.accumulation import GradientAccumulation
from medqlora.callbacks.adapter import AdapterExport
from medqlora.callbacks.curves import TrainingCurves
from medqlora.callbacks.memory import PeakMemory
from medqlora.callbacks.schedule import CosineWarmup
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.model.module import QLoRAModule


class HalfLr(CosineWarmup):
    def lr_multiplier(self, step: int) -> float:
        return 0.5


class MemoryPlus(PeakMemory):
    def measure(self, trainer):
        return {**super().measure(trainer), "custom_gib": 1.25}


class AdapterElsewhere(AdapterExport):
    def adapter_dir(self, trainer, name):
        return Path(trainer.default_root_dir) / f"custom-{name}"


class LossOnly(TrainingCurves):
    panels = [("loss only", [("train/loss", "train")])]


class Recorder(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def test_subclassed_and_configured_callbacks_take_effect(tmp_path):
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="ext"),
        log_every_n_steps=1,
        callbacks=[
            GradientAccumulation(accumulate=3),
            HalfLr(),
            MemoryPlus(every_n_steps=1),
            AdapterElsewhere(save_best=False),
            LossOnly(),
            recorder,
        ],
    )
    trainer.fit(QLoRAModule("tiny", lr=1e-3), datamodule=MedicalMixDataModule(max_length=256, seed=0))
    assert recorder.lrs == [5e-4] * 3  # the subclass's schedule, not the cosine
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 9  # 3 micro-batches per step
    assert float(trainer.callback_metrics["mem/custom_gib"]) == 1.25
    assert (tmp_path / "custom-adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "ext" / "version_0" / "curves.png").is_file()


def test_accumulation_schedule_is_configurable():
    callback = GradientAccumulation(accumulate=2, schedule={3: 5})
    assert [callback.get_accumulate_grad_batches(e) for e in range(5)] == [2, 2, 2, 5, 5]
    assert math.isclose(CosineWarmup(warmup_ratio=0.2, min_lr_ratio=0.1).min_lr_ratio, 0.1)
