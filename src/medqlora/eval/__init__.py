"""Measure what the fine-tune gained: benchmarks, key points, generation, merge and the model card."""
