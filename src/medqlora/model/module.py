"""QLoRAModule: Gemma 4 in NF4 with a LoRA adapter, as a LightningModule.

Lightning owns the loop, precision and checkpoints; this module owns the math: load and wrap the model
(`configure_model`), one step function shared by training and validation, the optimizer, and which
weights a checkpoint holds (the adapter only, never the frozen 4-bit base).
"""

from __future__ import annotations

import random

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric

from medqlora import compat
from medqlora.data.chat import IGNORE_INDEX
from medqlora.data.collate import sample_bounds
from medqlora.hub import load_config, load_tokenizer
from medqlora.model.adapter import continued_lora, find_adapter, load_adapter_weights
from medqlora.model.attention import register as register_attention
from medqlora.model.checkpointing import apply_to_eager_layers, checkpointed_layers
from medqlora.model.compile import compile_decoder_layers, missing_compiler
from medqlora.model.distributed import clean_name, is_fsdp
from medqlora.model.host_embedding import HostEmbedding, share_across_local_ranks
from medqlora.model.lean import LeanSpec
from medqlora.model.loading import QuantSpec, load_base_model
from medqlora.model.lora import LoraSpec, apply_lora, trainable_summary
from medqlora.model.loss import LossOutput, chunked_lm_loss, full_logits_loss
from medqlora.model.masks import packed_attention_masks, sample_ids
from medqlora.model.optimizer import Optimizer, build_optimizer
from medqlora.model.parts import embedded_inputs, lm_head, ple_rows_for, text_model
from medqlora.model.plan import PER_SAMPLE, Form, RunFacts, StepPlan, plan_step
from medqlora.model.step import TrainStep


def drop_right_padding_mask(batch: dict) -> dict:
    """The batch without its attention mask when every row is right-padded (a mask like 1 1 1 0 0).

    Causal attention already keeps real tokens off padding that follows them, and their loss, outputs and gradients
    are the same without the mask. With it, a pad token further than the sliding window (512 on E2B) past its row's
    end has nothing left to attend to, and CUDA's SDPA kernels turn such rows into NaN gradients (docs/distributed.md).
    Left-padded masks are kept: there the mask is what hides the padding.
    """
    mask = batch.get("attention_mask")
    if mask is None or not bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return batch
    return {k: v for k, v in batch.items() if k != "attention_mask"}


