"""Where did FSDP-QLoRA's NaN come from? The tiny model, 3 optimizer steps per variant, 2 GPUs (torchrun).

    torchrun --nproc_per_node 2 benchmarks/diagnose_fsdp.py OUT.json [VARIANT ...]   (default: the first five)

Each variant records per step: the loss, how many LoRA gradients are non-finite (and which), whether the weights
stay finite, and the first module (in call order) whose forward output was non-finite. The `-masked` variants
keep the right-padding attention mask that medqlora used to pass (`drop_right_padding_mask` undone): all of them
went NaN from the second step, DDP included, and every variant without the mask stays finite
(benchmarks/results/2026-11-25-h200x2-fsdp-nan-and-resume.json).
"""

import json
import os
import sys
import traceback
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from check_fsdp_resume import Rows

from medqlora.model import module as module_file
from medqlora.model.distributed import QLoRAFSDPStrategy
from medqlora.model.loading import QuantSpec
from medqlora.model.lora import LoraSpec
from medqlora.model.module import QLoRAModule

DROP_RIGHT_PADDING_MASK = module_file.drop_right_padding_mask
NO_CKPT = {"gradient_checkpointing": False}
MASKED = {"keep_mask": True}
VARIANTS = {  # name -> (strategy: "ddp" or QLoRAFSDPStrategy kwargs, module kwargs, trainer kwargs)
    "ddp-no-ckpt": ("ddp", NO_CKPT, {}),
    "fsdp-no-ckpt": ({}, NO_CKPT, {}),
    "fsdp": ({}, {}, {}),
    "ddp": ("ddp", {}, {}),
    "ddp-no-ckpt-masked-anomaly": ("ddp", NO_CKPT, {**MASKED, "detect_anomaly": True}),  # names the NaN's op
    "ddp-no-ckpt-masked": ("ddp", NO_CKPT, MASKED),
    "fsdp-no-ckpt-masked": ({}, NO_CKPT, MASKED),
    # FSDP suspects ruled out while the mask was still passed (each NaN as above)
    "fsdp-no-ckpt-masked-keep-quant-state": ({}, NO_CKPT, {**MASKED, "callbacks": "keep_quant_state"}),
    "fsdp-no-ckpt-masked-no-prefetch": ({"backward_prefetch": None}, NO_CKPT, MASKED),
    "fsdp-no-ckpt-masked-fp32-reduce": ({"mixed_precision": "fp32-reduce"}, NO_CKPT, MASKED),
    "fsdp-no-ckpt-masked-no-quant": ({}, {**NO_CKPT, "quantization": QuantSpec(load_in_4bit=False,
                                                                               double_quant=False)}, MASKED),
    "fsdp-no-ckpt-masked-flat-params": ({"use_orig_params": False}, NO_CKPT, MASKED),
}


class KeepQuantState(L.Callback):
    """A suspect ruled out: give FSDP's plain-tensor weight views their module's quant_state before each 4-bit forward,
    so bitsandbytes does not re-register a new Params4bit on the module in the middle of FSDP's forward."""

    def on_train_start(self, trainer, pl_module):
        import bitsandbytes as bnb

        def hook(module, args):
            if getattr(module.weight, "quant_state", None) is None:
                module.weight.quant_state = module.quant_state

        for module in pl_module.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.register_forward_pre_hook(hook)


def finite(t) -> bool:
    return t is None or bool(torch.isfinite(t).all())


