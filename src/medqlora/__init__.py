"""medqlora: QLoRA fine-tuning of Gemma 4 E2B for medical QA, on PyTorch Lightning."""

__version__ = "0.1.0"
