"""medqlora: QLoRA fine-tuning of Gemma 4 E2B for medical QA, on PyTorch Lightning."""

import logging


class _DemoteKernelsHint(logging.Filter):
    """bitsandbytes logs a warning at import on AVX512-BF16 CPUs when the optional `kernels` package is absent.
    That kernel serves only the packed CPU layout, which medqlora switches off (`model.loading.keep_4bit_layout`),
    so the hint is noise: it is kept at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "gemm_4bit_forward from kernels-community" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DemoteKernelsHint())

__version__ = "0.1.0"
