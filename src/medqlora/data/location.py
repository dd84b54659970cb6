"""Where rows live (a hub dataset or a local file) and how they are read: one code path, `datasets.load_dataset`.

`Location` is shared by training sources, decontamination sets and benchmarks. A local `path` wins over a
`hub_id` (so a YAML layered over the recipe needs only `path:`); a file that cannot be read is diagnosed in one
line naming the file, the line where it can be known, and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass(kw_only=True)
class Location:
    """Where a set of rows lives.

    Args:
        hub_id: dataset id on the Hugging Face hub.
        path: a local .json/.jsonl/.parquet/.csv file (or a directory of them) with the same columns; given
            together with `hub_id` (e.g. a YAML layered over the recipe), the local file wins.
        config: hub configuration name (ignored for local files).
        split: hub split to read (ignored for local files).
    """

    hub_id: str | None = None
    path: str | None = None
    config: str | None = None
    split: str = "train"
    label: ClassVar[str] = "rows"  # what errors call it: "source", "eval set", "benchmark"

    def __post_init__(self) -> None:
        what = f"{self.label} {getattr(self, 'name', '')!r}"
        if not (self.hub_id or self.path):
            raise ValueError(f"{what}: give hub_id (a hub dataset) or path (a local file)")
        if self.path:
            self.hub_id, self.config = None, None  # the local file replaces the hub dataset
            resolved = Path(self.path).expanduser().resolve()
            if not resolved.exists():
                raise FileNotFoundError(
                    f"{what}: path={self.path!r} does not exist (resolved to {resolved}); fix the path or use hub_id"
                )
            suffix = (
                resolved.suffix
                if resolved.is_file()
                else next((p.suffix for p in sorted(resolved.iterdir()) if p.suffix in LOCAL_BUILDERS), "")
            )
            if suffix not in LOCAL_BUILDERS:
                raise ValueError(
                    f"{what}: path={self.path!r} is not one of {sorted(LOCAL_BUILDERS)}; convert it "
                    "or point hub_id at it"
                )
            self.path = str(resolved)

    @property
    def location(self) -> str:
        """Human-readable origin (hub id with config/split, or the file path)."""
        return self.path or f"{self.hub_id}:{self.config or 'default'}/{self.split}"


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in LOCAL_BUILDERS)


def diagnose_file(path: Path) -> str | None:
    """What is wrong with a local file that `datasets` could not read, with the line where known (None: no idea)."""
    raw = path.read_bytes()
    if not raw.strip():
        return f"{path} is empty; it needs a header or at least one row"
    if path.suffix == ".parquet":
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return (
            f"{path} line {line}: byte 0x{raw[err.start]:02x} is not UTF-8; re-save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        )
    if path.suffix == ".csv":
        header = text.splitlines()[0]
        if "," not in header and ";" in header:
            return f"{path} is separated by ';', not ','; save it comma-separated (CSV) or as JSON lines"
        return None
    if text.lstrip().startswith("["):  # one JSON document (a list of rows)
        try:
            json.loads(text)
        except json.JSONDecodeError as err:
            return f"{path} line {err.lineno}: not valid JSON ({err.msg}); fix that line"
        return None
    for number, line in enumerate(text.splitlines(), 1):  # JSON lines
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as err:
                return f"{path} line {number}: not valid JSON ({err.msg}); fix or remove that line"
    return None


def load_rows(where: Location, name: str):
    """The rows at `where` as a `datasets.Dataset`; a failure is one line naming `name`, the file or hub id, and
    the fix (the hub-login hint only when the hub was asked)."""
    from datasets import load_dataset

    try:
        if where.path:
            path = Path(where.path)
            files = _files(path)
            builder = LOCAL_BUILDERS[files[0].suffix] if files else "json"
            return load_dataset(builder, data_files=where.path, split="train")
        return load_dataset(where.hub_id, where.config, split=where.split)
    except Exception as err:  # the library's own errors are long or misleading; say which file and how to fix it
        if where.path:
            for file in _files(Path(where.path)):
                problem = diagnose_file(file)
                if problem:
                    raise ValueError(f"{name}: {problem}") from err
            raise ValueError(
                f"{name}: could not read {where.path} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); check the file's format"
            ) from err
        raise ValueError(
            f"{name}: could not read {where.hub_id!r} (config {where.config!r}, split {where.split!r}; "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the id, "
            "or log in (huggingface-cli login) and set HF_HUB_OFFLINE=0 if the dataset is gated"
        ) from err


def column(rows, name: str) -> list:
    """A whole column of a `datasets.Dataset` as a list, read in one Arrow call. `rows[name]` is a lazy `Column` from
    datasets 4 on, which a Python loop reads one formatted row at a time (seconds on the mix's 87k rows)."""
    return rows.with_format("arrow")[name].to_pylist()
