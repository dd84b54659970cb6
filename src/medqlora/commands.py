"""medqlora's own subcommands beside Lightning's fit/validate/test/predict: eval, generate, merge, card, curves.

    medqlora eval runs/<name>/<version>/adapter [--limit 200] [--no-keypoints]
    medqlora generate runs/.../adapter --prompt "How is gout treated?" [--thinking]
    medqlora merge runs/.../adapter merged/            (bf16 safetensors, no PEFT needed to load)
    medqlora card runs/<name>/<version>                (rewrite the adapter's model card)
    medqlora curves runs/<name>/<version> [out.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COMMANDS = ("eval", "generate", "merge", "card", "curves")


def _source(value: str | None, default):
    """A benchmark spec from --medqa/--pubmedqa: an existing file is a local path, anything else a hub id."""
    from dataclasses import replace

    if value is None:
        return default
    if Path(value).exists():
        return replace(default, hub_id=None, path=value)
    return replace(default, hub_id=value, path=None)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medqlora", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="MedQA, PubMedQA and clinical key points, base vs adapter; updates the card")
    ev.add_argument("adapter", type=Path)
    ev.add_argument("--base", help="base model (default: the adapter's own)")
    ev.add_argument("--medqa", help="hub id or local file (default GBaker/MedQA-USMLE-4-options, test)")
    ev.add_argument("--pubmedqa", help="hub id or local file (default qiaojin/PubMedQA pqa_labeled)")
    ev.add_argument("--limit", type=int, help="score only the first N rows of each benchmark")
    ev.add_argument("--no-keypoints", action="store_true", help="skip the 54 key-point prompts")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--max-new-tokens", type=int, default=512, help="key-point answers")
    ev.add_argument("--out", type=Path, help="default: <run dir>/eval-<adapter name>")
    gen = sub.add_parser("generate", help="answer prompts with the adapter")
    gen.add_argument("adapter", type=Path)
    what = gen.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt")
    what.add_argument("--prompts-file", type=Path, help="one prompt per line")
    gen.add_argument("--thinking", action="store_true", help="let the model think first (thoughts not printed)")
    gen.add_argument("--max-new-tokens", type=int, default=512)
    gen.add_argument("--base")
    mg = sub.add_parser("merge", help="merge the adapter into bf16 base weights")
    mg.add_argument("adapter", type=Path)
    mg.add_argument("out", type=Path)
    mg.add_argument("--base")
    cd = sub.add_parser("card", help="rewrite an adapter's model card from its run directory")
    cd.add_argument("run_dir", type=Path)
    cd.add_argument("--adapter", type=Path, help="default: <run_dir>/adapter")
    cv = sub.add_parser("curves", help="redraw a run's curves.png from its metrics.csv")
    cv.add_argument("run_dir", type=Path)
    cv.add_argument("out", nargs="?", type=Path)
    return parser


def run(argv: list[str]) -> None:
    """Parse and run one project subcommand."""
    args = _parser().parse_args(argv)
    if args.command == "curves":
        from medqlora.callbacks.curves import plot_curves

        print(plot_curves(args.run_dir, args.out))
    elif args.command == "card":
        from medqlora.eval.card import write_model_card

        print(write_model_card(args.run_dir, args.adapter))
    elif args.command == "merge":
        from medqlora.eval.run import merge

        print(merge(args.adapter, args.out, args.base))
    elif args.command == "generate":
        from medqlora.eval.generate import generate
        from medqlora.eval.run import load_adapted

        prompts = [args.prompt] if args.prompt else [
            line.strip() for line in args.prompts_file.read_text().splitlines() if line.strip()]
        model, tokenizer = load_adapted(args.adapter, args.base)
        for prompt, answer in zip(prompts, generate(model, tokenizer, prompts, thinking=args.thinking,
                                                    max_new_tokens=args.max_new_tokens)):
            print(json.dumps({"prompt": prompt, "answer": answer}))
    else:
        _eval(args)


def _eval(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from medqlora.eval.card import write_model_card
    from medqlora.eval.items import DEFAULT_BENCHMARKS
    from medqlora.eval.run import run_eval

    medqa, pubmedqa = DEFAULT_BENCHMARKS
    specs = [replace(_source(args.medqa, medqa), limit=args.limit),
             replace(_source(args.pubmedqa, pubmedqa), limit=args.limit)]
    out = args.out or args.adapter.parent / f"eval-{args.adapter.name}"
    results = run_eval(args.adapter, out, specs, not args.no_keypoints, args.batch_size, args.max_new_tokens,
                       args.base)
    for b in results["benchmarks"]:
        low, high = b["delta_ci95_pp"]
        print(f"{b['benchmark']}: base {b['base_accuracy']:.1f}% adapter {b['adapter_accuracy']:.1f}% "
              f"delta {b['delta_pp']:+.1f} pp [{low:+.1f}, {high:+.1f}] over {b['items']} items")
    if results["keypoints"]:
        kp = results["keypoints"]
        print(f"key points: base {kp['base']['average']:.1f}% adapter {kp['adapter']['average']:.1f}%")
    if args.out is None:
        print(f"model card: {write_model_card(args.adapter.parent, args.adapter)}")
    print(f"results: {out / 'eval.json'}, per item: {out / 'eval_items.jsonl'}")