class QLoRAModule(L.LightningModule):
    """Fine-tunes a 4-bit Gemma 4 with LoRA; logs loss and next-token accuracy on supervised tokens.

    Args:
        name_or_path: hub id (`google/gemma-4-E2B-it`), local directory, or `tiny` (the embedded default).
        quantization: 4-bit settings of the frozen base.
        lora: adapter settings.
        optimizer: bitsandbytes 8-bit AdamW (default), its paged variant, or torch AdamW.
        lr: peak learning rate (the schedule callback scales it).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        gradient_checkpointing: recompute decoder layers in backward (non-reentrant): `lean.checkpoint_share` of
            them, every one by default (model/checkpointing.py).
        lean: memory/speed switches (see LeanSpec).
        init_adapter: start from this PEFT adapter's weights (a run's `adapter/` folder, or a hub id such as
            `fulvio/gemma-4-e2b-medical-qlora-adapter`) instead of a fresh LoRA: its r, alpha and targets are read from
            it (a `lora` that contradicts them is refused) and its base must be `name_or_path`. The optimizer and
            schedule start fresh: this begins a new run, `--ckpt_path` continues one.
        seed: seed of the adapter's initialisation and of the dropout stream that follows it, so a run does not
            depend on how much randomness data preparation happened to draw (e.g. cache hit or miss).
    """

    def __init__(
        self,
        name_or_path: str = "tiny",
        quantization: QuantSpec | None = None,
        lora: LoraSpec | None = None,
        optimizer: Optimizer = "adamw_8bit",
        lr: float = 2e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        gradient_checkpointing: bool = True,
        lean: LeanSpec | None = None,
        init_adapter: str | None = None,
        seed: int = 0,
    ):
        super().__init__()
        if lr <= 0:
            raise ValueError(f"model.lr={lr} must be > 0 (recipe: 2e-4)")
        if weight_decay < 0:
            raise ValueError(f"model.weight_decay={weight_decay} must be >= 0")
        if lean is not None and lean.offload and not gradient_checkpointing:
            raise ValueError(
                "model.lean.offload_checkpoints=true with model.gradient_checkpointing=false: only checkpointed "
                "layers' inputs are offloaded; turn gradient_checkpointing on or offload_checkpoints off"
            )
        if lean is not None and lean.kept_activations < 1 and gradient_checkpointing and lean.share == 1.0:
            raise ValueError(
                f"model.lean.activation_budget={lean.activation_budget} with every layer checkpointed "
                "(model.lean.checkpoint_share=1.0): no layer keeps activations to trim; lower checkpoint_share "
                "(0: none) or set activation_budget to 1"
            )
        self.save_hyperparameters()
        self.name_or_path, self.optimizer_name = name_or_path, optimizer
        self.quant, self.lora = quantization or QuantSpec(), lora or LoraSpec()
        self.parent_adapter = find_adapter(init_adapter) if init_adapter else None
        if self.parent_adapter is not None:
            self.lora = continued_lora(self.parent_adapter, lora, name_or_path, f"model.init_adapter={init_adapter!r}")
        self.lean = lean or LeanSpec()
        self.config = load_config(name_or_path)
        text = self.config.get_text_config()
        self.softcap, self.sliding_window = text.final_logit_softcapping, text.sliding_window
        self.model = None
        self.plan: StepPlan | None = None  # fixed at set-up (model/plan.py)
        self.train_step: TrainStep | None = None  # the accumulation protocol (model/step.py)
        self.strict_loading = False  # checkpoints hold the adapter only
        for split in ("train", "val", "test"):
            # token-weighted means; "disable": checking each value for NaN would make the host wait for the GPU
            setattr(self, f"{split}_acc", MeanMetric(nan_strategy="disable"))  # next-token accuracy (micro)
            setattr(self, f"{split}_loss", MeanMetric(nan_strategy="disable"))

    # -- model --------------------------------------------------------------------------------------
    def configure_model(self) -> None:
        """Load the 4-bit base on the strategy's device and add the adapter (once)."""
        if self.model is not None:
            return
        if self._trainer is not None:
            run = RunFacts.of(self.trainer, self.quant)
        else:  # a module used outside Lightning (a notebook, a test) loads on the CPU
            run = RunFacts(missing_compiler=missing_compiler("cpu"))
        self.plan = plan_step(self.lean, run)  # refuses, before minutes of loading, what the run cannot take
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        base = load_base_model(
            self.name_or_path,
            self.quant,
            device,
            text_only=self.lean.text_only,
            ple_on_host=self.lean.ple_on_host,
            attention="eager" if self.plan.attention == "eager" else "sdpa",
        )
        if self.plan.attention in PER_SAMPLE:  # the language model only: the towers keep theirs
            text_model(base).set_attn_implementation(register_attention(self.plan.attention))
        base.config.use_cache = False
        gc_kwargs = {"use_reentrant": False}
        if self.lean.upcast_frozen:
            from peft import prepare_model_for_kbit_training

            base = prepare_model_for_kbit_training(base, self.hparams.gradient_checkpointing, gc_kwargs)
        elif self.hparams.gradient_checkpointing:
            compat.enable_activation_checkpointing(base, gc_kwargs)
            base.enable_input_require_grads()
            apply_to_eager_layers(text_model(base).layers, self.lean.share, self.lean.offload)
        host = text_model(base).embed_tokens_per_layer
        if (
            isinstance(host, HostEmbedding)
            and self.lean.ple_shared
            and self._trainer is not None
            and self.trainer.world_size > 1
        ):
            share_across_local_ranks(host, self.trainer.strategy, self.trainer.local_rank)
        torch.manual_seed(self.hparams.seed)
        with torch.device("cpu"):  # one init per seed on any device and strategy (CUDA draws another stream)
            self.model = apply_lora(base, self.lora)  # PEFT moves each adapter to its base layer's device
        if self.parent_adapter is not None:
            load_adapter_weights(self.model, self.parent_adapter)
        if self.plan.compile_layers:
            share = self.lean.share if self.hparams.gradient_checkpointing else 0.0
            n_layers = len(text_model(self.model).layers)
            checkpointed = checkpointed_layers(n_layers, share)
            compile_decoder_layers(self.model, checkpointed, self.lean.offload, self.lean.kept_activations)
            rank_zero_info(
                "medqlora: the decoder layers compile during the first steps (a minute or two on a fresh machine; "
                "later steps reuse them)"
            )
        scaler = getattr(self.trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        self.train_step = TrainStep(
            lambda batch: self.forward(batch, self.plan.train),
            [p for p in self.model.parameters() if p.requires_grad],
            backward_in_step=self.plan.backward_in_step,
            graphed=self.plan.cuda_graph,
            loss_scale=None if scaler is None else scaler.scale,
        )
        self.model.train()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # hand back what loading reserved, so reserved memory reflects training
        rank_zero_info(f"medqlora: {trainable_summary(self.model)}")

    @property
    def host_embedding(self) -> HostEmbedding | None:
        """The host-memory PLE table, when `lean.ple_on_host` is on."""
        module = text_model(self.model).embed_tokens_per_layer
        return module if isinstance(module, HostEmbedding) else None

    def on_before_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """On the host, before the batch moves: drop a right-padding mask (`drop_right_padding_mask`), find packed
        samples' bounds where the collator did not (`data.collate.sample_bounds`), and gather the batch's PLE rows, so
        they travel to the GPU with the batch."""
        batch = drop_right_padding_mask(batch)
        if self.plan is None or not self.plan.train.sample_bounds:  # masked attention: the graph keys on rows alone
            batch = {k: v for k, v in batch.items() if k != "cu_seq_lens"}
        elif "position_ids" in batch and "cu_seq_lens" not in batch:
            batch = {**batch, "cu_seq_lens": sample_bounds(batch["position_ids"])}
        rows = None if self.model is None else ple_rows_for(self.model, batch["input_ids"], batch["input_ids"].device)
        return batch if rows is None else {**batch, "ple_rows": rows}

    def forward(self, batch: dict, form: Form | None = None) -> LossOutput:
        """Loss, predictions and targets over the batch's supervised tokens, in `form` (default: the plan's
        evaluation form; `training_step` passes the training form).

        The text model gets its embeddings and per-layer inputs from `parts.embedded_inputs` (the batch's PLE rows,
        when the table is in host memory). With `form.own_masks` the attention masks come from the position ids,
        on the device (model/masks.py); with `form.sample_bounds` attention gets the packed samples' bounds
        instead (model/attention.py); with `form.fixed_shape` the loss covers every position, unsupervised ones
        weighing zero, so nothing the host decides depends on GPU values (a CUDA graph can capture it; preds and
        targets then cover every position, targets -100 where unsupervised)."""
        form = form or self.plan.evaluate
        inputs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
        inputs.update(embedded_inputs(self.model, batch["input_ids"], batch.get("ple_rows")))
        if form.sample_bounds and "position_ids" in inputs:
            bounds = batch.get("cu_seq_lens")
            if bounds is None:  # a batch that skipped Lightning's transfer hook (a notebook, a test)
                bounds = sample_bounds(inputs["position_ids"].cpu()).to(inputs["position_ids"].device)
            inputs["cu_seq_lens_q"] = bounds
            inputs["attention_mask"] = dict.fromkeys(("full_attention", "sliding_attention"))
        elif form.own_masks and "attention_mask" not in inputs:
            position_ids = inputs.get("position_ids")
            if position_ids is None:
                ids = batch["input_ids"]
                position_ids = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
            inputs["attention_mask"] = packed_attention_masks(position_ids, self.sliding_window)
        if self.plan.loss == "full_logits":
            return full_logits_loss(self.model(**inputs, use_cache=False).logits, batch["labels"])
        hidden = text_model(self.model)(**inputs, use_cache=False).last_hidden_state
        return chunked_lm_loss(
            hidden,
            lm_head(self.model).weight,
            batch["labels"],
            self.softcap,
            self.lean.loss_chunk_size,
            self.plan.loss == "chunked_grad_in_forward",
            form.fixed_shape,
        )

    # -- steps --------------------------------------------------------------------------------------
    def _log_step(self, out: LossOutput, split: str) -> torch.Tensor:
        """Log loss, accuracy and supervised tokens, without reading anything back from the GPU."""
        accuracy: MeanMetric = getattr(self, f"{split}_acc")
        mean_loss: MeanMetric = getattr(self, f"{split}_loss")
        supervised = (out.targets != IGNORE_INDEX).float()
        n = supervised.sum()
        # forward (not update) so Lightning can log the step value too
        accuracy((out.preds == out.targets).float(), supervised)
        mean_loss(out.loss.detach(), n)
        on_step = split == "train"
        self.log(f"{split}/loss", mean_loss, on_step=on_step, on_epoch=not on_step, prog_bar=True)
        self.log(f"{split}/acc", accuracy, on_step=on_step, on_epoch=not on_step, prog_bar=True)
        self.log(f"{split}/tokens", n, on_step=on_step, on_epoch=not on_step, reduce_fx="sum")
        return out.loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """One micro-batch through the step unit (model/step.py: zeroing, forward, backward, the CUDA graph)."""
        out = self.train_step(batch, batch_idx, self.trainer.accumulate_grad_batches)
        return self._log_step(out, "train")

    def backward(self, loss: torch.Tensor, *args, **kwargs) -> None:
        """Lightning's backward hook: the step unit's (it runs backward in the step on one process)."""
        self.train_step.backward(loss)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Lightning's zero_grad hook: nothing, the step unit zeroes at each window's first micro-batch."""

    def on_train_end(self) -> None:
        """Free the micro-batch graph's memory pool (evaluation in the same process runs without it)."""
        if self.train_step is not None:
            self.train_step.release()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Token-weighted eval loss and next-token accuracy (the model card's "accuracy")."""
        self._log_step(self(batch), "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Same as validation, logged under test/."""
        self._log_step(self(batch), "test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per row of the batch: its id, supervised tokens, next-token accuracy on them, and the greedy next-token
        predictions (teacher-forced) beside the target, as text. `callbacks.predictions` writes them as JSON lines."""
        out = self(batch)
        targets = batch["labels"][:, 1:].cpu()  # what each position predicts (the loss's shift)
        supervised = targets != IGNORE_INDEX
        preds = torch.full_like(targets, IGNORE_INDEX)
        preds[supervised] = out.preds[out.targets != IGNORE_INDEX].cpu()  # every position when shape-fixed
        positions = batch.get("position_ids")
        rows = sample_ids(positions.cpu()) if positions is not None else torch.zeros_like(batch["labels"].cpu())
        # a sample per row of a padded batch; packed rows' samples in order, filler segments (no labels) left out
        segment = (rows + torch.arange(len(rows))[:, None] * (rows.max() + 1))[:, 1:]
        tokenizer = load_tokenizer(self.name_or_path)
        lines = []
        for row_id, seg in zip(batch.get("row_ids") or [], segment[supervised].unique_consecutive()):
            mine = supervised & (segment == seg)
            predicted, target = preds[mine], targets[mine]
            lines.append(
                {
                    "row_id": row_id,
                    "supervised_tokens": int(mine.sum()),
                    "accuracy": round(float((predicted == target).float().mean()), 4),
                    "prediction": tokenizer.decode(predicted.tolist()),
                    "target": tokenizer.decode(target.tolist()),
                }
            )
        return lines

    # -- optimizer and checkpoints --------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the adapter's weights (model/optimizer.py); the lr schedule is the CosineWarmup callback's."""
        params = [p for p in self.parameters() if p.requires_grad]
        hp = self.hparams
        return build_optimizer(params, self.optimizer_name, hp.lr, hp.betas, hp.weight_decay)

    def trainable_names(self) -> set[str]:
        """State-dict names of the adapter's weights (FSDP's wrapper prefixes removed)."""
        return {clean_name(name) for name, p in self.named_parameters() if p.requires_grad}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter's weights under this module's parameter names (this rank's shards under FSDP)."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def adapter_weights(self) -> dict[str, torch.Tensor]:
        """The adapter's full weights under PEFT's names, for `save_pretrained(state_dict=...)`.

        Under FSDP this gathers the shards (a collective: call it on every rank; rank 0 gets the weights)."""
        if self._trainer is None or not is_fsdp(self.trainer.strategy):  # local weights are whole
            full = self.trainable_state_dict()
        else:  # QLoRAFSDPStrategy gathers the adapter only; a plain FSDPStrategy, everything
            names = self.trainable_names()
            full = {k: v for k, v in self.trainer.strategy.lightning_module_state_dict().items() if k in names}
        return {k.removeprefix("model."): v for k, v in full.items()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the adapter only (the frozen 4-bit base is reloaded from `name_or_path` on resume), the random
        generators (so dropout after a resume draws what it would have drawn) and the run directory's version."""
        names = self.trainable_names()  # the strategy already gathered the state dict (full under FSDP)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in names}
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        # the run directory a resume continues (medqlora.cli names it from this)
        checkpoint["run_version"] = str(self.logger.version) if self.logger is not None else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the random generators saved with the checkpoint, and the loop's logging step."""
        compat.restore_logging_step(checkpoint)
        states = checkpoint.get("rng_states")
        if states:
            torch.set_rng_state(states["torch"])
            random.setstate(states["python"])
            if states["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(states["cuda"])
