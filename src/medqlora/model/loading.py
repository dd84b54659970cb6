"""Load Gemma 4 in NF4 with `from_pretrained` + `BitsAndBytesConfig`; decide what lives where.

The same code serves `google/gemma-4-E2B-it` from the hub, a local directory, and the embedded tiny model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from medqlora.compat import keep_4bit_layout
from medqlora.hub import load_config, resolve_name_or_path
from medqlora.model.host_embedding import HostEmbedding
from medqlora.model.parts import text_model

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PLE_MODULE = "model.language_model.embed_tokens_per_layer"


@dataclass
class QuantSpec:
    """bitsandbytes 4-bit settings of the frozen base (the model card: NF4, double quant, bf16 compute).

    Args:
        load_in_4bit: quantise the base's linears to 4 bit (False: keep them in `compute_dtype`).
        quant_type: `nf4` or `fp4`.
        double_quant: also quantise the quantisation constants (~0.4 bit/param saved).
        compute_dtype: dtype of the matmuls and of every non-quantised weight.
        quant_storage: dtype the packed 4-bit weights are stored in; FSDP needs it equal to compute_dtype
            (one dtype per flat parameter). `uint8` otherwise.
    """

    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"

    def __post_init__(self) -> None:
        if self.quant_type not in ("nf4", "fp4"):
            raise ValueError(
                f"model.quantization.quant_type={self.quant_type!r}: bitsandbytes 4-bit supports 'nf4' or 'fp4'"
            )
        if self.compute_dtype not in DTYPES:
            raise ValueError(f"model.quantization.compute_dtype={self.compute_dtype!r}: use one of {list(DTYPES)}")
        if self.quant_storage not in ("uint8", *DTYPES):
            raise ValueError(
                f"model.quantization.quant_storage={self.quant_storage!r}: use uint8 or one of {list(DTYPES)}"
            )
        if self.double_quant and not self.load_in_4bit:
            raise ValueError("model.quantization.double_quant=true needs load_in_4bit=true; set double_quant: false")

    @property
    def dtype(self) -> torch.dtype:
        """The torch dtype of computation and of non-quantised weights."""
        return DTYPES[self.compute_dtype]

    def bnb_config(self, offload_to_cpu: bool = False):
        """The transformers `BitsAndBytesConfig`, or None when not quantising."""
        if not self.load_in_4bit:
            return None
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=self.dtype,
            llm_int8_enable_fp32_cpu_offload=offload_to_cpu,
            bnb_4bit_quant_storage=torch.uint8 if self.quant_storage == "uint8" else DTYPES[self.quant_storage],
        )


def load_base_model(
    name_or_path: str,
    quant: QuantSpec,
    device: torch.device,
    *,
    text_only: bool,
    ple_on_host: bool,
    attention: str = "sdpa",
):
    """`AutoModelForCausalLM.from_pretrained` in 4 bit, placed for training.

    text_only: build without the vision and audio towers (never used by text training); module names of
        the language model are unchanged, so a saved adapter still loads onto the full model.
    ple_on_host: load the per-layer embedding table (2.35 B params on E2B) into host memory, never the GPU,
        and serve it from there (`HostEmbedding`).
    attention: transformers' `attn_implementation`.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    config = load_config(name_or_path)
    if text_only:
        config.vision_config = None
        config.audio_config = None
    offload = ple_on_host and device.type == "cuda"
    target = f"cuda:{device.index or 0}" if device.type == "cuda" else device.type
    device_map = split_device_map(config, target, {PLE_MODULE: "cpu"}) if offload else {"": target}
    # text_only leaves the towers' weights unread; transformers would list each as "unexpected"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolve_name_or_path(name_or_path),
            config=config,
            quantization_config=quant.bnb_config(offload),
            dtype=quant.dtype,
            device_map=device_map,
            trust_remote_code=False,
            use_safetensors=True,
            # sdpa is transformers' default where supported; naming it would fail on the audio tower
            attn_implementation=None if attention == "sdpa" else attention,
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    if offload:
        from accelerate.hooks import remove_hook_from_module

        remove_hook_from_module(model, recurse=True)  # weights stay where the device map put them
    if ple_on_host:
        text = text_model(model)
        text.embed_tokens_per_layer = HostEmbedding(text.embed_tokens_per_layer, quant.dtype)
    keep_4bit_layout(model)
    return model


def split_device_map(config, target: str, elsewhere: dict[str, str]) -> dict[str, str]:
    """A device map placing the modules of `elsewhere` there and everything else on `target`, with no catch-all
    "" entry: accelerate first moves every submodule of a "" entry to its device, so the 4.4 GiB PLE table would
    pass through the GPU while loading (6.0 GiB allocated on E2B, over a 6 GiB card) before going to the host.

    Each ancestor of a module in `elsewhere` is split into its children (and its own tensors, named one by one)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # the module tree only; nothing is allocated
        model = AutoModelForCausalLM.from_config(config)
    device_map: dict[str, str] = {}

    def place(module: torch.nn.Module, name: str) -> None:
        holds_one = not name or any(key.startswith(f"{name}.") for key in elsewhere)
        if name in elsewhere:
            device_map[name] = elsewhere[name]
        elif not holds_one:
            device_map[name] = target
        else:
            prefix = f"{name}." if name else ""
            for tensor_name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                device_map[prefix + tensor_name] = target
            for child_name, child in module.named_children():
                place(child, prefix + child_name)

    place(model, "")
    missing = set(elsewhere) - set(device_map)
    if missing:
        raise ValueError(f"no module named {sorted(missing)} in {type(model).__name__}")
    return device_map
