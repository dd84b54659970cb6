"""`medqlora export`: the GGUF that llama.cpp's runtime loads computes what transformers computes, on the tiny model.

Needs the `gguf` extra (llama-cpp-python, built from source); CI installs it, elsewhere the module is skipped.
The two runtimes' logits differ by more than rounding, and more the longer the context (f32 weights on both sides:
4e-4 at the first token, up to 6e-3 by the 40th, against a spread of 0.16 on the random tiny model; ggml's GELU is
a table lookup), while the random model's top-two gaps are small (~0.04). So greedy decoding is compared step by
step on transformers' own greedy continuation (teacher-forced): wherever transformers' top two are further apart
than twice the largest difference measured between the runtimes, llama.cpp must pick the same token; closer than
that, either pick is within the runtimes' arithmetic.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("CI") != "true":
    pytest.importorskip("llama_cpp", reason='the gguf extra: pip install -e ".[gguf]"')
from llama_cpp import Llama  # noqa: E402  (on CI a missing runtime fails here, never skips)

from medqlora.cli import main  # noqa: E402

PROMPTS = ["How is gout treated?", "Name the first-line treatment for cystitis.", "What confirms hypothyroidism?"]
NEW_TOKENS = 16
SCRIPT = Path(sys.executable).with_name("medqlora")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_dir) -> Path:
    """A random adapter over the tiny model (LoRA B ~ N(0, 0.05)), so that merging it changes every answer."""
    from medqlora.model.loading import QuantSpec, load_base_model
    from medqlora.model.lora import LoraSpec, apply_lora

    base = load_base_model("tiny", QuantSpec(), torch.device("cpu"), text_only=True, ple_on_host=False)
    model = apply_lora(base, LoraSpec())
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.05)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def exported(adapter, tmp_path_factory) -> dict[str, Path]:
    """Every form, written by the installed console script as a user runs it."""
    out = tmp_path_factory.mktemp("gguf")
    forms = {
        "f16": ["--type", "f16"],
        "bf16": [],
        "q8_0": ["--type", "q8_0"],
        "base": ["--base-only", "--type", "f16"],
        "lora": ["--lora", "--type", "f16"],
    }
    paths = {}
    for name, extra in forms.items():
        paths[name] = out / name / f"{name}.gguf"
        paths[name].parent.mkdir()
        done = subprocess.run([str(SCRIPT), "export", str(adapter), str(paths[name]), *extra], capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip().startswith(str(paths[name])) and "MiB" in done.stdout
        if "fetching llama.cpp's converters once" in done.stderr:  # a fresh cache: the fetch says what and how large
            assert re.search(r"llama_cpp_python-[\d.]+\.tar\.gz \([\d.]+ [kMG]B\)", done.stderr), done.stderr[-2000:]
    return paths


@pytest.fixture(scope="module")
def reference(adapter, tmp_path_factory):
    """transformers with the adapter merged (fp32 compute over the merged bf16 weights), and the tokenizer."""
    from transformers import AutoModelForCausalLM

    from medqlora.hub import load_tokenizer
    from medqlora.model.adapter import merge

    merged = merge(adapter, tmp_path_factory.mktemp("merged") / "merged")
    return AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval(), load_tokenizer("tiny")


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _greedy_agreement(llm: Llama, model, ids: list[int]) -> tuple[float, list[int], int]:
    """transformers' greedy continuation of `ids`, scored by both runtimes: (largest logit difference, the steps
    where they pick differently although transformers' top-two gap exceeds twice that difference, how many steps
    have such a gap)."""
    with torch.no_grad():
        sequence = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0,
                                  eos_token_id=None)[0].tolist()  # fmt: skip
        theirs = model(torch.tensor([sequence])).logits[0, len(ids) - 1 : -1]
    llm.reset()
    llm.eval(sequence)
    ours = torch.tensor(np.array(llm.scores[len(ids) - 1 : len(sequence) - 1]))
    difference = float((ours - theirs).abs().max())
    top2 = theirs.topk(2).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * difference
    assert torch.equal(theirs.argmax(-1), torch.tensor(sequence[len(ids) :])), "transformers' own greedy path"
    wrong = [i for i in range(NEW_TOKENS) if clear[i] and int(ours[i].argmax()) != sequence[len(ids) + i]]
    return difference, wrong, int(clear.sum())


def _load(path: Path, **kwargs) -> Llama:
    return Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, logits_all=True, **kwargs)


# measured (largest logit difference over the 3 prompts; steps of 48 decidable): f16 0.042, 27; bf16 0.18, 1
# (ggml multiplies bf16 weights with activations rounded to bf16). The tiny model's logits spread 0.16 (std).
@pytest.mark.parametrize("gguf_type, tolerance, decidable", [("f16", 0.1, 16), ("bf16", 0.3, 0)])
def test_the_merged_gguf_decodes_as_transformers_does(exported, reference, gguf_type, tolerance, decidable):
    model, tokenizer = reference
    llm = _load(exported[gguf_type])
    decided = 0
    for prompt in PROMPTS:
        ids = _prompt_ids(tokenizer, prompt)
        assert llm.tokenize(tokenizer.decode(ids).encode(), add_bos=False, special=True) == ids, "same tokenizer"
        difference, wrong, clear = _greedy_agreement(llm, model, ids)
        assert difference < tolerance and not wrong, (prompt, difference, wrong)
        decided += clear
    assert decided >= decidable, f"only {decided} steps were clear enough to compare"


def test_q8_0_stays_close(exported, reference):
    """q8_0 rounds every weight to 8 bits: its largest logit difference, measured, is 0.31 (f16: 0.042)."""
    model, tokenizer = reference
    llm = _load(exported["q8_0"])
    differences = [_greedy_agreement(llm, model, _prompt_ids(tokenizer, p))[0] for p in PROMPTS]
    assert max(differences) < 0.5, differences


def test_base_gguf_with_the_lora_gguf_equals_the_merged_gguf(exported, reference):
    model, tokenizer = reference
    merged, layered = _load(exported["f16"]), _load(exported["base"], lora_path=str(exported["lora"]))
    for prompt in PROMPTS:
        ids = _prompt_ids(tokenizer, prompt)
        merged.reset(), layered.reset()
        merged.eval(ids), layered.eval(ids)
        gap = np.abs(np.array(merged.scores[len(ids) - 1]) - np.array(layered.scores[len(ids) - 1])).max()
        assert gap < 0.05, (prompt, gap)  # measured: up to 0.022 (f16 both)
        _, wrong, _ = _greedy_agreement(layered, model, ids)
        assert not wrong, (prompt, wrong)


def test_the_chat_template_stop_token_and_modelfile_travel_with_it(exported, reference):
    _, tokenizer = reference
    llm = _load(exported["f16"])
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    turn_end = tokenizer.convert_tokens_to_ids("<turn|>")
    assert llm.detokenize([turn_end], special=True) == b"<turn|>"
    import llama_cpp

    assert llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), turn_end), "a stop token"
    modelfile = (exported["f16"].parent / "f16.Modelfile").read_text()
    assert modelfile.startswith("FROM ./f16.gguf\n") and 'PARAMETER stop "<turn|>"' in modelfile
    assert (
        "<|turn>user\n{{ .Content }}<turn|>" in modelfile and "<|turn>model\n<|channel>thought\n<channel|>" in modelfile
    )
    assert not list(exported["lora"].parent.glob("*Modelfile")), "a LoRA alone is not a model Ollama can run"


@pytest.mark.faults
def test_a_bad_type_an_existing_file_or_a_non_gguf_path_is_one_line(adapter, exported, tmp_path, capsys):
    assert main(["export", str(adapter), str(tmp_path / "x.gguf"), "--type", "q4"]) == 1
    assert "--type 'q4' is not one of bf16, f16, q8_0, f32" in capsys.readouterr().err
    existing = exported["f16"]
    before = existing.stat().st_mtime_ns
    assert main(["export", str(adapter), str(existing)]) == 1
    assert "already exists" in capsys.readouterr().err and existing.stat().st_mtime_ns == before
    assert main(["export", str(adapter), str(tmp_path / "model.bin")]) == 1
    assert "is not a .gguf file path" in capsys.readouterr().err
    assert main(["export", str(adapter), str(adapter / "inside.gguf"), "--force"]) == 1
    assert "which it reads" in capsys.readouterr().err
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text('{"model_type": "gpt2"}')
    assert main(["export", str(adapter), str(tmp_path / "y.gguf"), "--base", str(other)]) == 1
    assert "is a 'gpt2' model; medqlora trains Gemma 4" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*")), "nothing half-written left behind"


def test_two_exports_in_one_folder_keep_a_modelfile_each(adapter, tmp_path):
    for name, extra in (("med", []), ("base", ["--base-only"])):
        assert main(["export", str(adapter), str(tmp_path / f"{name}.gguf"), "--type", "f16", *extra]) == 0
    assert (tmp_path / "med.Modelfile").read_text().startswith("FROM ./med.gguf\n")
    assert (tmp_path / "base.Modelfile").read_text().startswith("FROM ./base.gguf\n")
