"""Where Gemma 4's parts live, under a PEFT wrapper or not: the text model, the LM head, the soft-cap.

`AutoModelForCausalLM` builds `Gemma4ForConditionalGeneration` for the hub checkpoint (text model at
`model.language_model`); a text-only checkpoint builds `Gemma4ForCausalLM` (text model at `model`).
"""

from __future__ import annotations

import torch
from torch import nn

from medqlora.model.host_embedding import HostEmbedding


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def text_model(model: nn.Module) -> nn.Module:
    """Gemma 4's text decoder (`Gemma4TextModel`): embeddings, layers, final norm."""
    inner = unwrap(model).model
    return getattr(inner, "language_model", inner)


def lm_head(model: nn.Module) -> nn.Linear:
    """The output projection (tied to the token embedding on Gemma 4)."""
    return unwrap(model).lm_head


def final_softcap(model: nn.Module) -> float | None:
    """Gemma's final-logit soft-cap (logits = cap * tanh(logits / cap)), or None."""
    return text_model(model).config.final_logit_softcapping


def logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 next-token logits from final hidden states, soft-capped as the model's own forward does."""
    out = lm_head(model)(hidden).float()
    cap = final_softcap(model)
    return torch.tanh(out / cap) * cap if cap else out


PLACEHOLDERS = ("image_token_id", "audio_token_id", "video_token_id")


def text_ids(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """`input_ids` with the image/audio/video placeholder ids replaced by padding, as the multimodal `Gemma4Model`
    does before its text model (training runs through it), so the text model alone computes the same."""
    config = unwrap(model).config
    pad = text_model(model).config.pad_token_id
    placeholders = [i for i in (getattr(config, name, None) for name in PLACEHOLDERS) if i is not None]
    if not placeholders or pad is None:
        return input_ids
    hit = input_ids == placeholders[0]
    for token in placeholders[1:]:
        hit |= input_ids == token
    return input_ids.masked_fill(hit, pad)


def embedded_inputs(model: nn.Module, input_ids: torch.Tensor, ple_rows: torch.Tensor | None = None) -> dict:
    """The text model's `inputs_embeds` and `per_layer_inputs` for `input_ids` (its public route around input ids),
    so a caller decides where the per-layer rows come from.

    ple_rows: with the PLE table in host memory, its rows for `input_ids` already on their device (`HostEmbedding.
        gather`, moved); None gathers them here (the host reads `input_ids` then)."""
    text = text_model(model)
    input_ids = text_ids(model, input_ids)
    table = text.embed_tokens_per_layer
    if isinstance(table, HostEmbedding):
        if ple_rows is None:
            ple_rows = table.gather(input_ids).to(input_ids.device, non_blocking=True)
        per_layer = table.scaled(ple_rows)
    else:
        per_layer = table(input_ids)
    shape = (*input_ids.shape, text.config.num_hidden_layers, text.config.hidden_size_per_layer_input)
    return {"inputs_embeds": text.embed_tokens(input_ids), "per_layer_inputs": per_layer.reshape(shape)}


def ple_rows_for(model: nn.Module, host_ids: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The host PLE table's rows for `host_ids` (ids on the host, so nothing waits for the GPU), on their way to
    `device`; None when the table is not in host memory."""
    table = text_model(model).embed_tokens_per_layer
    if not isinstance(table, HostEmbedding):
        return None
    return table.gather(text_ids(model, host_ids)).to(device, non_blocking=True)
