"""Measure what the fine-tune gained: benchmarks, key points, generation, merge and the model card.

The defaults the `eval` and `generate` commands show in their help live here, so the help needs no torch.
"""

BATCH_TOKENS = 8192
"""Tokens per scoring forward pass."""
MAX_NEW_TOKENS = 512
"""Tokens a key-point answer or a `generate` answer may run to."""
