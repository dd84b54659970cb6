"""The model card's recipe as its users write it: transformers + PEFT + bitsandbytes in a plain PyTorch loop."""

from __future__ import annotations

import torch
from workload import ACCUMULATE, LORA, LR, MICRO_BATCH, Clock, batch_stats


def card_model(model_path: str, device: torch.device):
    """The card's NF4 double-quant base in bf16 compute, loaded as its users load it (`from_pretrained`)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return AutoModelForCausalLM.from_pretrained(
        model_path, quantization_config=quant, dtype=torch.bfloat16, device_map={"": str(device)}
    )


def card_lora():
    """The card's LoRA as a PEFT config; its plain name list trips on the vision tower's Gemma4ClippableLinear, so
    the targets are the language model's (medqlora's regex)."""
    from peft import LoraConfig

    from medqlora.model.lora import LoraSpec

    spec = LoraSpec(**LORA)
    return LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_regex(),
        task_type="CAUSAL_LM",
    )


def run_plain(model_path: str, rows: list[dict], device: torch.device, careful: bool = False) -> Clock:
    """The card's recipe as its users write it: transformers + PEFT + bitsandbytes, a plain loop, over all of `rows`
    in micro-batches of two (padded to the longer), an optimizer step every eight.

    careful: also put the model in training mode, as a careful user does: `from_pretrained` returns it in eval
    mode, where transformers skips the gradient checkpointing `prepare_model_for_kbit_training` switched on (and
    LoRA dropout is off); the literal loop trains so."""
    import bitsandbytes as bnb
    from peft import get_peft_model, prepare_model_for_kbit_training

    from medqlora.data.collate import pad_collate

    model = prepare_model_for_kbit_training(card_model(model_path, device), use_gradient_checkpointing=True)
    model = get_peft_model(model, card_lora())
    model.config.use_cache = False
    if careful:
        model.train()
    optimizer = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=LR)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = Clock()
    clock.tick({})
    for i in range(len(rows) // MICRO_BATCH):
        batch = pad_collate(rows[i * MICRO_BATCH : (i + 1) * MICRO_BATCH], pad_id=0)  # to the longest of the two
        stats = batch_stats(batch)
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss / ACCUMULATE
        loss.backward()
        if (i + 1) % ACCUMULATE == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        clock.tick(stats)
    return clock
