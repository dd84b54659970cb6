"""Atomic outputs: a save that dies half-way leaves the previous good copy (checkpoint, adapter, data card)."""

from __future__ import annotations

import pytest
import torch
from helpers import make_module
from lightning.pytorch.plugins.io import TorchCheckpointIO

import medqlora.io as mio
from medqlora.io import AtomicCheckpointIO, atomic_write_text
from medqlora.model.adapter import save_adapter


class DiskFull(OSError):
    pass


def _half_write(self, checkpoint, path, storage_options=None):
    with open(path, "wb") as out:  # the bytes that made it to disk before the kill / full disk
        out.write(b"PK half a checkpoint")
    raise DiskFull("No space left on device")


@pytest.mark.faults
@pytest.mark.parametrize(
    "io_class, survives", [(AtomicCheckpointIO, True), (TorchCheckpointIO, False)], ids=["atomic", "lightning-default"]
)
def test_checkpoint_write_that_dies_keeps_the_previous_checkpoint(tmp_path, monkeypatch, io_class, survives):
    io, path = io_class(), tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(3)}, path)
    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", _half_write)
    with pytest.raises(DiskFull):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    if survives:
        assert io.load_checkpoint(path)["global_step"] == 1
        assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind
    else:  # the control: without the rename, the same failure destroys the previous checkpoint
        assert path.read_bytes() == b"PK half a checkpoint"


@pytest.mark.faults
def test_adapter_save_that_dies_keeps_the_previous_adapter(tmp_path, monkeypatch, tiny_dir):
    module = make_module()
    adapter = save_adapter(module.model, "tiny", tmp_path / "adapter")
    before = (adapter / "adapter_model.safetensors").read_bytes()

    def dies(self, directory, **kwargs):
        (directory / "adapter_model.safetensors").write_bytes(b"partial")
        raise DiskFull("No space left on device")

    monkeypatch.setattr(type(module.model), "save_pretrained", dies)
    with pytest.raises(DiskFull):
        save_adapter(module.model, "tiny", tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


@pytest.mark.faults
def test_text_write_that_dies_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "data_card.json"
    atomic_write_text(path, '{"v": 1}')
    monkeypatch.setattr(mio.os, "replace", lambda *a: (_ for _ in ()).throw(DiskFull("No space left on device")))
    with pytest.raises(DiskFull):
        atomic_write_text(path, '{"v": 2}')
    assert path.read_text() == '{"v": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["data_card.json"]


def test_the_optional_kernels_hint_of_bitsandbytes_is_kept_at_debug_level(caplog):
    import logging

    import medqlora  # noqa: F401 - installs the filter

    hint = "Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'."
    caplog.set_level(logging.INFO)
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning(hint)
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("another warning")
    assert [r.getMessage() for r in caplog.records] == ["another warning"]
    caplog.clear()
    caplog.set_level(logging.DEBUG, logger="bitsandbytes.backends.cpu.ops")
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning(hint)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("DEBUG", hint)]


@pytest.mark.parametrize(
    "seconds, text", [(14.2, "14 s"), (200, "3 min 20 s"), (3599, "59 min 59 s"), (7500, "2 h 05 min")]
)
def test_wall_time_is_readable_at_any_length(seconds, text):
    from medqlora.model.card import duration

    assert duration(seconds) == text
