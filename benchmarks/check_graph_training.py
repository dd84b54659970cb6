"""GPU check that training with the micro-batch CUDA graph ends where training without it does (one device call).

    python benchmarks/check_graph_training.py out.json

The tiny model, fp32, compiled layers and the loss gradient in forward either way, through Lightning: 16 packed
micro-batches at accumulation 2, validation every 4 (between graph replays) and a checkpoint every 2 optimizer steps.
With LoRA dropout on too: a replay draws its masks from the generator's state as the eager step does. The JSON gets
how far the graphed adapter is from the ungraphed one, and how many micro-batches each graph replayed.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader

from medqlora.callbacks.accumulation import GradientAccumulation
from medqlora.model.loading import QuantSpec
from medqlora.model.lora import LoraSpec
from medqlora.model.module import LeanSpec, QLoRAModule

ROWS, LENGTH, MICRO_BATCHES = 2, 128, 16


def packed_batches(n: int, vocab: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """n micro-batches of ROWS rows, each row packing samples of random lengths (prompt unsupervised)."""
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        ids = torch.randint(4, vocab, (ROWS, LENGTH), generator=gen)
        labels, positions = ids.clone(), torch.empty_like(ids)
        for row in range(ROWS):
            start = 0
            while start < LENGTH:
                length = min(int(torch.randint(16, 64, (1,), generator=gen)), LENGTH - start)
                positions[row, start : start + length] = torch.arange(length)
                labels[row, start : start + length // 3] = -100
                start += length
        batches.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return batches


class Replays(Callback):
    """Counts training micro-batches that ran through a captured graph."""

    def __init__(self):
        self.replayed = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.replayed += int(pl_module.train_step.graph is not None)


def train(cuda_graph: bool, dropout: float, workdir: Path) -> tuple[dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    lean = LeanSpec(compile_layers=True, loss_grad_in_forward=True, cuda_graph=cuda_graph)
    fp32 = QuantSpec(compute_dtype="float32")
    module = QLoRAModule("tiny", lean=lean, lora=LoraSpec(dropout=dropout), quantization=fp32)
    vocab = module.config.get_text_config().vocab_size
    train_rows, val_rows = packed_batches(MICRO_BATCHES, vocab, 1), packed_batches(2, vocab, 2)
    replays = Replays()
    trainer = L.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu",  # the CPU runs it uncaptured
        devices=1,
        precision="32-true",
        max_epochs=1,
        val_check_interval=4,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=workdir,
        callbacks=[GradientAccumulation(2), replays, ModelCheckpoint(dirpath=workdir, every_n_train_steps=2)],
    )
    loader = DataLoader(train_rows, batch_size=None)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=DataLoader(val_rows, batch_size=None))
    adapter = {n: p.detach().float().cpu() for n, p in module.model.named_parameters() if p.requires_grad}
    return adapter, replays.replayed


def main() -> None:
    out, results = Path(sys.argv[1]), {}
    for dropout in (0.0, 0.05):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            eager, _ = train(False, dropout, Path(a))
            graphed, replayed = train(True, dropout, Path(b))
        diff = sum(float((graphed[n] - w).pow(2).sum()) for n, w in eager.items() if "lora_B" in n) ** 0.5
        moved = sum(float(w.pow(2).sum()) for n, w in eager.items() if "lora_B" in n) ** 0.5
        results[f"dropout_{dropout}"] = {
            "replayed_micro_batches": replayed,
            "adapter_max_abs_diff": max(float((graphed[n] - w).abs().max()) for n, w in eager.items()),
            "adapter_rel_norm_diff_of_lora_B": diff / max(moved, 1e-30),
            "lora_B_norm": moved,
        }
        print(dropout, results[f"dropout_{dropout}"], flush=True)
    results["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
