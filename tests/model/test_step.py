"""model/step.py: the accumulation protocol, graphed or not, on the CPU through a graph that records and replays.

`RecordingGraph` stands in for a CUDA graph with its semantics: capturing records the step and computes nothing (the
gradients and the random stream are put back as they were), every replay runs the recorded step on what the input
buffers hold and writes into the output buffers the capture returned, and the weights' gradient tensors must be the
ones captured with (a real graph accumulates into those addresses). The GPU check (benchmarks/check_graph_training.py)
keeps the real graph honest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from medqlora.callbacks.accumulation import GradientAccumulation
from medqlora.callbacks.nonfinite import NonFiniteGuard
from medqlora.model.loading import QuantSpec
from medqlora.model.lora import LoraSpec
from medqlora.model.module import LeanSpec, QLoRAModule
from medqlora.model.step import TrainStep

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from check_graph_training import packed_batches  # noqa: E402  (the GPU check's batches: one shape, packed rows)


class RecordingGraph:
    """A CUDA graph's contract on the CPU (module docstring)."""

    made: list[RecordingGraph] = []

    def __init__(self, owner: TrainStep):
        self.owner, self.captures, self.replays, self.step, self.out, self.grads = owner, 0, 0, None, None, []
        RecordingGraph.made.append(self)

    def capture(self, step):
        self.captures += 1
        self.grads = [p.grad for p in self.owner.params]
        saved_grads = [g.clone() for g in self.grads]
        saved_rng = torch.get_rng_state()
        self.step, self.out = step, step()
        torch.set_rng_state(saved_rng)  # capturing draws nothing
        for grad, saved in zip(self.grads, saved_grads):
            grad.copy_(saved)  # ... and computes nothing
        return self.out

    def replay(self):
        self.replays += 1
        assert all(p.grad is g for p, g in zip(self.owner.params, self.grads)), "replay into the captured gradients"
        out = self.step()
        self.out.loss.copy_(out.loss)
        self.out.preds.copy_(out.preds)
        self.out.targets.copy_(out.targets)
        assert all(p.grad is g for p, g in zip(self.owner.params, self.grads)), "accumulated in place"


def _module() -> QLoRAModule:
    """The tiny model in fp32 with the graph's step (fixed-shape loss, own masks) and LoRA dropout on."""
    torch.manual_seed(0)
    lean = LeanSpec(cuda_graph=True, compile_layers=False)
    module = QLoRAModule("tiny", lean=lean, lora=LoraSpec(dropout=0.1), quantization=QuantSpec(compute_dtype="float32"))
    module.configure_model()
    with torch.no_grad():  # LoRA B starts at zero; make A's gradients non-zero too
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return module


def _steps(module: QLoRAModule, graphed: bool) -> TrainStep:
    RecordingGraph.made = []
    step = TrainStep(
        lambda batch: module.forward(batch, module.plan.train),
        module.train_step.params,
        graphed=graphed,
        can_capture=lambda batch: "attention_mask" not in batch,
    )
    step.make_graph = lambda: RecordingGraph(step)
    return step


def _run(step: TrainStep, batches: list[dict], first_idx: int, accumulate: int) -> list[dict[str, torch.Tensor]]:
    """The weights' gradients after every micro-batch (None where a window was just zeroed and none came yet)."""
    torch.manual_seed(5)
    seen = []
    for i, batch in enumerate(batches):
        step(dict(batch), first_idx + i, accumulate)
        seen.append([p.grad.clone() for p in step.params])
    return seen


@pytest.mark.parametrize("first_idx", [0, 3], ids=["from-a-window-start", "resumed-mid-window"])
def test_recorded_graph_accumulates_what_the_eager_step_does(first_idx):
    """Accumulation 4 over 9 micro-batches: after each one the gradients equal the eager step's, through the eager
    warm-up, the capture and the replays, including a start in the middle of a window (a resume there: no graph yet,
    no gradients, the window's first micro-batches lost alike)."""
    module = _module()
    batches = packed_batches(9, module.config.get_text_config().vocab_size, seed=1)
    eager = _run(_steps(module, graphed=False), batches, first_idx, accumulate=4)
    for p in module.train_step.params:
        p.grad = None
    step = _steps(module, graphed=True)
    graphed = _run(step, batches, first_idx, accumulate=4)
    (graph,) = RecordingGraph.made
    assert graph.captures == 1 and graph.replays == 9 - step.eager_steps
    for i, (ours, theirs) in enumerate(zip(graphed, eager)):
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=f"micro-batch {i}")


