"""An adapter out of medqlora as GGUF, for llama.cpp and Ollama: through llama.cpp's own converters, not our own.

`convert_hf_to_gguf.py` (its `conversion/gemma.py` knows Gemma 4: KV-shared layers, per-layer embeddings, per-layer
head sizes, proportional RoPE) writes the merged model; `convert_lora_to_gguf.py` writes the adapter alone, for
llama.cpp's `--lora` over a GGUF of the base. Only the language model is written: medqlora trains nothing else,
and the vision and audio towers would go to a separate projector file (`--mmproj`), which llama.cpp's Gemma 4
support treats on its own. The converters live in llama.cpp's source tree, which the `llama-cpp-python` wheel
(the runtime, `pip install -e ".[gguf]"`) leaves out: `$MEDQLORA_LLAMA_CPP` names a llama.cpp checkout, else the
source distribution of the installed runtime's version is fetched once from the package index and its converter
files unpacked into the cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from medqlora.tiny import default_cache_dir

TYPES = ("bf16", "f16", "q8_0", "f32")
"""GGUF weight types the converter writes itself (others: llama.cpp's `llama-quantize` on the result)."""

CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/")
STOP = "<turn|>"  # Gemma 4's end of turn: the stop token of every answer


def _runtime_version() -> str:
    try:
        from importlib.metadata import version

        return version("llama-cpp-python")
    except Exception:  # noqa: BLE001 - not installed: say how to install it
        raise RuntimeError(
            "export: llama.cpp's runtime is not installed: install the gguf extra with the README's line (it builds "
            "llama-cpp-python from source, minutes), or set MEDQLORA_LLAMA_CPP to a llama.cpp checkout"
        ) from None


def converter_dir() -> Path:
    """A folder holding llama.cpp's converters: `$MEDQLORA_LLAMA_CPP`, else unpacked from the runtime's sdist."""
    given = os.environ.get("MEDQLORA_LLAMA_CPP")
    if given:
        folder = Path(given).expanduser()
        if not (folder / "convert_hf_to_gguf.py").is_file():
            raise FileNotFoundError(
                f"MEDQLORA_LLAMA_CPP={given}: no convert_hf_to_gguf.py there; point it at a llama.cpp checkout"
            )
        return folder
    version = _runtime_version()
    folder = default_cache_dir() / f"llama.cpp-{version}"
    if (folder / "convert_hf_to_gguf.py").is_file():
        return folder
    print(
        f"export: fetching llama.cpp's converters once: the llama-cpp-python=={version} source distribution "
        f"(tens of MB; pip shows its size and progress) into {folder}",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory() as download:
        # pip, not a URL: the package index the user's pip is set up for, with its proxies and mirrors; its lines
        # ("Downloading llama_cpp_python-X.tar.gz (N MB)" and the progress bar) go to the user's terminal
        got = subprocess.run(
            [sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps", "--no-binary",
             ":all:", "-d", download, "--progress-bar", "on"],
            stdout=2, stderr=subprocess.PIPE, text=True,  # stdout to the terminal's stderr
        )  # fmt: skip
        archives = list(Path(download).glob("llama_cpp_python-*.tar.gz"))
        if got.returncode != 0 or not archives:
            raise RuntimeError(
                f"export: could not fetch llama.cpp's converters (llama-cpp-python=={version} source: "
                f"{(got.stderr.strip().splitlines() or ['no archive'])[-1]}); set MEDQLORA_LLAMA_CPP to a llama.cpp "
                "checkout"
            )
        _unpack(archives[0], folder)
    return folder


def _unpack(archive: Path, folder: Path) -> None:
    """The converter files of an sdist's `vendor/llama.cpp/`, into `folder` (atomically)."""
    from medqlora.io import atomic_directory

    with tarfile.open(archive) as tar, atomic_directory(folder, replace=False) as staging:
        for member in tar.getmembers():
            parts = member.name.split("/vendor/llama.cpp/", 1)
            if len(parts) == 2 and member.isfile() and parts[1].startswith(CONVERTER_FILES):
                member.name = parts[1]
                tar.extract(member, staging, filter="data")


def convert(model_dir: Path, out: Path, gguf_type: str, verbose: bool = False) -> Path:
    """`convert_hf_to_gguf.py` on a Hugging Face model folder."""
    script = converter_dir() / "convert_hf_to_gguf.py"
    _run([str(script), str(model_dir), "--outfile", str(out), "--outtype", gguf_type], verbose)
    return out


def convert_lora(adapter_dir: Path, base_dir: Path, out: Path, gguf_type: str, verbose: bool = False) -> Path:
    """`convert_lora_to_gguf.py`: the adapter alone, against the base's config (the base's weights are not read)."""
    script = converter_dir() / "convert_lora_to_gguf.py"
    _run(
        [str(script), str(adapter_dir), "--base", str(base_dir), "--outfile", str(out), "--outtype", gguf_type], verbose
    )
    return out


def _run(cmd: list[str], verbose: bool) -> None:
    """A converter in its own process (it edits sys.path and logging); its log shown with `verbose`, else its last
    line on failure."""
    log = None if verbose else subprocess.PIPE
    done = subprocess.run([sys.executable, *cmd], stdout=subprocess.DEVNULL, stderr=log, text=True)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or "").splitlines() if line.strip()] or ["see its log above"]
        raise RuntimeError(f"export: llama.cpp's {Path(cmd[0]).name} failed ({lines[-1]}); --log shows its log")


