"""The adapter's optimizer: AdamW, 8-bit by bitsandbytes (the recipe's) or torch's.

bitsandbytes' 8-bit AdamW updates one tensor at a time and synchronises the device after each (for its paged
variant's prefetches); over the 410 LoRA tensors of E2B that is 410 host-device round trips per optimizer step.
`medqlora.compat.adamw8bit_without_syncs` is the same optimizer without them: the same kernel, arguments, state and
checkpoints. On one H200 at the recipe's setting it is worth ~1% of training throughput (with bitsandbytes' own step
the default trained at 0.989x, with this one 0.997x, of the same run's earlier build:
benchmarks/results/2026-12-02-h200-step-unit.json), so it stays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from medqlora.compat import adamw8bit_without_syncs

Optimizer = Literal["adamw_8bit", "paged_adamw_8bit", "adamw"]


def build_optimizer(
    params: Iterable[torch.nn.Parameter], name: Optimizer, lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW over `params`: `adamw_8bit` (8-bit state, the recipe), `paged_adamw_8bit` (state pages to host memory
    under pressure; bitsandbytes' own step) or `adamw` (torch, fp32 state)."""
    kwargs = {"lr": lr, "betas": tuple(betas), "weight_decay": weight_decay}
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if name == "paged_adamw_8bit":
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, **kwargs)
    if name == "adamw_8bit":
        return adamw8bit_without_syncs()(params, **kwargs)
    raise ValueError(f"model.optimizer={name!r}: use adamw_8bit (the recipe), paged_adamw_8bit or adamw")
