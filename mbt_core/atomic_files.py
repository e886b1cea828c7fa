"""Files written whole or not at all: a temporary name beside the file, renamed over it when complete.

A full disk, a crash or Ctrl-C in the middle of a write leaves the old file (or none) and no partial one:
the temporary file is removed when the block raises, and a reader never sees half a file.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


def part_path(path: str | os.PathLike) -> Path:
    """The temporary name `path` is written under: hidden, with the same suffix (writers infer formats from it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.part{path.suffix}")


@contextlib.contextmanager
def replaced(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write; it replaces `path` when the block ends, and is removed if the block raises."""
    part = part_path(path)
    try:
        yield part
        os.replace(part, path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    with replaced(path) as part:
        part.write_text(text, encoding="utf-8")
    return Path(path)
