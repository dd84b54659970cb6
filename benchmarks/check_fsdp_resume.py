"""Exact resume on N GPUs (FSDP-QLoRA, and DDP stopped by a signal on one rank), with the tiny model (needs no
datasets; one device call).

    torchrun --nproc_per_node N benchmarks/check_fsdp_resume.py OUT.json [OPTIMIZER [no-ckpt]]

An FSDP run stopped after 2 of 4 optimizer steps and resumed from its checkpoint on the same N GPUs must end with
the adapter of a run that went straight to 4 (constant lr, so the shorter run is a prefix of the longer); so must
a DDP run that gets SIGTERM on its last rank after 2 steps, saves `interrupted.ckpt` (CheckpointOnInterrupt, every
rank agreeing) and is resumed from it. GPU
kernels are not bitwise reproducible and Adam turns any tiny gradient difference into a +-lr step, so the report
also gives the floor: a second uninterrupted FSDP run, and the same 4 steps under DDP (deterministic algorithms
are on where torch has them). OPTIMIZER: adamw_8bit (default, the recipe's) or adamw; no-ckpt turns the model's
gradient checkpointing off.
"""

import json
import os
import random
import signal
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from medqlora.callbacks.interrupt import CheckpointOnInterrupt
from medqlora.data.collate import LengthGroupedBatchSampler, ResumableDataLoader, pad_collate
from medqlora.model.distributed import QLoRAFSDPStrategy
from medqlora.model.loading import QuantSpec
from medqlora.model.lora import LoraSpec
from medqlora.model.module import QLoRAModule

rng = random.Random(0)
ROWS = [
    {"input_ids": ids, "labels": [-100] * 8 + ids[8:]}
    for ids in ([2] + [rng.randrange(3, 1000) for _ in range(rng.randrange(24, 64))] for _ in range(64))
]


class Keep(L.Callback):
    """The adapter's full weights at the end of training (a collective under FSDP: every rank calls it)."""

    def on_train_end(self, trainer, pl_module):
        self.weights = {k: v.float().cpu() for k, v in pl_module.adapter_weights().items()}


class Rows(L.LightningDataModule):
    def train_dataloader(self):
        sampler = LengthGroupedBatchSampler(
            [len(r["input_ids"]) for r in ROWS], 4, 0, True, False, self.trainer.global_rank, self.trainer.world_size
        )
        progress = self.trainer.fit_loop.epoch_loop.batch_progress  # resume at the next unseen batch
        return ResumableDataLoader(
            ROWS,
            batch_sampler=sampler,
            collate_fn=lambda b: pad_collate(b, 0),
            batches_done=lambda: progress.current.processed,
        )


class SignalLastRank(L.Callback):
    """SIGTERM to the last rank's own process after its micro-batch `batch` (an operator's kill on one node)."""

    def __init__(self, batch: int):
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.batch and trainer.global_rank == trainer.world_size - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def fit(
    max_steps: int, workdir: str, ckpt_path: str | None = None, ddp: bool = False, signal_after: int | None = None
) -> dict:
    torch.manual_seed(0)
    module = QLoRAModule(
        "tiny",
        quantization=QuantSpec(quant_storage="bfloat16"),
        lora=LoraSpec(dropout=0.0),
        optimizer=sys.argv[2] if len(sys.argv) > 2 else "adamw_8bit",
        lr=1e-3,
        gradient_checkpointing="no-ckpt" not in sys.argv[3:],
    )
    on_cpu = os.environ.get("DIAG_ACCELERATOR") == "cpu"  # a gloo DDP smoke test of the script itself
    trainer = L.Trainer(
        accelerator="cpu" if on_cpu else "gpu",
        devices=int(os.environ.get("WORLD_SIZE", 2)),
        strategy="ddp" if on_cpu or ddp else QLoRAFSDPStrategy(),
        precision="bf16-mixed",
        deterministic="warn",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        callbacks=[
            ModelCheckpoint(dirpath=workdir, save_last=True, every_n_train_steps=1),
            CheckpointOnInterrupt(dirpath=workdir),
            keep := Keep(),
            *([SignalLastRank(signal_after)] if signal_after is not None else []),
        ],
        default_root_dir=workdir,
    )
    trainer.fit(module, datamodule=Rows(), ckpt_path=ckpt_path, weights_only=False)
    return keep.weights


def main() -> None:
    # Lightning 2.6 drops fit's weights_only when the strategy restores after setup (FSDP), so torch's default
    # (True) applies: allow the module's hyperparameter dataclasses (the CLI stores plain containers instead)
    torch.serialization.add_safe_globals([QuantSpec, LoraSpec])
    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")  # one folder per launch, the same on every rank
    root = Path(tempfile.gettempdir()) / "-".join(["fsdp-resume", run, *sys.argv[2:]])
    whole = fit(4, str(root / "whole"))
    again = fit(4, str(root / "again"))
    ddp = fit(4, str(root / "ddp"), ddp=True)
    fit(2, str(root / "parts"))
    resumed = fit(4, str(root / "parts"), ckpt_path=str(root / "parts" / "last.ckpt"))
    fit(4, str(root / "ddp-signal"), ddp=True, signal_after=1)  # saved at the next step boundary
    ddp_resumed = fit(4, str(root / "ddp-signal"), ckpt_path=str(root / "ddp-signal" / "interrupted.ckpt"), ddp=True)
    if torch.distributed.get_rank() == 0:
        saved = torch.load(root / "parts" / "last.ckpt", weights_only=False)

        def diff_from(reference: dict, other: dict) -> dict:  # B starts at zero, so |B| is how far training moved it
            delta = torch.cat([(reference[k] - other[k]).flatten() for k in reference])
            b_delta = torch.cat([(reference[k] - other[k]).flatten() for k in reference if "lora_B" in k])
            b_moved = torch.cat([reference[k].flatten() for k in reference if "lora_B" in k])
            return {"max_abs": delta.abs().max().item(), "lora_B_rel_norm": (b_delta.norm() / b_moved.norm()).item()}

        def diff(other: dict) -> dict:
            return diff_from(whole, other)

        report = {
            "tensors": len(whole),
            "same_names": whole.keys() == resumed.keys() == ddp.keys(),
            "ranks": torch.distributed.get_world_size(),
            "resumed_vs_whole": diff(resumed),
            "ddp_signalled_resumed_vs_ddp_whole": diff_from(ddp, ddp_resumed),
            "ddp_signal_step": torch.load(root / "ddp-signal" / "interrupted.ckpt", weights_only=False)["global_step"],
            "fsdp_rerun_vs_whole": diff(again),
            "ddp_vs_whole": diff(ddp),
            "largest_lora_B": max(whole[k].abs().max().item() for k in whole if "lora_B" in k),
            "checkpoint_keys": sorted(saved["state_dict"])[:3],
            "checkpoint_tensors": len(saved["state_dict"]),
            "optimizer_ranks": len(saved["optimizer_states"][0].get("fsdp_rank_states", [])),
        }
        Path(sys.argv[1]).write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
