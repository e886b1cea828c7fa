"""Checkpoint integrity: SHA-256 of every file of a checkpoint, written at save time and checked before restoring.

Orbax reads a truncated array file back with a TensorStore error, and a file with flipped bytes without
one. So each checkpoint step directory holds `checksums.json` (size and SHA-256 of each of its files), and
`restore_intact` takes the newest step whose files match it and that restores. The files are checked
before orbax reads them, so a damaged one never reaches TensorStore. A damaged newer step is moved aside
to `<directory>.broken/<step>` (kept for inspection; training then writes that step anew) with a warning
naming it; when no step is intact, one `CheckpointError` names the directory and what was wrong with each
step. A step without the file (written before checksums existed, or killed between the save and the
file) is restored unverified, with a warning.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

CHECKSUMS = "checksums.json"
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """No checkpoint of a directory can be restored intact; the message names the directory and each step."""


def _files(step_dir: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "sha256"}} of every file of a step directory but the checksums themselves."""
    out = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        name = path.relative_to(step_dir).as_posix()
        if name in (CHECKSUMS, f".{CHECKSUMS}.tmp"):
            continue
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        out[name] = {"size": path.stat().st_size, "sha256": h.hexdigest()}
    return out


def write_checksums(step_dir: str | os.PathLike) -> None:
    """Write `checksums.json` of a just-saved checkpoint step into its directory (atomically)."""
    step_dir = Path(step_dir)
    tmp = step_dir / f".{CHECKSUMS}.tmp"
    tmp.write_text(json.dumps(_files(step_dir), indent=1))
    os.replace(tmp, step_dir / CHECKSUMS)


def damage(step_dir: str | os.PathLike) -> str | None:
    """What is wrong with a step's files against its checksums, or None when they match (or it has none)."""
    step_dir = Path(step_dir)
    try:
        expected = json.loads((step_dir / CHECKSUMS).read_text())
    except FileNotFoundError:
        warnings.warn(f"checkpoint {step_dir} has no {CHECKSUMS}: restored unverified", stacklevel=3)
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"unreadable {CHECKSUMS} ({e})"
    got = _files(step_dir)
    problems = []
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            problems.append(f"{name} is missing")
        elif have["size"] != want["size"]:
            problems.append(f"{name} has {have['size']} of {want['size']} bytes")
        elif have["sha256"] != want["sha256"]:
            problems.append(f"{name} differs from its SHA-256 at save time")
    if problems:
        return "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return None


def _reason(error: Exception) -> str:
    """The first line of an error, without the TensorStore spec dump that may follow it."""
    lines = str(error).strip().splitlines()
    first = (lines[0] if lines else "").split(" See full TensorStore details")[0]
    return f"{type(error).__name__}: {first}"[:240]


def restore_intact(directory: str | os.PathLike, steps: Sequence[int], load: Callable[[int], Any]
                   ) -> tuple[int, Any] | None:
    """(step, load(step)) of the newest of `steps` whose files match their checksums and that loads; None without steps.

    Damaged newer steps are moved aside with a warning; CheckpointError when none is intact.
    """
    directory = Path(directory)
    broken = []
    for step in sorted(steps, reverse=True):
        why = damage(directory / str(step))
        if why is None:
            try:
                restored = load(step)
            except Exception as e:  # orbax and TensorStore raise many types for a file they cannot read
                why = _reason(e)
        if why is None:
            for bad, reason in broken:
                aside = _move_aside(directory, bad)
                warnings.warn(f"checkpoint {directory / str(bad)} is broken ({reason}); moved to {aside}, "
                              f"resuming from step {step}", stacklevel=2)
            return step, restored
        broken.append((step, why))
    if broken:
        raise CheckpointError(f"{directory}: no intact checkpoint; "
                              + "; ".join(f"step {s}: {why}" for s, why in broken))
    return None


def _move_aside(directory: Path, step: int) -> Path:
    """Move a broken step out of the manager's directory (orbax would refuse to save that step again)."""
    target = directory.parent / f"{directory.name}.broken" / str(step)
    n = 1
    while target.exists():
        target, n = target.with_name(f"{step}.{n}"), n + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(directory / str(step)), str(target))
    return target
