"""The peer trainer a user would pick instead of medqlora: TRL's SFTTrainer, set up as its docs recommend for this
recipe (`pip install -e ".[bench]"`).

The card's recipe through TRL: the NF4 double-quant base in bf16 compute, PEFT LoRA r16/a16/d0.05 on the language
model's q/k/v/o/gate/up/down, transformers' bitsandbytes 8-bit AdamW at 2e-4, cosine with 5% warm-up, micro-batch 2 x
accumulation 8, rows packed to 2048 (best-fit decreasing, which turns padding-free on), the loss on the answers only
(TRL's `nll` loss, computed in chunks), gradient checkpointing. It trains the benchmark's pre-tokenised rows, answer
tokens marked by `completion_mask`. Timed per optimizer step (a whole accumulation window), the first one untimed.
"""

from __future__ import annotations

from pathlib import Path

import torch
from plain_loop import card_lora, card_model
from workload import (
    ACCUMULATE,
    LR,
    MAX_LEN,
    MICRO_BATCH,
    RECIPE,
    TIMED_BATCHES,
    Clock,
    batch_stats,
    copy_tiny_tokenizer,
)


class _Counting:
    """TRL's collator, adding each micro-batch's figures (tokens, supervised, rows, FLOPs) to `pending`."""

    def __init__(self, collate, pending: list[dict]):
        self.collate, self.pending = collate, pending

    def __call__(self, examples):
        batch = self.collate(examples)
        self.pending.append(batch_stats(batch))
        return batch


def run_trl(model_path: str, rows: list[dict], device: torch.device) -> Clock:
    """Train `rows` with TRL's SFTTrainer; returns a clock ticked at every optimizer step (the first is warm-up)."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model, peft = card_model(model_path, device), card_lora()
    data = Dataset.from_list(
        [{"input_ids": r["input_ids"], "completion_mask": [int(t != -100) for t in r["labels"]]} for r in rows]
    )
    steps = 1 + TIMED_BATCHES // ACCUMULATE  # one warm-up step, then whole accumulation windows
    config = SFTConfig(
        output_dir="/tmp/trl-peer",
        max_steps=steps,
        per_device_train_batch_size=MICRO_BATCH,
        gradient_accumulation_steps=ACCUMULATE,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=RECIPE["warmup_ratio"],  # a float below 1: a share of the steps (transformers 5)
        optim="adamw_bnb_8bit",
        bf16=device.type == "cuda",
        use_cpu=device.type != "cuda",
        gradient_checkpointing=True,
        max_length=MAX_LEN,
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        completion_only_loss=True,
        loss_type="nll",
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
    )
    clock, pending = Clock(), []

    class Tick(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            clock.tick({})

        def on_step_end(self, args, state, control, **kwargs):
            window = {k: sum(p[k] for p in pending) for k in ("tokens", "supervised", "rows", "slots", "flops")}
            pending.clear()
            clock.tick(window)

    if not (Path(model_path) / "tokenizer_config.json").exists():  # the random E2B checkpoint has none
        copy_tiny_tokenizer(Path(model_path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)  # TRL reads its pad and end tokens; the rows are ids
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft, callbacks=[Tick()]
    )
    trainer.data_collator = _Counting(trainer.data_collator, pending)
    trainer.train()
    return clock
