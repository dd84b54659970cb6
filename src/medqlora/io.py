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


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` (same suffix, so writers that go by it still can) to write; on success
    it is renamed over `path` with the user's umask, on any error removed, leaving the previous `path` in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (with the user's umask, like any other tool's output)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def atomic_directory(directory: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a staging directory beside `directory`; on success it takes `directory`'s place whole, on any error
    (disk full, kill) it is removed and the previous `directory` is untouched.

    replace: an existing `directory` is swapped out for the new one; False keeps whichever writer finished first
        (a cache several processes may build at once). Callers decide whether `directory` may be replaced at all."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    apply_umask(staging)
    if not replace:
        try:
            staging.rename(directory)
        except OSError:  # another writer finished first: keep theirs
            shutil.rmtree(staging, ignore_errors=True)
        return
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
        """Save to a temporary sibling of `path`, fsync, then rename over `path` (`atomic_path`)."""
        with atomic_path(Path(path)) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
