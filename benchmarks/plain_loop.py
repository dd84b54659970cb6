"""The model card's recipe as its users write it: transformers + PEFT + bitsandbytes in a plain PyTorch loop."""

from __future__ import annotations

import torch
from workload import ACCUMULATE, LORA, LR, MICRO_BATCH, TIMED_BATCHES, WARMUP_BATCHES, Clock, batch_stats


def run_plain(model_path: str, rows: list[dict], device: torch.device, careful: bool = False) -> Clock:
    """The card's recipe as its users write it: transformers + PEFT + bitsandbytes, a plain loop.

    careful: also put the model in training mode, as a careful user does: `from_pretrained` returns it in eval
    mode, where transformers skips the gradient checkpointing `prepare_model_for_kbit_training` switched on (and
    LoRA dropout is off); the literal loop trains so."""
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from medqlora.data.collate import pad_collate
    from medqlora.model.lora import LoraSpec

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_path, quantization_config=quant, dtype=torch.bfloat16, device_map={"": str(device)}
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    # the card's plain name list trips on the vision tower's Gemma4ClippableLinear: language model only
    spec = LoraSpec(**LORA)
    lora = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.target_regex(),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.config.use_cache = False
    if careful:
        model.train()
    optimizer = bnb.optim.AdamW8bit([p for p in model.parameters() if p.requires_grad], lr=LR)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = Clock()
    clock.tick({})
    for i in range(WARMUP_BATCHES + TIMED_BATCHES):
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
