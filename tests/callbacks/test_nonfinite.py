"""An injected NaN never reaches the adapter: the step is skipped and counted, or the run stops naming it."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from medqlora.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.model.loss import LossOutput
from medqlora.model.module import QLoRAModule


class NanAtStep(QLoRAModule):
    """Returns a NaN loss on one optimizer step (the fault being injected)."""

    def __init__(self, nan_step: int, **kwargs):
        super().__init__(**kwargs)
        self.nan_step = nan_step
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def training_step(self, batch, batch_idx):
        self.snapshots[self.trainer.global_step] = {k: v.clone() for k, v in self.trainable_state_dict().items()}
        return super().training_step(batch, batch_idx)

    def forward(self, batch, form=None):
        out = super().forward(batch, form)  # the loss the step's backward runs on
        if self.training and self.trainer.global_step == self.nan_step:
            out = LossOutput(out.loss * float("nan"), out.preds, out.targets)
        return out


def _fit(tmp_path, guard: NonFiniteGuard, max_steps: int = 4) -> NanAtStep:
    module = NanAtStep(nan_step=2, name_or_path="tiny", lr=1e-3)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[guard],
    )
    trainer.fit(module, datamodule=MedicalMixDataModule(max_length=256, seed=0))
    return module


@pytest.mark.faults
def test_skip_policy_leaves_the_adapter_untouched_and_counts(tmp_path):
    guard = NonFiniteGuard(policy="skip")
    module = _fit(tmp_path, guard)
    assert guard.skipped == 1
    before, after = module.snapshots[2], module.snapshots[3]
    assert all(torch.equal(before[k], after[k]) for k in before), "the NaN step changed the adapter"
    final = module.trainable_state_dict()
    assert all(torch.isfinite(v).all() for v in final.values())
    assert any(not torch.equal(final[k], before[k]) for k in final), "training did not go on after the skip"


@pytest.mark.faults
def test_stop_policy_names_the_step_and_the_fix(tmp_path):
    pattern = r"optimizer step 2 \(epoch 0; rows (medqa|o1|alpacare):\d+.*last good checkpoint: none saved yet.*policy"
    with pytest.raises(NonFiniteError, match=pattern):
        _fit(tmp_path, NonFiniteGuard(policy="stop"))


def test_bad_policy_is_refused():
    with pytest.raises(ValueError, match="NonFiniteGuard.policy='ignore'"):
        NonFiniteGuard(policy="ignore")


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_one_bad_element_in_one_tensor_is_caught(bad):
    from types import SimpleNamespace

    params = [torch.nn.Parameter(torch.zeros(n)) for n in (8, 4096, 3)]
    for p in params:
        p.grad = torch.randn_like(p)
    params[1].grad[1234] = bad
    optimizer = torch.optim.SGD(params, lr=0.1)
    trainer = SimpleNamespace(checkpoint_callback=None, global_step=5, current_epoch=0)
    logged = {}
    module = SimpleNamespace(log=lambda name, value, **kw: logged.update({name: value}))
    guard = NonFiniteGuard(policy="skip")
    guard.on_before_optimizer_step(trainer, module, optimizer)
    assert guard.skipped == 1 and logged == {"nonfinite/skipped": 1.0}
    assert all(p.grad is None for p in params)
    for p in params:  # all finite: the step goes ahead untouched
        p.grad = torch.randn_like(p)
    guard.on_before_optimizer_step(trainer, module, optimizer)
    assert guard.skipped == 1 and all(p.grad is not None for p in params)
