"""The `medqlora` command: LightningCLI over QLoRAModule and MedicalMixDataModule.

`medqlora fit|validate|test|predict --config configs/X.yaml`; `--print_config` shows every value.
Tests call `main([...])` in-process.
"""

from __future__ import annotations

import time

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from medqlora.data.datamodule import MedicalMixDataModule
from medqlora.model.module import QLoRAModule


class MedQLoRACLI(LightningCLI):
    """LightningCLI with the tokenizer linked to the model and one run directory per run."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Data and model share the model's tokenizer."""
        parser.link_arguments("model.name_or_path", "data.tokenizer")

    def before_instantiate_classes(self) -> None:
        """Give every logger without an explicit version the same time-stamped one: one run, one directory."""
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        loggers = config.trainer.logger
        if not isinstance(loggers, list):
            loggers = [loggers]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for logger in loggers:
            init = getattr(logger, "init_args", None)
            if init is not None and "version" in init and init.version is None:
                init.version = stamp


def main(args: list[str] | None = None) -> MedQLoRACLI:
    """Entry point of the `medqlora` console script and of `python -m medqlora`."""
    return MedQLoRACLI(QLoRAModule, MedicalMixDataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
