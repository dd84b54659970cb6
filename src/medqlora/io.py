"""Atomic outputs: every file or directory medqlora writes appears whole or not at all.

Write to a temporary sibling, then rename over the target (`os.replace` is atomic on one filesystem), so a
kill or a full disk mid-write leaves the previous good copy in place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: Python has no getter before 3.13)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: Path) -> None:
    """Give `path` (and, for a directory, everything in it) the modes a plain `open`/`mkdir` would have:
    `tempfile` creates files 0600 and directories 0700, so a shared group could not read our outputs."""
    mask = _umask()
    for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
        item.chmod((0o777 if item.is_dir() else 0o666) & ~mask)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (with the user's umask, like any other tool's output)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(directory: Path) -> Iterator[Path]:
    """Yield a staging directory beside `directory`; on success it replaces `directory` whole, on any error
    (disk full, kill) it is removed and the previous `directory` is untouched.

    Callers decide whether `directory` may be replaced: this only makes the replacement atomic."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    apply_umask(staging)
    old = directory.with_name(f".{directory.name}.old")
    if directory.exists():
        directory.rename(old)
    staging.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed into place.

    Use it as `trainer.plugins: [{class_path: medqlora.io.AtomicCheckpointIO}]`.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        """Save to `.<name>.tmp` beside `path`, fsync, then rename over `path`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
