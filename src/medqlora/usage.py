"""The command table and the answers that need no library: `medqlora`, `--help`, `--version`, an unknown command, a
training command without `--config`. Imports nothing heavy, so these answer in a fraction of a second; every other
command says it is starting before torch, Lightning and transformers load (seconds on a laptop)."""

from __future__ import annotations

import sys

from medqlora import __version__

TRAINING_COMMANDS = {
    "fit": "train the adapter (writes runs/<name>/<version>/: metrics, data card, checkpoints, adapter)",
    "validate": "eval loss and next-token accuracy on the validation split (of a checkpoint with --ckpt_path)",
    "test": "the same on the test split (data.test_fraction > 0), else on the validation split; logged under test/",
    "predict": "per-row predictions on the validation split, written to predictions.jsonl in the run directory",
    "plan": "the micro-batch and checkpointing fit picks within a GPU memory budget (--budget GIB), without training",
}
COMMANDS = {
    "eval": "MedQA, PubMedQA and clinical key points, base vs adapter in one load; updates the model card",
    "generate": "answer prompts with an adapter (greedy, Gemma 4 chat format)",
    "merge": "merge an adapter into bf16 base weights that load without PEFT",
    "export": "write the merged model (or the adapter alone) as GGUF for llama.cpp and Ollama, text only",
    "card": "rewrite an adapter's model card (README.md) from its run directory",
    "curves": "redraw a run's curves.png from its metrics.csv",
}
USAGE = f"""usage: medqlora <command> [options]        medqlora <command> --help: the command's options

Training (LightningCLI: --config configs/X.yaml, --print_config shows every resolved value):
{chr(10).join(f"  {name:<9} {text}" for name, text in TRAINING_COMMANDS.items())}

Evaluation and export:
{chr(10).join(f"  {name:<9} {text}" for name, text in COMMANDS.items())}

Options for every command:
  --verbose  on an error, print the full traceback as well as the one-line message
  --version  print medqlora's version
"""


def quick_answer(argv: list[str]) -> int | None:
    """The exit status of a command answered without loading anything (usage, version, a usage error), having
    printed its answer; None for a command that must run."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"medqlora {__version__}")
        return 0
    known = {**TRAINING_COMMANDS, **COMMANDS}
    if argv[0] not in known:
        print(f"medqlora: error: unknown command {argv[0]!r}; choose one of {', '.join(known)}", file=sys.stderr)
        return 2
    asking_help = any(a in ("-h", "--help") or a.startswith("--print_config") for a in argv)
    if argv[0] in TRAINING_COMMANDS and not asking_help and not any(a.startswith("--config") for a in argv):
        print(
            f"medqlora: error: {argv[0]} needs --config: configs/tiny.yaml (the tiny offline default) or "
            "configs/gemma4-e2b-medical.yaml (the recipe); without one nothing says where the run goes",
            file=sys.stderr,
        )
        return 2
    return None


LOADS_MODELS = ("eval", "generate", "merge", "export")  # medqlora's own commands that load torch and a model


def starting_line(argv: list[str]) -> str | None:
    """What a command prints at once, before seconds of imports are spent in silence (None: it answers quickly)."""
    asking_help = any(a in ("-h", "--help") for a in argv)
    if argv[0] in TRAINING_COMMANDS or (argv[0] in LOADS_MODELS and not asking_help):
        return f"medqlora {argv[0]}: starting (loading torch, Lightning and transformers)"
    return None
