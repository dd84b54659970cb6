"""FSDP-QLoRA checkpoint and resume on 2 GPUs, with the tiny model (needs no datasets; one device call).

    python benchmarks/check_fsdp_resume.py OUT.json

A run stopped after 2 of 4 optimizer steps and resumed from its checkpoint on the same 2 GPUs must end with
the adapter of a run that went straight to 4 (constant lr, so the shorter run is a prefix of the longer).
Lightning's launcher re-runs this script for rank 1; both ranks make the same three fits.
"""

import json
import random
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from medqlora.data.collate import LengthGroupedBatchSampler, pad_collate
from medqlora.model.distributed import QLoRAFSDPStrategy
from medqlora.model.loading import QuantSpec
from medqlora.model.lora import LoraSpec
from medqlora.model.module import QLoRAModule

rng = random.Random(0)
ROWS = [{"input_ids": ids, "labels": [-100] * 8 + ids[8:]}
        for ids in ([2] + [rng.randrange(3, 1000) for _ in range(rng.randrange(24, 64))] for _ in range(64))]


class Keep(L.Callback):
    """The adapter's full weights at the end of training (a collective under FSDP: every rank calls it)."""

    def on_train_end(self, trainer, pl_module):
        self.weights = {k: v.float().cpu() for k, v in pl_module.adapter_weights().items()}


class Rows(L.LightningDataModule):
    def train_dataloader(self):
        sampler = LengthGroupedBatchSampler([len(r["input_ids"]) for r in ROWS], 4, 0, True, False,
                                            self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(ROWS, batch_sampler=sampler, collate_fn=lambda b: pad_collate(b, 0))


def fit(max_steps: int, workdir: str, ckpt_path: str | None = None) -> dict:
    torch.manual_seed(0)
    module = QLoRAModule("tiny", quantization=QuantSpec(quant_storage="bfloat16"), lora=LoraSpec(dropout=0.0),
                         optimizer=sys.argv[2] if len(sys.argv) > 2 else "adamw", lr=1e-3)
    trainer = L.Trainer(accelerator="gpu", devices=2, strategy=QLoRAFSDPStrategy(), precision="bf16-mixed",
                        max_steps=max_steps, logger=False, enable_progress_bar=False, use_distributed_sampler=False,
                        callbacks=[ModelCheckpoint(dirpath=workdir, save_last=True, every_n_train_steps=1),
                                   keep := Keep()],
                        default_root_dir=workdir)
    trainer.fit(module, datamodule=Rows(), ckpt_path=ckpt_path)
    return keep.weights


root = Path(tempfile.gettempdir()) / "fsdp-resume"
whole = fit(4, str(root / "whole"))
fit(2, str(root / "parts"))
resumed = fit(4, str(root / "parts"), ckpt_path=str(root / "parts" / "last.ckpt"))
if torch.distributed.get_rank() == 0:
    diff = max((whole[k] - resumed[k]).abs().max().item() for k in whole)
    moved = max((whole[k]).abs().max().item() for k in whole if "lora_B" in k)
    report = {"tensors": len(whole), "same_names": whole.keys() == resumed.keys(), "max_abs_diff": diff,
              "largest_lora_B": moved, "checkpoint_keys": sorted(torch.load(root / "parts" / "last.ckpt",
                                                                            weights_only=False)["state_dict"])[:3]}
    Path(sys.argv[1]).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
