"""A model that cannot be loaded is named with the way out: offline, a local copy; a mistyped folder, the folder."""

from __future__ import annotations

import pytest

from medqlora.hub import load_config, load_tokenizer


@pytest.mark.faults
def test_an_unreachable_hub_id_names_the_model_and_the_local_path_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match=r"model.name_or_path='nobody/no-such-model-x': cannot load its config .*"
                                      r"pass a local copy: --model.name_or_path"):  # fmt: skip
        load_config("nobody/no-such-model-x")


@pytest.mark.faults
def test_a_mistyped_local_folder_is_reported_as_a_folder_not_a_hub_id(tmp_path):
    with pytest.raises(OSError, match=r"no tokenizer there .*the folder that holds the checkpoint's config.json"):
        load_tokenizer(str(tmp_path / "modles" / "gemma-4-E2B-it"))
