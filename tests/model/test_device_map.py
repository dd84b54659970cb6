"""The PLE table goes to the host while loading without passing through the GPU (split_device_map).

No GPU here: accelerate's dispatch runs with the meta device standing in for the GPU, and a spy records which of
accelerate's hooks moves the PLE table: only offloading hooks (to the host) may touch it."""

from __future__ import annotations

import inspect

import accelerate
import accelerate.hooks
import pytest
from transformers import AutoModelForCausalLM

from medqlora.hub import load_config, resolve_name_or_path
from medqlora.model.loading import PLE_MODULE, split_device_map


def _text_config():
    config = load_config("tiny")
    config.vision_config = config.audio_config = None
    return config


def _moves_of_the_ple_table(device_map: dict[str, str], monkeypatch) -> list[tuple[str, bool]]:
    """(device, whether the moving hook offloads) for every move of the PLE table while dispatching."""
    model = AutoModelForCausalLM.from_pretrained(resolve_name_or_path("tiny"), config=_text_config())
    ple = model.get_submodule(PLE_MODULE)
    moves, move = [], accelerate.hooks.set_module_tensor_to_device

    def spy(module, name, device, *args, **kwargs):
        if module is ple:
            hook = inspect.currentframe().f_back.f_locals.get("self")
            moves.append((str(device), bool(getattr(hook, "offload", False))))
        return move(module, name, device, *args, **kwargs)

    monkeypatch.setattr(accelerate.hooks, "set_module_tensor_to_device", spy)
    accelerate.dispatch_model(model, device_map=device_map)
    return moves


def test_a_catch_all_entry_moves_the_ple_table_to_the_gpu_first(monkeypatch):
    """The control: with {"": gpu, PLE: cpu} accelerate places the whole tree on the GPU, the table included."""
    moves = _moves_of_the_ple_table({"": "meta", PLE_MODULE: "cpu"}, monkeypatch)
    assert ("meta", False) in moves


def test_split_device_map_sends_the_ple_table_only_to_the_host(monkeypatch):
    device_map = split_device_map(_text_config(), "meta", {PLE_MODULE: "cpu"})
    assert "" not in device_map and device_map[PLE_MODULE] == "cpu"
    moves = _moves_of_the_ple_table(device_map, monkeypatch)
    assert moves and all(offloading for _, offloading in moves), moves


def test_split_device_map_covers_every_weight_once():
    """Every parameter and buffer falls under exactly one entry: the PLE table's on the host, the rest on target."""
    config = _text_config()
    device_map = split_device_map(config, "cuda:0", {PLE_MODULE: "cpu"})
    model = AutoModelForCausalLM.from_config(config)
    for name, _ in [*model.named_parameters(), *model.named_buffers()]:
        owners = [key for key in device_map if name == key or name.startswith(f"{key}.")]
        assert len(owners) == 1, (name, owners)
        assert device_map[owners[0]] == ("cpu" if name.startswith(PLE_MODULE) else "cuda:0")


def test_split_device_map_names_an_unknown_module():
    with pytest.raises(ValueError, match="no module named .*model.nowhere"):
        split_device_map(_text_config(), "cuda:0", {"model.nowhere": "cpu"})


def test_from_pretrained_takes_the_split_map():
    """transformers' loader accepts the map's keys and loads every weight as without a map."""
    import torch

    config, path = _text_config(), resolve_name_or_path("tiny")
    device_map = split_device_map(config, "cpu", {PLE_MODULE: "cpu"})
    mapped = AutoModelForCausalLM.from_pretrained(path, config=config, device_map=device_map)
    plain = AutoModelForCausalLM.from_pretrained(path, config=config)
    expected = plain.state_dict()
    for name, tensor in mapped.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
