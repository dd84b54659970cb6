"""The `medqlora` command: LightningCLI over QLoRAModule and MedicalMixDataModule.

`medqlora fit|validate|test|predict --config configs/X.yaml`; `--print_config` shows every value.
`medqlora eval|generate|merge|card|curves ...`: medqlora's own commands (medqlora/commands.py).
Tests call `main([...])` in-process.
"""

from __future__ import annotations

import errno
import os
import sys
import time

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from medqlora.commands import COMMANDS
from medqlora.commands import run as run_command
from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.model.loading import check_max_length
from medqlora.model.module import QLoRAModule


class MedQLoRACLI(LightningCLI):
    """LightningCLI with the tokenizer linked to the model, one run directory per run, and checkpoints
    loaded with `weights_only=True` unless `--weights_only false` is given."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Data and model share the model's tokenizer; the data module shards batches by rank itself."""
        parser.link_arguments("model.name_or_path", "data.tokenizer")
        # medqlora's batch samplers already give each rank a disjoint shard (and keep packing and resume)
        parser.set_defaults({"trainer.use_distributed_sampler": False})

    def before_instantiate_classes(self) -> None:
        """Give every logger without an explicit version the same time-stamped one: one run, one directory."""
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        loggers = config.trainer.logger
        if not isinstance(loggers, list):
            loggers = [loggers]
        check_max_length(config.model.name_or_path, config.data.max_length)
        accelerator = str(config.trainer.accelerator)
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ValueError(f"trainer.accelerator={accelerator!r} but no CUDA GPU is visible (torch "
                             f"{torch.__version__}, CUDA build: {torch.version.cuda}); use --trainer.accelerator cpu "
                             "or install a CUDA build of torch")
        if config.get("weights_only") is None and "weights_only" in config:
            config.weights_only = True  # medqlora's checkpoints hold tensors and plain containers only
        # ranks started by Lightning's launcher re-run this command later: they reuse rank 0's stamp
        relaunched = os.environ.get("LOCAL_RANK", "0") != "0" and "MEDQLORA_RUN_STAMP" in os.environ
        stamp = os.environ["MEDQLORA_RUN_STAMP"] if relaunched else time.strftime("%Y%m%d-%H%M%S")
        os.environ["MEDQLORA_RUN_STAMP"] = stamp
        for logger in loggers:
            init = getattr(logger, "init_args", None)
            if init is not None and "version" in init and init.version is None:
                init.version = stamp


def main(args: list[str] | None = None) -> MedQLoRACLI | None:
    """Entry point of the `medqlora` console script and of `python -m medqlora`."""
    argv = sys.argv[1:] if args is None else args
    if argv and argv[0] in COMMANDS:
        return run_command(argv)
    try:
        return MedQLoRACLI(QLoRAModule, MedicalMixDataModule, args=args, save_config_kwargs={"overwrite": True})
    except torch.OutOfMemoryError as err:
        raise SystemExit(f"CUDA out of memory ({err}).\nLower data.micro_batch_size or data.max_length, keep "
                         "data.packing: true (fixed-size micro-batches), or lower model.lean.loss_chunk_size; "
                         "resume from the last checkpoint with --ckpt_path.") from err
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise SystemExit(f"disk full while writing {err.filename or 'an output'}: free space or set "
                         "trainer.default_root_dir to a larger disk; checkpoints and adapters are written "
                         "atomically, so the previous copies are intact.") from err


if __name__ == "__main__":
    main()
