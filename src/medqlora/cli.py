"""The `medqlora` command: LightningCLI over QLoRAModule and MedicalMixDataModule, plus medqlora's own commands.

`medqlora fit|validate|test|predict --config configs/X.yaml`; `--print_config` shows every value.
`medqlora eval|generate|merge|card|curves ...`: medqlora's own commands (medqlora/commands.py).
`main()` is the console script (exit status 0 on success, one line per error); `run()` is the same command
in-process, returning the LightningCLI object, for tests and notebooks.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
import traceback
import warnings

import torch
import yaml
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from medqlora import __version__
from medqlora.callbacks.interrupt import CheckpointOnInterrupt
from medqlora.commands import COMMANDS
from medqlora.commands import run as run_command
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.model.module import QLoRAModule
from medqlora.resume import LIGHTNING_KEYWORDS, differences, read_checkpoint, settings

TRAINING_COMMANDS = {
    "fit": "train the adapter (writes runs/<name>/<version>/: metrics, data card, checkpoints, adapter)",
    "validate": "eval loss and next-token accuracy on the validation rows (of a checkpoint with --ckpt_path)",
    "test": "the same on the held-out rows, logged under test/",
    "predict": "per-token predictions on the held-out rows",
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


class MedQLoRACLI(LightningCLI):
    """LightningCLI with the tokenizer linked to the model, one run directory per run (a resumed fit continues
    its own), settings checked against `--ckpt_path`'s, and checkpoints loaded with `weights_only=True` unless
    `--weights_only false` is given."""

    resumed: dict | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Data and model share the model's tokenizer; the data module shards batches by rank itself."""
        parser.link_arguments("model.name_or_path", "data.tokenizer")
        # medqlora's batch samplers already give each rank a disjoint shard (and keep packing and resume)
        parser.set_defaults({"trainer.use_distributed_sampler": False})

    def _parse_ckpt_path(self) -> None:
        """Check `--ckpt_path` before anything is built, and refuse settings that differ from the checkpoint's.

        Replaces LightningCLI's own step, which silently overwrites the parsed model settings with the
        checkpoint's (so `--model.lr 0.1` on resume would train at the old lr while `--print_config` says 0.1)."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        path = config.get("ckpt_path") if config else None
        if not path or path in LIGHTNING_KEYWORDS:
            return
        weights_only = config.get("weights_only")
        self.resumed = read_checkpoint(path, weights_only=True if weights_only is None else weights_only)
        dumped = self.parser.dump(self.config, skip_link_targets=False, skip_none=False, format="yaml")
        given = yaml.safe_load(dumped)[subcommand]
        sections = [("model", QLoRAModule, "hyper_parameters")]
        if subcommand == "fit":  # which rows exist must not change under a resumed run; evaluation may use others
            sections.append(("data", MedicalMixDataModule, "datamodule_hyper_parameters"))
        changed = []
        for section, cls, key in sections:
            saved = self.resumed.get(key) or {}
            if saved:
                changed += differences(settings(section, saved, cls), settings(section, given[section] or {}, cls))
        if changed:
            raise ValueError(
                f"--ckpt_path {path}: " + "; ".join(changed) + ". A resumed run keeps the settings it "
                "was started with: drop these overrides, or start a new run without --ckpt_path"
            )

    def before_instantiate_classes(self) -> None:
        """Validate what the trainer is asked for, and name the run directory: a fit's timestamp (the
        checkpoint's own run when resuming), `<subcommand>-<timestamp>` for validate/test/predict."""
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        accelerator = str(config.trainer.accelerator)
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ValueError(
                f"trainer.accelerator={accelerator!r} but no CUDA GPU is visible (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda}); use --trainer.accelerator cpu "
                "or install a CUDA build of torch"
            )
        if config.get("weights_only") is None and "weights_only" in config:
            config.weights_only = True  # medqlora's checkpoints hold tensors and plain containers only
        # ranks started by Lightning's launcher re-run this command later: they reuse rank 0's stamp
        relaunched = os.environ.get("LOCAL_RANK", "0") != "0" and "MEDQLORA_RUN_STAMP" in os.environ
        stamp = os.environ["MEDQLORA_RUN_STAMP"] if relaunched else time.strftime("%Y%m%d-%H%M%S")
        os.environ["MEDQLORA_RUN_STAMP"] = stamp
        if self.subcommand != "fit":
            version = f"{self.subcommand}-{stamp}"
        else:
            version = (self.resumed or {}).get("run_version") or stamp
        loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else [config.trainer.logger]
        for logger in loggers:
            init = getattr(logger, "init_args", None)
            if init is not None and "version" in init and init.version is None:
                init.version = version


def run(args: list[str] | None = None) -> MedQLoRACLI | None:
    """Run one `medqlora` command in this process; returns the LightningCLI (None for medqlora's own commands).

    Errors propagate as exceptions (the console script, `main`, turns them into one line and an exit status)."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv and argv[0] in COMMANDS:
        return run_command(argv)
    # main() hands over sys.argv without --verbose; LightningCLI would warn that both were given
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    try:
        return MedQLoRACLI(QLoRAModule, MedicalMixDataModule, args=argv, save_config_kwargs={"overwrite": True})
    except torch.OutOfMemoryError as err:
        raise SystemExit(
            f"CUDA out of memory ({str(err).splitlines()[0]}). Lower data.micro_batch_size or "
            "data.max_length, keep data.packing: true (fixed-size micro-batches), or lower "
            "model.lean.loss_chunk_size; resume from the last checkpoint with --ckpt_path."
        ) from err
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise SystemExit(
            f"disk full while writing {err.filename or 'an output'}: free space or set "
            "trainer.default_root_dir to a larger disk; checkpoints and adapters are written "
            "atomically, so the previous copies are intact."
        ) from err


def interrupted_by(cli: MedQLoRACLI | None) -> int | None:
    """The signal that stopped a fit early (the run saved `interrupted.ckpt` first), if any."""
    trainer = getattr(cli, "trainer", None)
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, CheckpointOnInterrupt) and callback.stopped_by is not None:
            return callback.stopped_by
    return None


def main(args: list[str] | None = None) -> int:
    """The `medqlora` console script: 0 on success, 128 + N when signal N stopped a fit (after it saved), 2 for a
    usage error, 1 for any other error, printed as one line (`--verbose` adds the traceback)."""
    argv = sys.argv[1:] if args is None else list(args)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"medqlora {__version__}")
        return 0
    try:
        cli = run(argv)
    except KeyboardInterrupt:
        print("medqlora: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except SystemExit as exit_:  # argparse and jsonargparse print their own usage errors and exit 2
        if isinstance(exit_.code, str):
            print(f"medqlora: error: {exit_.code}", file=sys.stderr)
            return 1
        return exit_.code or 0
    except Exception as err:  # noqa: BLE001 - the console's contract: one line, not a traceback
        if verbose:
            traceback.print_exc()
        message = str(err).strip() or type(err).__name__
        hint = "" if verbose else "  (--verbose shows the traceback)"
        print(f"medqlora: error: {message}{hint}", file=sys.stderr)
        return 1
    signum = interrupted_by(cli)
    return 0 if signum is None else 128 + signum


if __name__ == "__main__":
    sys.exit(main())
