"""medqlora: QLoRA fine-tuning of Gemma 4 E2B for medical QA, on PyTorch Lightning."""

from medqlora import quiet

quiet.install()

__version__ = "0.1.0"
