"""model.optimizer: medqlora's 8-bit AdamW is bitsandbytes' own, step for step, without a device sync per tensor."""

from __future__ import annotations

import bitsandbytes as bnb
import bitsandbytes.optim.optimizer as bnb_optimizer
import pytest
import torch

from medqlora.model.optimizer import build_optimizer

# LoRA-like shapes: 8-bit state from 4096 elements on (bitsandbytes' min_8bit_size), fp32 state below it
SHAPES = [(16, 1536), (2048, 16), (256, 16), (16, 64), (64, 16)]
KWARGS = {"lr": 2e-4, "betas": (0.9, 0.999), "weight_decay": 0.01}


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in SHAPES]


def _train(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], steps: int, seed: int = 1) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator) * 10
        optimizer.step()


def test_steps_equal_bitsandbytes_and_skip_the_per_tensor_sync(monkeypatch):
    syncs = []
    monkeypatch.setattr(bnb_optimizer, "sync_gpu", lambda t: syncs.append(t))
    ours, theirs = _params(), _params()
    ours_opt = build_optimizer(ours, "adamw_8bit", **KWARGS)
    theirs_opt = bnb.optim.AdamW8bit(theirs, **KWARGS)
    _train(ours_opt, ours, steps=5)
    assert syncs == []
    _train(theirs_opt, theirs, steps=5)
    assert len(syncs) == 5 * len(SHAPES)  # bitsandbytes' step: one per tensor
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    dtypes = {ours_opt.state[p]["state1"].dtype for p in ours}
    assert dtypes == {torch.uint8, torch.float32}, dtypes  # both of bitsandbytes' state kinds were exercised
    for p, q in zip(ours, theirs):
        for key, value in ours_opt.state[p].items():
            other = theirs_opt.state[q][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key


def test_state_dict_is_bitsandbytes_own_both_ways():
    """Checkpoints written before (bitsandbytes' class) resume here, and the other way round."""
    ours, theirs = _params(), _params()
    theirs_opt = bnb.optim.AdamW8bit(theirs, **KWARGS)
    _train(theirs_opt, theirs, steps=3)
    with torch.no_grad():
        for p, q in zip(ours, theirs):
            p.copy_(q)
    ours_opt = build_optimizer(ours, "adamw_8bit", **KWARGS)
    ours_opt.load_state_dict(theirs_opt.state_dict())
    _train(ours_opt, ours, steps=2, seed=7)
    _train(theirs_opt, theirs, steps=2, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def test_unknown_optimizer_names_the_choices():
    with pytest.raises(ValueError, match=r"model.optimizer='sgd': use adamw_8bit \(the recipe\), paged_adamw_8bit"):
        build_optimizer(_params(), "sgd", **KWARGS)