def export(adapter_dir: Path, out: Path, gguf_type: str, form: str, base: str, verbose: bool = False) -> Path:
    """Write `out`: `form` is `merged` (the base with the adapter merged in), `lora` (the adapter alone) or `base`
    (the base alone, for `--lora` over it). Staged beside `out` and renamed into place whole."""
    from medqlora.hub import load_config
    from medqlora.io import atomic_path
    from medqlora.model.adapter import merge

    if gguf_type not in TYPES:
        raise ValueError(f"export: --type {gguf_type!r} is not one of {', '.join(TYPES)}; llama.cpp's llama-quantize "
                         "makes the smaller types (q4_k_m, ...) from a bf16 export")  # fmt: skip
    load_config(base)  # a base that is not Gemma 4 stops here, in one line
    steps = 2 if form == "merged" else 1
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out.parent) as work, atomic_path(out) as staged:
        if form == "lora":
            print(f"export 1/1: the adapter as a GGUF LoRA ({gguf_type}) ...", file=sys.stderr, flush=True)
            convert_lora(adapter_dir, _local(base), staged, gguf_type, verbose)
        else:
            source = _local(base)
            if form == "merged":
                print("export 1/2: merging the adapter into bf16 weights ...", file=sys.stderr, flush=True)
                source = merge(adapter_dir, Path(work) / "merged", base)
            print(f"export {steps}/{steps}: llama.cpp's converter, {gguf_type} ...", file=sys.stderr, flush=True)
            convert(source, staged, gguf_type, verbose)
    if form != "lora":
        write_modelfile(out)
    return out


def _local(name_or_path: str) -> Path:
    """A local folder for a model name: the tiny model's, a folder as given, or the hub's cached snapshot."""
    from medqlora.hub import resolve_name_or_path

    resolved = Path(resolve_name_or_path(name_or_path)).expanduser()
    if resolved.is_dir():
        return resolved
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model"]))


MODELFILE = '''FROM ./{gguf}
# Gemma 4's chat format (the template medqlora trains and evaluates with); no system turn unless one is given
TEMPLATE """{{{{- if .System }}}}<|turn>system
{{{{ .System }}}}<turn|>
{{{{ end }}}}{{{{- range .Messages }}}}{{{{- if eq .Role "user" }}}}<|turn>user
{{{{ .Content }}}}<turn|>
{{{{ else if eq .Role "assistant" }}}}<|turn>model
{{{{ .Content }}}}<turn|>
{{{{ end }}}}{{{{- end }}}}<|turn>model
<|channel>thought
<channel|>"""
PARAMETER stop "{stop}"
PARAMETER temperature 0
PARAMETER num_ctx 4096
'''


def write_modelfile(gguf: Path) -> Path:
    """An Ollama Modelfile beside `gguf`, named after it (`med.gguf` -> `med.Modelfile`, so two exports in one folder
    keep theirs): `ollama create NAME -f med.Modelfile`, then `ollama run NAME`."""
    path = gguf.with_name(f"{gguf.stem}.Modelfile")
    path.write_text(MODELFILE.format(gguf=gguf.name, stop=STOP))
    return path
