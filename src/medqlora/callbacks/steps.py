"""What every callback asks of the loop: did an optimizer step just finish, and where does this run write?"""

from __future__ import annotations

from pathlib import Path

import lightning as L


def optimizer_step_done(trainer: L.Trainer) -> bool:
    """In `on_train_batch_end`: did this micro-batch finish an optimizer step?

    Counts an epoch's last, partial accumulation window, which `(batch_idx + 1) % accumulate` misses.
    Lightning 2.6 has no public form of this test, so its loop's own is used."""
    return not trainer.fit_loop._should_accumulate()


def run_dir(trainer: L.Trainer) -> Path:
    """The run's directory: the first logger's `log_dir`, else `default_root_dir`.

    A collective under DDP/FSDP (Lightning broadcasts rank 0's answer): call it on every rank."""
    return Path(trainer.log_dir or trainer.default_root_dir)
