"""FSDP-QLoRA's pieces that run without a GPU: wrap policy, settings checks, precision policy, resume guard.
(PyTorch's FSDP itself needs an accelerator: training, checkpoint and resume on 2 GPUs are checked by
benchmarks/check_fsdp_resume.py, results in benchmarks/results/2026-11-25-h200x2-fsdp-nan-and-resume.json.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import make_module
from lightning.pytorch.plugins.precision import FSDPPrecision

from medqlora.model.distributed import QLoRAFSDPStrategy, decoder_layer_classes, qlora_wrap_policy
from medqlora.model.loading import QuantSpec
from medqlora.model.module import LeanSpec
from medqlora.model.plan import RunFacts, plan_step


def test_wrap_policy_takes_decoder_layers_and_lora_matrices_only():
    module = make_module()
    wrapped = {name for name, m in module.model.named_modules() if qlora_wrap_policy(m, False, 0)}
    layers = [n for n, m in module.model.named_modules() if isinstance(m, tuple(decoder_layer_classes()))]
    assert layers and set(layers) <= wrapped
    others = wrapped - set(layers)
    assert others and all(".lora_A." in n or ".lora_B." in n for n in others), sorted(others)[:5]
    assert not any(n.endswith("base_layer") for n in wrapped), "frozen 4-bit linears stay in their layer's unit"


def test_fsdp_refuses_4bit_weights_not_stored_in_the_compute_dtype(monkeypatch):
    """Checked by the switch table (model/plan.py) against the run's facts, before loading."""
    quant = QuantSpec(quant_storage="uint8")
    # no devices set up here: the facts need only the device's type
    monkeypatch.setattr(QLoRAFSDPStrategy, "root_device", property(lambda self: torch.device("cpu")))
    trainer = SimpleNamespace(strategy=QLoRAFSDPStrategy(), world_size=2, precision_plugin=None)
    with pytest.raises(ValueError, match=r"quant_storage='uint8'.*'bfloat16'"):
        plan_step(LeanSpec(), RunFacts.of(trainer, quant))


def test_quant_storage_value_is_checked():
    with pytest.raises(ValueError, match="model.quantization.quant_storage='int4'"):
        QuantSpec(quant_storage="int4")


@pytest.mark.parametrize(
    "key, value",
    [("state_dict_type", "sharded"), ("sharding_strategy", "SHARD_GRAD_OP"), ("sharding_strategy", "NO_SHARD")],
)
def test_fsdp_strategy_refuses_settings_qlora_cannot_run(key, value):
    with pytest.raises(ValueError, match=f"trainer.strategy.init_args.{key}='{value}'"):
        QLoRAFSDPStrategy(**{key: value})


def test_fsdp_keeps_buffers_in_their_dtype_and_reduces_lora_gradients_in_fp32():
    strategy = QLoRAFSDPStrategy()
    strategy.precision_plugin = FSDPPrecision("bf16-mixed")
    config = strategy.mixed_precision_config
    assert config.param_dtype == torch.bfloat16  # compute in bf16 as on one device
    assert config.buffer_dtype is None and config.reduce_dtype == torch.float32
    assert strategy.lightning_restore_optimizer  # so Lightning hands the checkpoint to load_optimizer_state_dict


def test_fsdp_checkpoint_resumes_only_on_as_many_ranks_as_wrote_it():
    strategy = QLoRAFSDPStrategy()  # world size 1 here
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    strategy.optimizers = [optimizer]
    saved = optimizer.state_dict()
    with pytest.raises(ValueError, match="holds 2 ranks but the run has 1"):
        strategy.load_optimizer_state_dict({"optimizer_states": [{"fsdp_rank_states": [saved, saved]}]})
    with pytest.raises(ValueError, match="holds no per-rank state"):
        strategy.load_optimizer_state_dict({"optimizer_states": [saved]})
    strategy.load_optimizer_state_dict({"optimizer_states": [{"fsdp_rank_states": [saved]}]})
