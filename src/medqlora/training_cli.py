"""LightningCLI over QLoRAModule and MedicalMixDataModule: `medqlora fit|validate|test|predict --config X.yaml`.

The tokenizer linked to the model, one run directory per run (a resumed fit continues its own), settings checked
against `--ckpt_path`'s before anything is built. Loaded only for the training commands (medqlora/cli.py routes).
"""

from __future__ import annotations

import errno
import itertools
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from medqlora.callbacks.interrupt import CheckpointOnInterrupt
from medqlora.callbacks.predictions import PredictionsJSONL
from medqlora.compat import CkptPathCLI
from medqlora.data.datamodule import MedicalMixDataModule, sample_sources
from medqlora.data.sources import SourceSpec
from medqlora.model.budget import Plan
from medqlora.model.module import QLoRAModule
from medqlora.planning import question, report, resolve
from medqlora.resume import LIGHTNING_KEYWORDS, differences, read_checkpoint, settings, source_differences
from medqlora.usage import TRAINING_COMMANDS

LIGHTNING_COMMANDS = [name for name in TRAINING_COMMANDS if name != "plan"]  # plan parses as fit, then stops


class MedQLoRACLI(CkptPathCLI):
    """LightningCLI with the tokenizer linked to the model, one run directory per run (a resumed fit continues
    its own), settings checked against `--ckpt_path`'s, and checkpoints loaded with `weights_only=True` unless
    `--weights_only false` is given."""

    resumed: dict | None = None
    plan_only = False  # `medqlora plan`: stop after the memory plan, printing it
    memory_plan: Plan | None = None

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Data and model share the model's tokenizer; the data module shards batches by rank itself."""
        parser.link_arguments("model.name_or_path", "data.tokenizer")
        # medqlora's batch samplers already give each rank a disjoint shard (and keep packing and resume)
        parser.set_defaults({"trainer.use_distributed_sampler": False})

    def check_ckpt_path(self) -> None:
        """Check `--ckpt_path` before anything is built, and refuse settings that differ from the checkpoint's.

        Replaces LightningCLI's own step (medqlora.compat.CkptPathCLI), which silently overwrites the parsed model
        settings with the checkpoint's (so `--model.lr 0.1` on resume would train at the old lr while `--print_config`
        says 0.1)."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        path = config.get("ckpt_path") if config else None
        if path and path not in LIGHTNING_KEYWORDS:
            weights_only = config.get("weights_only")
            self.resumed = read_checkpoint(path, weights_only=True if weights_only is None else weights_only)
        if self.plan_only:
            asked = question(config)
            self.memory_plan = resolve(config, announce=False)
            if self.memory_plan is None:
                raise ValueError(NO_BUDGET)
            raise PlanPrinted(report(self.memory_plan, asked))
        if config is not None:  # `auto` values resolved before they are compared, saved or built
            fitting = subcommand == "fit"
            self.memory_plan = resolve(config, self.resumed if fitting else None, use_budget=fitting)
        if not self.resumed:
            return
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
        if subcommand == "fit":  # every field of every source, a default (null) list spelled out
            saved_sources = (self.resumed.get(MedicalMixDataModule.__name__) or {}).get("sources")
            if saved_sources is not None:
                given_sources = (given["data"] or {}).get("sources")
                specs = [SourceSpec(**s) for s in given_sources] if given_sources is not None else sample_sources()
                changed += source_differences(saved_sources, [asdict(spec) for spec in specs])
        if changed:
            raise ValueError(
                f"--ckpt_path {path}: " + "; ".join(changed) + ". A resumed run keeps the settings it "
                "was started with: drop these overrides, or start a new run without --ckpt_path"
            )

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The configured trainer; `predict` gets the writer of its predictions.jsonl unless the config has one."""
        trainer = super().instantiate_trainer(**kwargs)
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in trainer.callbacks):
            trainer.callbacks.append(PredictionsJSONL())
        return trainer

    def after_validate(self) -> None:
        """Say what was scored and where it went, in one line (as fit says where its adapter went)."""
        self._said_where("validation split", "val")

    def after_test(self) -> None:
        """Say which split was scored and where it went, in one line."""
        split, _ = self.datamodule.test_split()
        self._said_where(f"{'test' if split == 'test' else 'validation'} split", "test")

    def _said_where(self, split: str, prefix: str) -> None:
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(f"{prefix}/")}
        scores = ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if not k.endswith("tokens"))
        rank_zero_info(
            f"medqlora: {self.subcommand} on the {split}: {scores or 'no rows'}; logged in {self.trainer.log_dir}"
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
        if self.subcommand in ("validate", "test", "predict") and not config.get("ckpt_path"):
            rank_zero_warn(
                f"medqlora {self.subcommand} without --ckpt_path scores a freshly initialised adapter (LoRA B is "
                "zero: the base model); pass --ckpt_path runs/<name>/<version>/checkpoints/last.ckpt for a trained one"
            )
        if config.get("weights_only") is None and "weights_only" in config:
            config.weights_only = True  # medqlora's checkpoints hold tensors and plain containers only
        # ranks started by Lightning's launcher re-run this command later: they reuse rank 0's stamp
        relaunched = os.environ.get("LOCAL_RANK", "0") != "0" and "MEDQLORA_RUN_STAMP" in os.environ
        loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else [config.trainer.logger]
        unnamed = [i for i in (getattr(lg, "init_args", None) for lg in loggers) if i and "version" in i]
        unnamed = [init for init in unnamed if init.version is None]
        continued = self.subcommand == "fit" and (self.resumed or {}).get("run_version")

        def version_of(stamp: str) -> str:
            return continued or (stamp if self.subcommand == "fit" else f"{self.subcommand}-{stamp}")

        if relaunched:
            stamp = os.environ["MEDQLORA_RUN_STAMP"]
        else:
            stamp = _reserve_stamp(time.strftime("%Y%m%d-%H%M%S"), unnamed, version_of, reserve=not continued)
        os.environ["MEDQLORA_RUN_STAMP"] = stamp
        for init in unnamed:
            init.version = version_of(stamp)


class PlanPrinted(Exception):
    """`medqlora plan` is done once the config is parsed and its budget planned (nothing is built)."""


NO_BUDGET = "medqlora plan needs a budget: pass --budget N (GiB; auto on a GPU) or set model.lean.memory_budget_gib"
PLAN_USAGE = """usage: medqlora plan --config CONFIG.yaml [--config MORE.yaml] [--budget GIB] [--section.key value ...]

The micro-batch size and checkpointing policy `medqlora fit` would pick for that config within a GPU memory budget
(model.lean.memory_budget_gib; --budget N sets it in GiB, auto reads this GPU's free memory), with every candidate it
weighed: its predicted peak and speed relative to the recipe's. Only values left at auto are chosen:
data.micro_batch_size, model.lean.checkpoint_share, model.lean.offload_checkpoints, model.lean.activation_budget
(configs/budget.yaml sets all four); a config that fixes them is checked against the budget. Nothing is loaded or
trained.
"""


def run_plan(argv: list[str]) -> None:
    """`medqlora plan`: parse the config as `fit` would, plan its budget, print the candidates and the pick."""
    if any(a in ("-h", "--help") for a in argv):
        print(PLAN_USAGE, end="")
        return
    args, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg == "--budget":
            args.append(f"--model.lean.memory_budget_gib={argv[i + 1] if i + 1 < len(argv) else ''}")
            skip = True
        elif arg.startswith("--budget="):
            args.append(f"--model.lean.memory_budget_gib={arg.partition('=')[2]}")
        else:
            args.append(arg)
    planner = type("PlanCLI", (MedQLoRACLI,), {"plan_only": True})
    no_exit = {"exit_on_error": False, "fit": {"exit_on_error": False}}
    try:
        planner(QLoRAModule, MedicalMixDataModule, args=["fit", *args], parser_kwargs=no_exit)
    except PlanPrinted as printed:
        print(printed)


def _reserve_stamp(stamp: str, loggers: list, version_of, reserve: bool) -> str:
    """`stamp`, or `stamp-2`, `stamp-3`, ...: the first whose run directory no logger has yet, reserved by creating
    it (an exclusive mkdir), so two runs started in the same second never share one. `reserve=False` (a resumed
    fit continues its own directory) returns `stamp` as it is."""
    places = [Path(str(init.get("save_dir") or ".")) / str(init.get("name") or "") for init in loggers]
    if not reserve or not places:
        return stamp
    for n in itertools.count(1):
        candidate = stamp if n == 1 else f"{stamp}-{n}"
        directories = [place / version_of(candidate) for place in places]
        if any(d.exists() for d in directories):
            continue
        made = [d for d in (directories[0], *directories[0].parents) if not d.exists()]  # deepest first
        try:
            directories[0].mkdir(parents=True)
        except FileExistsError:  # another run took it between the check and the mkdir
            continue
        _RESERVED.extend(made)
        return candidate
    raise AssertionError("unreachable")


_RESERVED: list[Path] = []  # what this process made for its run directory; a run failing before it writes gives it back


def _release_unused() -> None:
    """Remove the run directory (and the folders made for it) reserved by a run that failed before writing."""
    for directory in _RESERVED:  # deepest first
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    _RESERVED.clear()


def run_training(argv: list[str]) -> MedQLoRACLI:
    """Run one training command (fit, validate, test, predict) in this process; returns the LightningCLI. Errors
    propagate as exceptions, resource errors as one line saying which knob to turn."""
    # main() hands over sys.argv without --verbose; LightningCLI would warn that both were given
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    # parse errors raise (one line in main) instead of printing the whole usage before jsonargparse's message
    no_exit = {"exit_on_error": False, **{name: {"exit_on_error": False} for name in LIGHTNING_COMMANDS}}
    _RESERVED.clear()
    try:
        return MedQLoRACLI(
            QLoRAModule, MedicalMixDataModule, args=argv, save_config_kwargs={"overwrite": True}, parser_kwargs=no_exit
        )
    except torch.OutOfMemoryError as err:
        raise SystemExit(
            f"CUDA out of memory ({str(err).splitlines()[0]}). Lower data.micro_batch_size or "
            "data.max_length, keep data.packing: true (fixed-size micro-batches), or lower "
            "model.lean.loss_chunk_size; resume from the last checkpoint with --ckpt_path."
        ) from err
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise SystemExit(
                f"cannot write {err.filename or 'an output'} ({os.strerror(err.errno)}): the configs write runs/ "
                "under the working directory; run medqlora from a folder you can write to"
            ) from err
        if err.errno != errno.ENOSPC:
            raise
        raise SystemExit(
            f"disk full while writing {err.filename or 'an output'}: free space or set "
            "trainer.default_root_dir to a larger disk; checkpoints and adapters are written "
            "atomically, so the previous copies are intact."
        ) from err
    finally:
        _release_unused()  # a run that failed before writing leaves no empty directory behind


def interrupted_by(cli: MedQLoRACLI | None) -> int | None:
    """The signal that stopped a fit early (the run saved `interrupted.ckpt` first), if any."""
    trainer = getattr(cli, "trainer", None)
    for callback in getattr(trainer, "callbacks", []):
        if isinstance(callback, CheckpointOnInterrupt) and callback.stopped_by is not None:
            return callback.stopped_by
    return None
