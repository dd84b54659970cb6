"""medqlora's own subcommands beside Lightning's fit/validate/test/predict: eval, generate, merge, card, curves.

medqlora eval runs/<name>/<version>/adapter [--limit 200] [--no-keypoints]
medqlora generate runs/.../adapter --prompt "How is gout treated?" [--thinking]
medqlora merge runs/.../adapter merged/            (bf16 safetensors, no PEFT needed to load)
medqlora export runs/.../adapter med.gguf [--type q8_0] [--lora | --base-only]   (llama.cpp, Ollama)
medqlora card runs/<name>/<version>                (rewrite the adapter's model card)
medqlora curves runs/<name>/<version> [out.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medqlora.data.benchmarks import BENCHMARK_LOCATIONS
from medqlora.eval import BATCH_TOKENS, MAX_NEW_TOKENS
from medqlora.files import CONFIG_FILE, METRICS_FILE
from medqlora.usage import COMMANDS


def _positive(value: str) -> int:
    """argparse type: an integer >= 1."""
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {number})")
    return number


def _batch_tokens(value: str) -> int | str:
    """argparse type for --batch-size: a token budget >= 64, or auto."""
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of tokens or 'auto' (got {value!r})") from None
    if number < 64:
        raise argparse.ArgumentTypeError(f"is tokens per forward pass and must be >= 64 (got {number})")
    return number


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medqlora", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help=COMMANDS["eval"], description=COMMANDS["eval"])
    ev.add_argument("adapter", type=Path)
    ev.add_argument("--base", help="base model (default: the adapter's own)")
    for kind, where in BENCHMARK_LOCATIONS.items():
        default = " ".join(v for k, v in where.items() if k != "split") + f", split {where['split']}"
        ev.add_argument(f"--{kind}", help=f"hub id or local file with the hub dataset's columns (default {default})")
    ev.add_argument("--limit", type=_positive, help="score only the first N rows of each benchmark")
    ev.add_argument(
        "--medqa-prompt",
        choices=("training", "letter"),
        default="training",
        help="training: ask MedQA as the training rows render it (default); letter: ask for the letter",
    )
    ev.add_argument("--no-keypoints", action="store_true", help="skip the 54 key-point prompts")
    ev.add_argument(
        "--batch-size",
        type=_batch_tokens,
        default=BATCH_TOKENS,
        help=f"tokens per scoring forward pass, or 'auto' to size it from free GPU memory (default {BATCH_TOKENS})",
    )
    ev.add_argument("--max-new-tokens", type=_positive, default=MAX_NEW_TOKENS, help="key-point answers")
    ev.add_argument("--out", type=Path, help="default: <run dir>/eval-<adapter name>")
    gen = sub.add_parser("generate", help=COMMANDS["generate"], description=COMMANDS["generate"])
    gen.add_argument("adapter", type=Path)
    what = gen.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt")
    what.add_argument("--prompts-file", type=Path, help="one prompt per line")
    gen.add_argument("--thinking", action="store_true", help="let the model think first (thoughts not printed)")
    gen.add_argument("--max-new-tokens", type=_positive, default=MAX_NEW_TOKENS)
    gen.add_argument("--json", action="store_true", help='one JSON line a prompt: {"prompt": ..., "answer": ...}')
    gen.add_argument("--base")
    mg = sub.add_parser("merge", help=COMMANDS["merge"], description=COMMANDS["merge"])
    mg.add_argument("adapter", type=Path)
    mg.add_argument("out", type=Path, help="a new or empty directory")
    mg.add_argument("--base")
    mg.add_argument("--force", action="store_true", help="replace OUT even if it holds files")
    ex = sub.add_parser("export", help=COMMANDS["export"], description=COMMANDS["export"])
    ex.add_argument("adapter", type=Path)
    ex.add_argument("out", type=Path, help="the .gguf file to write (an Ollama Modelfile is written beside it)")
    ex.add_argument("--type", default="bf16", help="bf16 (default), f16, q8_0 or f32")
    form = ex.add_mutually_exclusive_group()
    form.add_argument("--lora", action="store_true", help="the adapter alone, for llama.cpp's --lora over the base")
    form.add_argument("--base-only", action="store_true", help="the base alone (what --lora goes over)")
    ex.add_argument("--base", help="base model (default: the adapter's own)")
    ex.add_argument("--force", action="store_true", help="replace OUT if it exists")
    ex.add_argument("--log", action="store_true", help="show llama.cpp's converter log as it runs")
    cd = sub.add_parser("card", help=COMMANDS["card"], description=COMMANDS["card"])
    cd.add_argument("run_dir", type=Path)
    cd.add_argument("--adapter", type=Path, help="default: <run_dir>/adapter")
    cv = sub.add_parser("curves", help=COMMANDS["curves"], description=COMMANDS["curves"])
    cv.add_argument("run_dir", type=Path)
    cv.add_argument(
        "out", nargs="?", type=Path, help="default: <run_dir>/curves.png, always redrawn (it is drawn from the logs)"
    )
    cv.add_argument("--force", action="store_true", help="replace an OUT you named if it exists")
    return parser


RUN_MARKERS = (CONFIG_FILE, METRICS_FILE, "checkpoints", "adapter_config.json")
"""What makes a folder a training run or an adapter: `--force` never replaces one."""


def _refuse_to_replace(path: Path, what: str, force: bool, reads: tuple[Path, ...] = ()) -> None:
    """Never delete or overwrite what the user made, and never what the command reads or what holds a run.

    A target that is, holds or lies inside a path the command reads (`reads`), or a folder holding a run or an
    adapter, is refused whatever `force` says; any other existing non-empty target needs `force`."""
    target = path.resolve()
    for source in reads:
        source_path = source.resolve()
        if target == source_path or source_path.is_relative_to(target) or target.is_relative_to(source_path):
            raise ValueError(f"{what} {path} is, holds or lies inside {source}, which it reads; choose another path")
    marker = next((m for m in RUN_MARKERS if path.is_dir() and (path / m).exists()), None)
    if marker is not None:
        raise ValueError(
            f"{what} {path} holds a training run or an adapter ({marker}), which --force never replaces; "
            "choose a new path"
        )
    if not force and ((path.is_dir() and any(path.iterdir())) or path.is_file()):
        raise FileExistsError(
            f"{what} {path} already exists and is not empty; choose a new path or add --force to replace it"
        )


def _check_run_dir(run_dir: Path, command: str) -> None:
    """`run_dir` must be a run directory (its resolved config or its metrics), not any folder."""
    if not run_dir.is_dir() or not any((run_dir / m).is_file() for m in (CONFIG_FILE, METRICS_FILE)):
        raise FileNotFoundError(
            f"{command}: {run_dir} is not a run directory (no config.yaml or metrics.csv); pass the folder a run "
            "wrote, runs/<name>/<version>"
        )


def _prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        if not args.prompt.strip():
            raise ValueError("generate: --prompt is empty; give the question to answer")
        return [args.prompt]
    if not args.prompts_file.is_file():
        raise FileNotFoundError(f"generate: --prompts-file {args.prompts_file} does not exist")
    prompts = [line.strip() for line in args.prompts_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"generate: --prompts-file {args.prompts_file} holds no prompt; write one per line")
    return prompts


def run(argv: list[str]) -> None:
    """Parse and run one project subcommand."""
    args = _parser().parse_args(argv)
    if args.command == "curves":
        from medqlora.callbacks.curves import plot_curves

        if args.out is not None:
            if args.out.is_dir() or (args.out.exists() and args.out.suffix != ".png"):
                raise ValueError(f"curves: OUT {args.out} exists and is not a .png picture; choose a new .png path")
            _refuse_to_replace(args.out, "curves: OUT", args.force, reads=(args.run_dir / "metrics.csv",))
        print(plot_curves(args.run_dir, args.out))
    elif args.command == "card":
        from medqlora.model.adapter import check_adapter_dir
        from medqlora.model.card import write_model_card

        _check_run_dir(args.run_dir, "card")
        check_adapter_dir(args.adapter or args.run_dir / "adapter")
        print(write_model_card(args.run_dir, args.adapter))
    elif args.command == "merge":
        from medqlora.model.adapter import check_adapter_dir, merge

        check_adapter_dir(args.adapter)
        _refuse_to_replace(args.out, "merge: OUT", args.force, reads=(args.adapter,))
        print(merge(args.adapter, args.out, args.base))
    elif args.command == "export":
        from medqlora.model.adapter import adapter_base, check_adapter_dir
        from medqlora.model.gguf import export

        check_adapter_dir(args.adapter)
        if args.out.suffix != ".gguf" or args.out.is_dir():
            raise ValueError(f"export: OUT {args.out} is not a .gguf file path; name the file to write, e.g. med.gguf")
        _refuse_to_replace(args.out, "export: OUT", args.force, reads=(args.adapter,))
        form = "lora" if args.lora else "base" if args.base_only else "merged"
        written = export(args.adapter, args.out, args.type, form, args.base or adapter_base(args.adapter), args.log)
        print(f"{written} ({written.stat().st_size / 2**20:.1f} MiB)")
    elif args.command == "generate":
        from medqlora.eval.generate import generate
        from medqlora.model.adapter import load_adapted
        from medqlora.model.inference import for_inference

        prompts = _prompts(args)
        model, tokenizer = load_adapted(args.adapter, args.base)
        dense = for_inference(model)  # one kernel a linear or norm: decoding is bound by launches
        dense.merge_adapter()
        answers = generate(dense.model, tokenizer, prompts, thinking=args.thinking, max_new_tokens=args.max_new_tokens)
        for number, (prompt, answer) in enumerate(zip(prompts, answers)):
            if args.json:
                print(json.dumps({"prompt": prompt, "answer": answer}))
            elif len(prompts) == 1:
                print(answer)
            else:  # each answer under its prompt, a blank line between them
                print(f"{'' if number == 0 else chr(10)}> {prompt}\n{answer}")
    else:
        _eval(args)


def _eval(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from medqlora.eval.items import DEFAULT_BENCHMARKS, with_source
    from medqlora.eval.run import PhaseClock, run_eval
    from medqlora.model.card import write_model_card
    from medqlora.runs import eval_dir

    clock = PhaseClock()
    medqa, pubmedqa = DEFAULT_BENCHMARKS
    specs = [
        replace(with_source(medqa, args.medqa), limit=args.limit, prompt=args.medqa_prompt),
        replace(with_source(pubmedqa, args.pubmedqa), limit=args.limit),
    ]
    out = args.out or eval_dir(args.adapter)
    results = run_eval(
        args.adapter, out, specs, not args.no_keypoints, args.batch_size, args.max_new_tokens, args.base, clock
    )
    for b in results["benchmarks"]:
        low, high = b["delta_ci95_pp"]
        print(
            f"{b['benchmark']}: base {b['base_accuracy_norm']:.1f}% adapter {b['adapter_accuracy_norm']:.1f}% "
            f"(length-normalised; raw {b['base_accuracy']:.1f}% / {b['adapter_accuracy']:.1f}%) "
            f"delta {b['delta_pp']:+.1f} pp [{low:+.1f}, {high:+.1f}] over {b['items']} items"
        )
    if results["keypoints"]:
        kp = results["keypoints"]
        print(f"key points: base {kp['base']['average']:.1f}% adapter {kp['adapter']['average']:.1f}%")
    if args.out is None:
        print(f"model card: {write_model_card(args.adapter.parent, args.adapter)}")
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in results["phases"].items())
    print(f"evaluated in {results['eval_wall_s']:.1f} s ({phases})")
    print(f"results: {out / 'eval.json'}, per item: {out / 'eval_items.jsonl'}")
