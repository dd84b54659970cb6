"""The adapter's optimizer: AdamW, 8-bit by bitsandbytes (the recipe's) or torch's.

bitsandbytes' 8-bit AdamW updates one tensor at a time and synchronises the device after each (for its paged
variant's prefetches); over the 410 LoRA tensors of E2B that is 410 host-device round trips per optimizer step.
`AdamW8bit` is the same optimizer without them: the same kernel, arguments, state and checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import Literal

import torch

Optimizer = Literal["adamw_8bit", "paged_adamw_8bit", "adamw"]


@cache  # one class: bitsandbytes is imported only when the 8-bit optimizer is asked for
def _bnb_adamw8bit() -> type:
    import bitsandbytes as bnb

    class AdamW8bit(bnb.optim.AdamW8bit):
        """bitsandbytes' 8-bit AdamW whose step leaves the device queue running: no synchronisation per tensor
        (the kernels of one stream already run in order; only paged state, not used here, needs the sync)."""

        @torch.no_grad()
        def step(self, closure: Callable[[], float] | None = None) -> float | None:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            if not self.initialized:  # as bitsandbytes' step does on its first call
                self.check_overrides()
                self.to_gpu()
                self.initialized = True
            for gindex, group in enumerate(self.param_groups):
                for pindex, p in enumerate(group["params"]):
                    if p.grad is None:
                        continue
                    if not self.state[p]:
                        self.init_state(group, p, gindex, pindex)
                    self.update_step(group, p, gindex, pindex)
            return loss

    return AdamW8bit


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
        return _bnb_adamw8bit()(params, **kwargs)
    raise ValueError(f"model.optimizer={name!r}: use adamw_8bit (the recipe), paged_adamw_8bit or adamw")
