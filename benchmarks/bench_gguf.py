"""The GGUF export at E2B's real shapes (random weights, the checkpoint the benchmarks build), on this CPU:

    python benchmarks/bench_train.py build --out /tmp/e2b-random        # once (on a CPU: ~3 minutes, 10 GB)
    python benchmarks/bench_gguf.py --ckpt /tmp/e2b-random --out /tmp/e2b-gguf --json benchmarks/results/X.json

For each type: the file written by llama.cpp's converter through `medqlora.model.gguf.convert` (what
`medqlora export --base-only` runs; a merge changes the weights' values, not the shapes), its size, the time to
convert, and llama.cpp's runtime on it: load time, prompt tokens/s over a 64-token prompt, and greedy decode
tokens/s over 32 new tokens (the figure a laptop user reads), with every core of the machine. The checkpoint has no
tokenizer: the tiny model's, with E2B's vocabulary filled up by `<unused>` tokens, is written beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

PROMPT, NEW = 64, 32


def write_tokenizer(ckpt: Path) -> None:
    """The tiny tokenizer (Gemma 4's turn tokens, template and byte fallback), its vocabulary padded to E2B's."""
    from workload import copy_tiny_tokenizer

    copy_tiny_tokenizer(ckpt)
    vocab_size = json.loads((ckpt / "config.json").read_text())["text_config"]["vocab_size"]
    spec = json.loads((ckpt / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), vocab_size)})
    (ckpt / "tokenizer.json").write_text(json.dumps(spec))


def decode_speed(path: Path, threads: int) -> dict:
    """llama.cpp on `path`: load seconds, prompt and greedy decode tokens/s."""
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, verbose=False)
    loaded = time.perf_counter() - start
    prompt = [2] + [(7919 * i) % 1000 + 300 for i in range(PROMPT - 1)]
    start = time.perf_counter()
    llm.eval(prompt)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(NEW):
        token = llm.sample(temp=0.0)  # greedy
        llm.eval([token])
    decode = time.perf_counter() - start
    return {
        "load_s": round(loaded, 1),
        "prompt_tokens_per_s": round(PROMPT / prefill, 1),
        "decode_tokens_per_s": round(NEW / decode, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--types", nargs="+", default=["q8_0", "bf16"])
    args = parser.parse_args()
    from medqlora.model.gguf import convert

    write_tokenizer(args.ckpt)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = os.cpu_count() or 1
    results = {}
    for gguf_type in args.types:
        path = args.out / f"e2b-{gguf_type}.gguf"
        start = time.perf_counter()
        convert(args.ckpt, path, gguf_type)
        converted = time.perf_counter() - start
        results[gguf_type] = {"file_gib": round(path.stat().st_size / 2**30, 2), "convert_s": round(converted)}
        results[gguf_type].update(decode_speed(path, threads))
        print(gguf_type, results[gguf_type], flush=True)
        path.unlink()  # the next type needs the disk more than this file does
    import llama_cpp

    report = {
        "what": "medqlora export's GGUF at E2B's shapes (random weights): size, conversion and llama.cpp CPU speed",
        "command": "python benchmarks/bench_gguf.py --ckpt /tmp/e2b-random --out /tmp/e2b-gguf --json ...",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": threads},
        "llama_cpp_python": llama_cpp.__version__,
        "prompt_tokens": PROMPT,
        "new_tokens": NEW,
        "types": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
