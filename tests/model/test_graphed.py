"""lean.cuda_graph's step: masks from the position ids, a fixed-size loss, its own backward inside the training step.

The capture itself needs a GPU (benchmarks/path_check.py compares it with today's path there); on the CPU the same
step runs eagerly, and these tests hold it to today's loss, gradients and training.
"""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from helpers import loss_and_grads, packed_batch, padded_batch, perturbed_module

from medqlora.callbacks.accumulation import GradientAccumulation
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.model.masks import packed_attention_masks, sample_ids
from medqlora.model.module import LeanSpec, QLoRAModule
from medqlora.model.plan import Form


def test_masks_keep_each_packed_sample_to_itself_and_its_window():
    """Two rows: samples of 3 and 2 tokens packed, and one sample of 5; a window of 2."""
    position_ids = torch.tensor([[0, 1, 2, 0, 1], [0, 1, 2, 3, 4]])
    assert sample_ids(position_ids).tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
    masks = packed_attention_masks(position_ids, sliding_window=2)
    full, sliding = masks["full_attention"][:, 0].int(), masks["sliding_attention"][:, 0].int()
    assert full[0].tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    assert torch.equal(full[1], torch.ones(5, 5, dtype=torch.int).tril())
    assert sliding[1].tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 1, 1]]
    assert torch.equal(sliding[0], full[0] & torch.ones(5, 5, dtype=torch.int).triu(-1))


@pytest.mark.parametrize("layout", ["packed", "one-sample-rows"])
def test_masks_give_the_text_model_what_transformers_masks_give(tokenizer, layout):
    """The tiny model's hidden states with our masks equal those with the masks transformers builds itself."""
    module = perturbed_module(compute_dtype="float32")
    batch = packed_batch(tokenizer)
    if layout == "one-sample-rows":  # transformers gives full attention no mask here (SDPA's is_causal)
        batch = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    text_model = module.model.base_model.model.model
    with torch.no_grad():
        theirs = text_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).last_hidden_state
        masks = packed_attention_masks(batch["position_ids"], module.sliding_window)
        ours = text_model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=masks
        ).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def _fixed_shape_loss_and_grads(module: QLoRAModule, batch: dict):
    module.model.zero_grad()
    out = module(dict(batch), Form(own_masks=True, fixed_shape=True))  # the graph's training form
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("grad_in_forward", [False, True])
@pytest.mark.parametrize("batch_of", [packed_batch, padded_batch])
def test_fixed_shape_step_gives_todays_loss_gradients_and_accuracy(tokenizer, grad_in_forward, batch_of):
    """fp32, same batch: loss within 1e-6 and LoRA gradients within 1e-5 (relative norm) of today's step; the
    predictions at supervised positions are today's, and every other position is marked unsupervised."""
    module = perturbed_module(LeanSpec(loss_grad_in_forward=grad_in_forward), compute_dtype="float32")
    batch = batch_of(tokenizer)
    if batch_of is padded_batch:  # right padding: the module drops the mask before the batch moves
        batch = module.on_before_batch_transfer(batch, 0)
    today_loss, today_grads = loss_and_grads(module, batch)
    today = module(dict(batch))
    out, grads = _fixed_shape_loss_and_grads(module, batch)
    assert abs(out.loss.item() - today_loss.item()) <= 1e-6 * today_loss.item()
    for name, grad in today_grads.items():
        assert (grads[name] - grad).norm() <= 1e-5 * grad.norm() + 1e-9, name
    supervised = out.targets != -100
    assert out.targets.numel() == batch["labels"][:, 1:].numel() > supervised.sum()
    assert torch.equal(out.targets[supervised], today.targets) and torch.equal(out.preds[supervised], today.preds)


def _train(tmp_path, cuda_graph: bool, steps: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    lean = LeanSpec(loss_grad_in_forward=True, cuda_graph=cuda_graph)
    module = QLoRAModule("tiny", lean=lean)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[GradientAccumulation(2)],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule=MedicalMixDataModule(max_length=256, seed=0))
    # the module moves zero_grad knowing Lightning calls it once per optimizer step: no warning that it will
    assert not [w for w in caught if "accumulate_grad_batches != 1" in str(w.message)]
    assert trainer.global_step == steps
    assert module.plan.cuda_graph == cuda_graph
    metrics = trainer.callback_metrics
    assert 0 <= metrics["train/acc"] <= 1 and metrics["train/loss"] > 0 and metrics["train/tokens"] > 0
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}


def test_cuda_graph_switch_trains_as_todays_step(tmp_path):
    """Through Lightning, with accumulation: the switch's own backward (Lightning's is skipped) leaves the adapter
    where today's training does, within the rounding of a differently chunked loss."""
    today = _train(tmp_path / "today", cuda_graph=False)
    graphed = _train(tmp_path / "graphed", cuda_graph=True)
    moved = [n for n in today if "lora_B" in n and today[n].abs().max() > 0]
    assert moved, "the adapter trained"
    for name, weight in today.items():
        torch.testing.assert_close(graphed[name], weight, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    "world_size, scaler, message",
    [
        (2, None, r"cuda_graph=true trains on one device \(this run has 2 under .*configs/ddp\.yaml"),
        (1, object(), r"cuda_graph=true .* fp16's loss scaler .* bf16-mixed"),
    ],
)
def test_cuda_graph_refuses_what_its_backward_cannot_serve(monkeypatch, world_size, scaler, message):
    """Several processes (DDP's gradient hooks expect Lightning's backward) and fp16's loss scaler are refused
    before loading, naming the setting and the way out."""
    module = QLoRAModule("tiny", lean=LeanSpec(cuda_graph=True))
    strategy = type("S", (), {"root_device": torch.device("cpu")})()
    trainer = type("T", (), {"world_size": world_size, "strategy": strategy, "precision_plugin": type("P", (), {})()})()
    trainer.precision_plugin.scaler = scaler
    monkeypatch.setattr(QLoRAModule, "trainer", property(lambda self: trainer))
    module._trainer = trainer
    with pytest.raises(ValueError, match=message):
        module.configure_model()
    assert module.model is None


def test_cuda_graph_refuses_the_full_logits_loss_and_eager_attention():
    """The full-logits loss selects supervised positions on the host, and eager attention adds its mask to the scores
    (the graph's masks are boolean): both refused at the config, naming the switches."""
    with pytest.raises(ValueError, match=r"cuda_graph=true needs model\.lean\.chunked_loss=true"):
        LeanSpec(cuda_graph=True, chunked_loss=False)
    refused = r"cuda_graph=true needs model\.lean\.attention varlen, flex or sdpa, not 'eager'"
    with pytest.raises(ValueError, match=refused):
        LeanSpec(cuda_graph=True, attention="eager")
