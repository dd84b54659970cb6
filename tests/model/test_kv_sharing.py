"""Gemma 4's KV-shared layers: the training forward (no cache, checkpointing) equals the cached forward.

Some transformers releases routed KV sharing through the cache object, so `use_cache=False` (as in
training) silently gave wrong logits. The dependency floor in pyproject.toml must pass this test.
"""

from __future__ import annotations

import torch
from helpers import make_module, padded_batch


def test_training_forward_equals_cached_eval_forward(tokenizer):
    module = make_module()
    model = module.model
    config = model.base_model.model.config.get_text_config()
    assert config.num_kv_shared_layers > 0, "the tiny model must have KV-shared layers"
    batch = padded_batch(tokenizer)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    model.train()  # gradient checkpointing is only active in training mode
    assert model.base_model.model.model.language_model.gradient_checkpointing
    train_logits = model(**inputs, use_cache=False).logits

    model.eval()
    with torch.no_grad():
        cached = model(**inputs, use_cache=True)
    assert cached.past_key_values is not None or getattr(cached, "cache", None) is not None
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(train_logits[mask].float(), cached.logits[mask].float(), rtol=0, atol=1e-5)
