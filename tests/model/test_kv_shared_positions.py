"""The KV-shared layers computed only at the read positions give those positions' outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from helpers import adapted_tiny

from medqlora.model.kv_shared import only_at
from medqlora.model.masks import packed_attention_masks
from medqlora.model.parts import text_model


def test_kept_positions_keep_their_outputs_and_the_rest_are_not_computed(tokenizer):
    text = text_model(adapted_tiny())
    assert text.config.num_kv_shared_layers > 0
    ids = torch.tensor([tokenizer("A renal case with fever and a cough. Which option?")["input_ids"]] * 2)
    keep = torch.tensor([[2, 5, ids.shape[1] - 1], [0, 3, 3]])  # any positions, a repeat to pad a row
    calls = []
    hook = text.layers[-1].mlp.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[1]))
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    masks = packed_attention_masks(positions, text.config.sliding_window)
    with torch.no_grad():
        full = text(input_ids=ids, attention_mask=masks, position_ids=positions).last_hidden_state
        with only_at(text, keep) as sliced:
            part = text(input_ids=ids, attention_mask=masks, position_ids=positions).last_hidden_state
        with pytest.raises(ValueError, match="tensor attention masks"), only_at(text, keep):
            text(input_ids=ids)
    hook.remove()
    assert sliced and part.shape[1] == 3 and calls == [ids.shape[1], 3]  # the last layer ran on 3 positions
    torch.testing.assert_close(part, torch.gather(full, 1, keep[..., None].expand(-1, -1, full.shape[-1])))
    with torch.no_grad():  # the hooks are gone after the block
        assert text(input_ids=ids).last_hidden_state.shape == full.shape
