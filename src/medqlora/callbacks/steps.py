"""What every callback asks of the loop: did an optimizer step just finish, and where does this run write?"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from medqlora.compat import optimizer_step_done

__all__ = ["optimizer_step_done", "run_dir"]


def run_dir(trainer: L.Trainer) -> Path:
    """The run's directory: the first logger's `log_dir`, else `default_root_dir`.

    A collective under DDP/FSDP (Lightning broadcasts rank 0's answer): call it on every rank."""
    return Path(trainer.log_dir or trainer.default_root_dir)
