"""The `medqlora` command: routing, and the console script's contract (exit status, one line per error).

`medqlora fit|validate|test|predict --config configs/X.yaml` (LightningCLI: medqlora/training_cli.py; `--print_config`
shows every value); `medqlora eval|generate|merge|export|card|curves ...`: medqlora's own commands (commands.py).
`main()` is the console script (exit status 0 on success, one line per error); `run()` is the same command
in-process, returning the LightningCLI object, for tests and notebooks. Nothing heavy is imported here: a command
loads what it needs when it runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback

from medqlora.usage import COMMANDS, quick_answer, starting_line


def run(args: list[str] | None = None):
    """Run one `medqlora` command in this process; returns the LightningCLI (None for medqlora's own commands).

    Errors propagate as exceptions (the console script, `main`, turns them into one line and an exit status)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in COMMANDS:
        from medqlora.commands import run as run_command

        return run_command(argv)
    if argv and argv[0] == "plan":
        from medqlora.training_cli import run_plan

        return run_plan(argv[1:])
    from medqlora.training_cli import run_training

    return run_training(argv)


def one_line(message: str) -> str:
    """jsonargparse's multi-line report as its key and first real reason: `model.lora: Option 'bogus' is not
    accepted` rather than the union's subtypes, the rejected `None` and the value's repr."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    key = next((line.split('"')[1] for line in lines if line.startswith('Parser key "')), None)
    noise = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value", "- Expected a <class 'NoneType")
    reasons = [line.removeprefix("- ") for line in lines if not line.startswith(noise)]
    reasons = [r for r in reasons if not r.startswith("Problem with given class_path")] or reasons or lines[:1]
    reason = reasons[0] if reasons else message
    return f"{key}: {reason}" if key and not reason.startswith(key) else reason


def main(args: list[str] | None = None) -> int:
    """The `medqlora` console script: 0 on success, 128 + N when signal N stopped a fit (after it saved), 2 for a
    usage error, 1 for any other error, printed as one line (`--verbose` adds the traceback)."""
    argv = sys.argv[1:] if args is None else list(args)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    answered = quick_answer(argv)
    if answered is not None:
        return answered
    line = starting_line(argv)
    if line and "torch" not in sys.modules:  # in a fresh process only: a test or notebook has them loaded already
        print(line, file=sys.stderr, flush=True)
    try:
        cli = run(argv)
    except KeyboardInterrupt:
        print("medqlora: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except argparse.ArgumentError as err:  # a value the parser refuses: a usage error
        if verbose:
            traceback.print_exc()
        print(f"medqlora: error: {one_line(str(err))}  (medqlora {argv[0]} --help lists the options)", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse prints its own usage errors and exits 2
        if isinstance(exit_.code, str):
            print(f"medqlora: error: {exit_.code}", file=sys.stderr)
            return 1
        return exit_.code or 0
    except Exception as err:  # noqa: BLE001 - the console's contract: one line, not a traceback
        if verbose:
            traceback.print_exc()
        message = one_line(str(err)) or type(err).__name__
        hint = "" if verbose else "  (--verbose shows the traceback)"
        print(f"medqlora: error: {message}{hint}", file=sys.stderr)
        return 1
    if cli is None:  # medqlora's own commands
        return 0
    from medqlora.training_cli import interrupted_by

    signum = interrupted_by(cli)
    return 0 if signum is None else 128 + signum


if __name__ == "__main__":
    sys.exit(main())
