"""model/plan.py: the switch table refuses each combination with both settings and the fix named; `auto` resolves to
the recipe on one GPU and to what can run elsewhere; the plan fixes the step's forms once."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from helpers import RECIPE

from medqlora.model.lean import LeanSpec
from medqlora.model.plan import CONFLICTS, Form, RunFacts, plan_step

GPU = RunFacts(device_type="cuda", packing=True)
DDP = dataclasses.replace(GPU, world_size=2, strategy="DDPStrategy")
FSDP = dataclasses.replace(GPU, world_size=2, strategy="QLoRAFSDPStrategy", fsdp=True)

# one case per row of CONFLICTS, in its order: (switches, run or None for the config alone, what the message says)
CASES = [
    ({"cuda_graph": True, "chunked_loss": False, "loss_grad_in_forward": False}, None, "chunked_loss=true"),
    ({"cuda_graph": True, "attention": "eager"}, None, "attention varlen, flex or sdpa, not 'eager'"),
    (
        {"compile_layers": True, "attention": "eager", "cuda_graph": False},
        None,
        "attention varlen, flex or sdpa, not 'eager'",
    ),
    ({"attention": "flex", "cuda_graph": False}, dataclasses.replace(GPU, packing=False), "flex with data.packing"),
    ({"attention": "varlen"}, dataclasses.replace(GPU, compute_dtype="float32"), "compute_dtype='float32'"),
    ({"attention": "flex"}, RunFacts(), "attention=flex on trainer.accelerator cpu: FlexAttention"),
    ({"chunked_loss": False}, None, "loss_grad_in_forward=true needs model.lean.chunked_loss=true"),
    ({"cuda_graph": True}, DDP, "this run has 2 under trainer.strategy DDPStrategy"),
    ({"cuda_graph": True}, dataclasses.replace(GPU, loss_scaler=True), "trainer.precision bf16-mixed"),
    ({"cuda_graph": True}, dataclasses.replace(GPU, packing=False), "data.packing"),
    ({"compile_layers": True, "cuda_graph": False}, FSDP, "under FSDP (trainer.strategy QLoRAFSDPStrategy)"),
    ({}, dataclasses.replace(GPU, missing_compiler="gcc"), "(gcc: apt install build-essential)"),
    ({"offload_checkpoints": True, "cuda_graph": True}, None, "offload_checkpoints=true with model.lean.cuda_graph"),
    ({"offload_checkpoints": True, "checkpoint_share": 0.0}, None, "no layer is checkpointed"),
    ({"offload_checkpoints": True}, FSDP, "offload_checkpoints=true is not supported under FSDP"),
    ({"activation_budget": 0.5}, RunFacts(), "activation_budget=0.5 needs compiled layers (model.lean.compile_layers"),
    ({}, dataclasses.replace(FSDP, quant_storage="uint8"), "quant_storage='uint8' cannot be sharded"),
]


def test_every_row_of_the_table_has_a_case():
    assert len(CASES) == len(CONFLICTS)


@pytest.mark.parametrize("row", range(len(CASES)))
def test_each_conflict_is_refused_naming_both_settings_and_the_way_out(row):
    switches, run, says = CASES[row]
    conflict = CONFLICTS[row]
    with pytest.raises(ValueError) as raised:
        if run is None:
            LeanSpec(**switches)  # at parse time
        else:
            plan_step(LeanSpec(**switches), run)  # at set-up
    message = str(raised.value)
    assert says in message
    assert message.startswith(conflict.settings.split("{")[0]) and conflict.fix.split("{")[0] in message
    assert message.count("model.") + message.count("trainer.") + message.count("data.") >= 2, message


def test_auto_is_the_recipe_on_one_gpu_and_what_can_run_elsewhere():
    lean = LeanSpec()
    assert (plan_step(lean, GPU).compile_layers, plan_step(lean, GPU).cuda_graph) == (True, True)
    assert (plan_step(lean, DDP).compile_layers, plan_step(lean, DDP).cuda_graph) == (True, False)
    assert (plan_step(lean, FSDP).compile_layers, plan_step(lean, FSDP).cuda_graph) == (False, False)
    assert not plan_step(lean, dataclasses.replace(GPU, packing=False)).cuda_graph
    assert not plan_step(lean, dataclasses.replace(GPU, loss_scaler=True)).cuda_graph
    cpu = plan_step(lean, RunFacts())
    assert (cpu.compile_layers, cpu.cuda_graph, cpu.backward_in_step) == (False, False, True)
    assert plan_step(lean, GPU).attention == plan_step(lean, DDP).attention == "varlen"
    for elsewhere in (
        RunFacts(),
        dataclasses.replace(GPU, packing=False),
        dataclasses.replace(GPU, compute_dtype="float32"),
    ):
        assert plan_step(lean, elsewhere).attention == "sdpa"  # no kernel, no samples, or fp32 (flash has none)
    assert plan_step(LeanSpec(attention="varlen"), RunFacts()).attention == "varlen"  # per sample on a CPU
    assert not plan_step(lean, DDP).backward_in_step  # DDP's gradient hooks need Lightning's backward


def test_the_defaults_are_the_recipe_yamls_switches():
    """LeanSpec's defaults, resolved on one GPU, are the recipe's `model.lean` (code and YAML agree)."""
    recipe = yaml.safe_load(RECIPE.read_text())["model"]["lean"]
    defaults = dataclasses.asdict(LeanSpec())
    plan = plan_step(LeanSpec(), GPU)
    resolved = {**defaults, "compile_layers": plan.compile_layers, "cuda_graph": plan.cuda_graph}
    resolved["attention"] = plan.attention
    assert {k: resolved[k] for k in recipe} == recipe


def test_the_plan_fixes_the_forms_and_the_loss():
    graphed = plan_step(LeanSpec(), GPU)
    assert graphed.train == Form(sample_bounds=True, fixed_shape=True) and graphed.evaluate == Form(sample_bounds=True)
    assert graphed.loss == "chunked_grad_in_forward"
    masked = plan_step(LeanSpec(attention="sdpa"), GPU)
    assert masked.train == Form(own_masks=True, fixed_shape=True) and masked.evaluate == Form(own_masks=True)
    eager = plan_step(LeanSpec(compile_layers=False, cuda_graph=False, loss_grad_in_forward=False), GPU)
    assert eager.train == eager.evaluate == Form(sample_bounds=True) and eager.loss == "chunked"
    flex = plan_step(LeanSpec(attention="flex"), GPU)
    assert flex.attention == "flex" and flex.train == graphed.train and flex.evaluate == graphed.evaluate
    plain = plan_step(LeanSpec(chunked_loss=False, loss_grad_in_forward=False), GPU)
    assert plain.loss == "full_logits" and not plain.cuda_graph
