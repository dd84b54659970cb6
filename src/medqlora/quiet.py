"""Library messages a medqlora user cannot act on, kept out of every run's output (each with why).

Filtered by message, never by category or module wholesale, so any other warning still shows. Installed once at
import (`medqlora/__init__.py`); `logging.DEBUG` on the named logger shows a demoted record again.
"""

from __future__ import annotations

import logging
import warnings

# (logger, part of the message): records demoted to debug level
DEMOTED_RECORDS = [
    # bitsandbytes on AVX512-BF16 CPUs without the optional `kernels` package: that kernel serves only the packed
    # CPU layout, which medqlora switches off (`medqlora.compat.keep_4bit_layout`)
    ("bitsandbytes.backends.cpu.ops", "gemm_4bit_forward from kernels-community"),
    # the same attempt with `kernels` installed (transformers >= 5.25 requires it) and the hub offline
    ("kernels._internals.hf_hub", "trust check for 'kernels-community/quantization-bitsandbytes'"),
    # Lightning >= 2.6 advertises its hosted logger at every fit
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging"),
]

# message regexes: warnings about library internals that medqlora's own calls do not cause
IGNORED_WARNINGS = [
    # Lightning's notice that the module's `on_before_batch_transfer` (the host PLE gather, which needs the model)
    # wins over the data module's: that is the design
    r"You have overridden `on_before_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`",
    # PEFT reads transformers' `is_gradient_checkpointing`, deprecated in transformers 5.2x (PEFT's call, not ours)
    r"`is_gradient_checkpointing` is deprecated",
    # Lightning's own pytree helper on torch >= 2.12
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # validate/test/predict --ckpt_path restore the fit's ModelCheckpoint state but log into their own directory and
    # write no checkpoint: nothing of that state is needed there
    r"The dirpath has changed from .* won't be reloaded",
    # predict's PackingBatchSampler yields every row once, never dropping a last batch (tests/test_cli.py counts the
    # predictions.jsonl lines against the split)
    r"You are using a custom batch sampler `PackingBatchSampler` for prediction",
    # a resumed fit continues its own run directory by design (runs.py), so its checkpoints/ holds the earlier ones
    r"Checkpoint directory .* exists and is not empty",
]


class _Demote(logging.Filter):
    def __init__(self, part: str):
        super().__init__()
        self.part = part

    def filter(self, record: logging.LogRecord) -> bool:
        if self.part in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def install() -> None:
    """Add the filters (idempotent: a second call adds nothing)."""
    for name, part in DEMOTED_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Demote) and f.part == part for f in logger.filters):
            logger.addFilter(_Demote(part))
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