def test_a_new_accumulation_factor_is_captured_again_and_other_shapes_run_eagerly():
    """The capture bakes in 1 / accumulate: a new factor drops the graph and captures again; a batch of another shape
    runs eagerly beside the graph, which later batches of the captured shape still replay."""
    module = _module()
    vocab = module.config.get_text_config().vocab_size
    step = _steps(module, graphed=True)
    batches = packed_batches(6, vocab, seed=2)
    for i, batch in enumerate(batches[:4]):
        step(dict(batch), i, 2)
    first = step.graph  # micro-batches 0 and 1 eager, 2 captured and replayed, 3 replayed
    assert first.captures == 1 and first.replays == 2
    short = {k: v[:, :64] for k, v in batches[4].items()}  # another shape
    step(short, 4, 2)
    assert step.graph is first and first.replays == 2
    step(dict(batches[4]), 5, 2)
    assert first.replays == 3
    for i, batch in enumerate(batches):
        step(dict(batch), 6 + i, 3)
    assert len(RecordingGraph.made) == 2 and step.graph is RecordingGraph.made[1] and step.accumulate == 3


class _PoisonStep(Callback):
    """Makes optimizer step `at` non-finite (before NonFiniteGuard, which comes after it, checks)."""

    def __init__(self, at: int):
        self.at = at

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.at:
            next(p for p in pl_module.train_step.params if p.grad is not None).grad.fill_(float("nan"))


class _Inject(Callback):
    """Puts the recording graph into the module's step unit (the CPU otherwise never captures)."""

    def on_train_start(self, trainer, pl_module):
        RecordingGraph.made = []
        pl_module.train_step.make_graph = lambda: RecordingGraph(pl_module.train_step)
        pl_module.train_step.can_capture = lambda batch: "attention_mask" not in batch


def _fit(tmp_path, graphed: bool) -> tuple[QLoRAModule, NonFiniteGuard]:
    torch.manual_seed(0)
    module = QLoRAModule(
        "tiny",
        lean=LeanSpec(cuda_graph=graphed, compile_layers=False),
        lora=LoraSpec(dropout=0.1),
        quantization=QuantSpec(compute_dtype="float32"),
        lr=1e-2,
    )
    batches = packed_batches(12, module.config.get_text_config().vocab_size, seed=3)
    guard = NonFiniteGuard(policy="skip")
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[GradientAccumulation(3), _PoisonStep(at=1), guard, _Inject()],
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert trainer.global_step == 4
    return module, guard


def test_through_lightning_a_skipped_step_and_the_graph_train_as_the_eager_step(tmp_path):
    """12 micro-batches at accumulation 3 through Lightning, the second optimizer step made NaN and skipped by
    NonFiniteGuard (it sets the gradients to None; the next replay must put zeroed ones back): the recorded graph
    ends with the eager step's adapter."""
    eager, eager_guard = _fit(tmp_path / "eager", graphed=False)
    graphed, guard = _fit(tmp_path / "graphed", graphed=True)
    (graph,) = RecordingGraph.made
    assert graph.captures == 1 and graph.replays == 12 - 2
    assert guard.skipped == eager_guard.skipped == 1
    ours = dict(graphed.model.named_parameters())
    moved = 0
    for name, weight in eager.model.named_parameters():
        if weight.requires_grad:
            torch.testing.assert_close(ours[name], weight, rtol=1e-5, atol=1e-6, msg=name)
            moved += "lora_B" in name and bool(weight.abs().max() > 0)  # B starts at zero
    assert moved, "the adapter trained"