class Probe(L.Callback):
    """Per-step loss and finiteness of LoRA grads/weights; module-level NaN hunt while the run is still finite."""

    def __init__(self):
        self.steps: list[dict] = []
        self.first_bad_module: str | None = None
        self.layout: dict = {}
        self._hooks = []

    def on_train_start(self, trainer, pl_module):
        inner = pl_module.model.base_model.model.model.language_model.layers[0].self_attn.q_proj.base_layer
        w = inner.weight
        self.layout = {"q_proj_weight_type": type(w).__name__, "dtype": str(w.dtype), "shape": list(w.shape),
                       "has_quant_state": getattr(w, "quant_state", None) is not None,
                       "module_quant_state": getattr(inner, "quant_state", None) is not None,
                       "fsdp_modules": sum(type(m).__name__ == "FullyShardedDataParallel"
                                           for m in trainer.strategy.model.modules())}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.first_bad_module is not None:
            return
        for name, module in pl_module.named_modules():
            self._hooks.append(module.register_forward_hook(self._check(name)))

    def _check(self, name):
        @torch.no_grad()  # isfinite saves tensors for backward otherwise, which upsets activation checkpointing
        def hook(module, args, out):
            t = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
            if self.first_bad_module is None and isinstance(t, torch.Tensor) and t.is_floating_point() \
                    and not finite(t):
                inputs_ok = all(finite(a) for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
                self.first_bad_module = f"{name} ({type(module).__name__}; inputs finite: {inputs_ok})"
        return hook

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.requires_grad and p.grad is not None]
        bad = [n.replace("_fsdp_wrapped_module.", "") for n, g in named if not finite(g)]
        self.steps.append({"grads": len(named), "nonfinite_grads": len(bad), "first_nonfinite": bad[:4],
                           "grad_norm_sq": float(sum(g.float().pow(2).sum() for _, g in named))})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for h in self._hooks:
            h.remove()
        self._hooks = []
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        weights_ok = all(finite(p) for p in pl_module.parameters() if p.requires_grad)
        self.steps[-1].update({"loss": float(loss), "lora_weights_finite_after": weights_ok})


def run(name: str) -> dict:
    strategy, module_kwargs, trainer_kwargs = VARIANTS[name]
    if isinstance(strategy, dict):
        if strategy.get("mixed_precision") == "fp32-reduce":
            from torch.distributed.fsdp import MixedPrecision

            strategy = {**strategy, "mixed_precision": MixedPrecision(torch.bfloat16, torch.float32, torch.bfloat16)}
        strategy = QLoRAFSDPStrategy(**strategy)
    trainer_kwargs = dict(trainer_kwargs)
    extra = [KeepQuantState()] if trainer_kwargs.pop("callbacks", None) == "keep_quant_state" else []
    module_file.drop_right_padding_mask = (lambda batch: batch) if trainer_kwargs.pop("keep_mask", False) else \
        DROP_RIGHT_PADDING_MASK
    kwargs = {"quantization": QuantSpec(quant_storage="bfloat16"), "lora": LoraSpec(dropout=0.0),
              "optimizer": "adamw", "lr": 1e-3, **module_kwargs}
    torch.manual_seed(0)
    module = QLoRAModule("tiny", **kwargs)
    probe = Probe()
    accelerator = os.environ.get("DIAG_ACCELERATOR", "gpu")  # cpu: a gloo smoke test of the script itself
    trainer = L.Trainer(accelerator=accelerator, devices=2, strategy=strategy, max_steps=3, logger=False,
                        enable_progress_bar=False, enable_checkpointing=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        callbacks=[probe, *extra], **{"precision": "bf16-mixed", **trainer_kwargs})
    trainer.fit(module, datamodule=Rows())
    return {"steps": probe.steps, "first_nonfinite_module": probe.first_bad_module, "layout": probe.layout}


def main() -> None:
    out, names = Path(sys.argv[1]), sys.argv[2:] or list(VARIANTS)[:5]
    results = {"versions": {m.__name__: m.__version__ for m in (torch, L)}}
    for name in names:
        try:
            results[name] = run(name)
        except Exception as error:  # keep going: the other variants still answer
            results[name] = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()[-4000:]}
        if dist.is_initialized() and dist.get_rank() == 0:
            print(name, json.dumps(results[name])[:1500], flush=True)
            out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
