"""The embedded default: a tiny random Gemma 4 and a small tokenizer with Gemma 4's chat format.

Built on first use into a cache directory, then loaded through the very same `from_pretrained` + NF4
path as `google/gemma-4-E2B-it`. The model keeps every E2B feature at toy size: sliding and full
attention layers, KV-shared layers, per-layer embeddings (PLE), the double-wide MLP, final logit
soft-capping, and vision/audio towers whose linears are `Gemma4ClippableLinear`.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

TINY_MODEL_ID = "tiny"
"""The value of `model.name_or_path` that selects the embedded tiny model."""

TINY_VERSION = "v2"  # v2: a byte-fallback BPE as Gemma 4's tokenizer, E2B's layer order (v1: byte-level BPE)
VOCAB_SIZE = 1024

SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<|turn>",
    "<turn|>",
    "<|think|>",
    "<|channel>",
    "<channel|>",
    "<|image|>",
    "<|audio|>",
    "<|video|>",
    "<boi>",
    "<eoi>",
    "<boa>",
    "<eoa>",
]
TOKEN_ID = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}

# Gemma 4's published template, in behaviour (see docs/data.md): `<bos>`; a system turn only when there
# is a system message, tools or thinking, opened by `<|think|>` when thinking is on; `assistant` is
# written `model`; content is trimmed; thought channels are stripped from model turns; the generation
# prompt carries an empty thought channel when thinking is off.
GEMMA4_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set thinking = enable_thinking is defined and enable_thinking -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] | trim -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- if system is not none or tools or thinking -%}"
    "{{- '<|turn>system\\n' -}}{%- if thinking -%}{{- '<|think|>' -}}{%- endif -%}"
    "{%- if system is not none -%}{{- system -}}{%- endif -%}{{- '<turn|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{%- set content = message['content'] -%}"
    "{%- if role == 'model' and '<channel|>' in content -%}"
    "{%- set content = content.split('<channel|>')[-1] -%}{%- endif -%}"
    "{{- '<|turn>' + role + '\\n' + (content | trim) + '<turn|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}"
    "{%- if not thinking -%}{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}"
    "{%- endif -%}"
)


def tiny_model_config() -> dict:
    """Gemma 4 config with every E2B feature at toy size (6 layers, hidden 64, vocab 1024)."""
    text = {
        "model_type": "gemma4_text",
        "vocab_size": VOCAB_SIZE,
        "vocab_size_per_layer_input": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 6,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "global_head_dim": 64,
        "hidden_size_per_layer_input": 16,
        "num_kv_shared_layers": 2,
        "use_double_wide_mlp": True,
        "sliding_window": 16,
        # E2B's order at toy size: the last layer before the KV-shared ones is a full-attention layer and the one
        # before it a sliding one (llama.cpp's Gemma 4 reads the shared layers' KV from exactly those two)
        "layer_types": [
            "sliding_attention",
            "sliding_attention",
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "full_attention",
        ],
        "final_logit_softcapping": 30.0,
        "max_position_embeddings": 4096,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "pad_token_id": TOKEN_ID["<pad>"],
        "bos_token_id": TOKEN_ID["<bos>"],
        "eos_token_id": TOKEN_ID["<eos>"],
        "rope_parameters": {
            "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1000000.0, "rope_type": "proportional"},
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
        },
    }
    vision = {
        "model_type": "gemma4_vision",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "global_head_dim": 16,
        "patch_size": 4,
        "pooling_kernel_size": 2,
        "position_embedding_size": 64,
        "use_clipped_linears": True,
    }
    audio = {
        "model_type": "gemma4_audio",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "subsampling_conv_channels": [8, 4],
        "output_proj_dims": 64,
        "use_clipped_linears": True,
    }
    return {
        "model_type": "gemma4",
        "architectures": ["Gemma4ForConditionalGeneration"],
        "tie_word_embeddings": True,
        "text_config": text,
        "vision_config": vision,
        "audio_config": audio,
        "image_token_id": TOKEN_ID["<|image|>"],
        "audio_token_id": TOKEN_ID["<|audio|>"],
        "video_token_id": TOKEN_ID["<|video|>"],
        "boi_token_id": TOKEN_ID["<boi>"],
        "eoi_token_id": TOKEN_ID["<eoi>"],
        "boa_token_id": TOKEN_ID["<boa>"],
        "eoa_token_index": TOKEN_ID["<eoa>"],
        "eos_token_id": [TOKEN_ID["<eos>"], TOKEN_ID["<turn|>"]],
    }


def _tokenizer_corpus() -> list[str]:
    """Text the tiny BPE is trained on: the shipped sample rows, so they tokenize compactly."""
    lines: list[str] = []
    samples = resources.files("medqlora.data") / "samples"
    for name in sorted(p.name for p in samples.iterdir() if p.name.endswith(".jsonl")):
        for raw in (samples / name).read_text(encoding="utf-8").splitlines():
            lines.extend(str(v) for v in json.loads(raw).values())
    return lines


BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]  # byte fallback: any text encodes, nothing maps to <unk>


def _tokenizer_core(model, words: bool = False):
    """Gemma 4's tokenizer.json, in shape: SentencePiece-style BPE (spaces become `▁`, no pre-splitting into words,
    only newline runs stand apart), byte fallback, and the decoder `Sequence` that undoes both. `words`: split
    before each `▁` as well (for learning the merges only: none then spans a word start, so `▁` opens a token as
    in Gemma's vocabulary, and `A:` is the same tokens alone as before ` Colchicine`)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers

    core = Tokenizer(model)
    core.normalizer = normalizers.Replace(" ", "▁")
    lines = pre_tokenizers.Split(Regex("\n+"), behavior="isolated")
    word_starts = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    core.pre_tokenizer = pre_tokenizers.Sequence([lines, word_starts]) if words else lines
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return core


def build_tiny_tokenizer():
    """A BPE with byte fallback (vocab 1024: the special tokens, the 256 byte tokens, merges learnt on the sample
    rows), shaped like Gemma 4's own tokenizer so that llama.cpp's converter and runtime take it as they take the
    real one, with Gemma 4's special tokens and the Gemma 4-style chat template."""
    from tokenizers import models, trainers
    from transformers import PreTrainedTokenizerFast

    learner = _tokenizer_core(models.BPE(unk_token="<unk>"), words=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS) - len(BYTE_TOKENS), show_progress=False, limit_alphabet=120
    )
    learner.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    learnt = json.loads(learner.to_str())["model"]
    pieces = sorted(learnt["vocab"], key=learnt["vocab"].get)
    vocab = {piece: i for i, piece in enumerate(SPECIAL_TOKENS + BYTE_TOKENS + pieces)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learnt["merges"]]
    core = _tokenizer_core(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    core.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    tokenizer.chat_template = GEMMA4_CHAT_TEMPLATE
    tokenizer.add_bos_token = False
    return tokenizer


def default_cache_dir() -> Path:
    """Where built artefacts live: `$MEDQLORA_CACHE`, else `~/.cache/medqlora`."""
    return Path(os.environ.get("MEDQLORA_CACHE", Path.home() / ".cache" / "medqlora"))


def ensure_tiny_model(cache_dir: str | Path | None = None) -> Path:
    """Build the tiny Gemma 4 + tokenizer once (atomically) and return its directory."""
    target = Path(cache_dir or default_cache_dir()) / f"tiny-gemma4-{TINY_VERSION}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, GenerationConfig

    from medqlora.io import atomic_directory

    with atomic_directory(target, replace=False) as staging:  # several processes may build it at once
        torch.manual_seed(0)
        config = Gemma4Config(**{k: v for k, v in tiny_model_config().items() if k != "model_type"})
        model = Gemma4ForConditionalGeneration(config).to(torch.bfloat16)
        model.generation_config = GenerationConfig(
            bos_token_id=TOKEN_ID["<bos>"],
            pad_token_id=TOKEN_ID["<pad>"],
            eos_token_id=[TOKEN_ID["<eos>"], TOKEN_ID["<turn|>"]],
        )
        model.save_pretrained(staging, safe_serialization=True)
        build_tiny_tokenizer().save_pretrained(staging)
    return target
