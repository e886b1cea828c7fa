"""Clip records shared by every dataset reader, row-level error handling, and locating clip files.

A reader turns one annotation file into a list of `ClipRecord`s with `path=None`; `locate` then
sets `path` from a pattern such as `{video}_{start:06d}.mp4` under a data root and returns one
report of the clips whose files are missing, instead of failing once per clip.
"""
from __future__ import annotations

import csv
import dataclasses
import errno
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

ON_ERROR = ("raise", "skip")


class AnnotationError(ValueError):
    """A bad annotation row or file; the message names the file and line."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


class HeadLabels(Mapping):
    """Read-only, hashable mapping head name -> class index (EPIC: {"verb": v, "noun": n})."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, int] | Iterable[tuple[str, int]] = ()):
        self._items = tuple(dict(items).items())

    def __getitem__(self, key: str) -> int:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items))

    def __repr__(self) -> str:
        return f"HeadLabels({dict(self._items)!r})"


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One annotated clip: where it comes from, its time span and its labels.

    `labels` is, per dataset's `label_type`: a sorted tuple of class indices (multi_label, AudioSet
    and manifests), one int (single_label, VGGSound), or a `HeadLabels` {"verb": i, "noun": j}
    (multi_head, EPIC). All three are hashable, so records can be set members and dict keys.
    `video` is the id of the source video (YouTube id, EPIC video_id, manifest path as written);
    `end` is `math.inf` when an annotation means "to the end of the file".
    """

    clip_id: str
    start: float
    end: float
    labels: Any
    path: str | None = None
    video: str = ""
    split: str | None = None


@dataclasses.dataclass(frozen=True)
class SkipReport:
    """Rows a reader skipped with `on_error="skip"`: (line, reason) pairs of one file."""

    path: str
    skipped: tuple[tuple[int | None, str], ...] = ()

    @property
    def count(self) -> int:
        """Number of skipped rows."""
        return len(self.skipped)

    def __str__(self) -> str:
        head = "\n".join(f"  line {line}: {reason}" for line, reason in self.skipped[:10])
        more = f"\n  ... and {self.count - 10} more" if self.count > 10 else ""
        return f"{self.path}: skipped {self.count} row(s)" + (f"\n{head}{more}" if head else "")


@dataclasses.dataclass(frozen=True)
class MissingReport:
    """Clips whose files `locate` did not find, with the path each was expected at."""

    root: str
    pattern: str
    total: int
    missing: tuple[ClipRecord, ...] = ()

    @property
    def count(self) -> int:
        """Number of missing clips."""
        return len(self.missing)

    def __str__(self) -> str:
        """One line: how many, where, and the first ten clips with their paths and why each is not a file."""
        head = "; ".join(f"{r.clip_id}: {r.path} ({why_not_a_file(r.path)})" for r in self.missing[:10])
        more = f"; ... and {self.count - 10} more" if self.count > 10 else ""
        return (f"{self.count} of {self.total} clip file(s) missing under {self.root} "
                f"(pattern {self.pattern!r})" + (f": {head}{more}" if head else ""))


def why_not_a_file(path: str | None) -> str:
    """Why a clip path is not a readable file: missing, a directory, a symlink loop, a dangling link..."""
    if not path:
        return "no path"
    if os.path.isdir(path):
        return "a directory, not a file"
    try:
        os.stat(path)
    except OSError as e:
        dangling = e.errno == errno.ENOENT and os.path.islink(path)
        return "a symlink to nothing" if dangling else (e.strerror or str(e)).lower()
    return "not a regular file"


def _not_utf8(path: str | os.PathLike, line: int, raw: bytes, error: UnicodeDecodeError) -> AnnotationError:
    column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
    return AnnotationError(path, line, f"byte {raw[error.start]:#04x} at column {column} is not UTF-8 "
                           f"(re-save the file as UTF-8)")


def utf8_lines(path: str | os.PathLike) -> Iterator[str]:
    """The lines of a UTF-8 text file (line endings kept, a byte-order mark dropped); bad bytes name the line."""
    with open(path, "rb") as f:
        for line, raw in enumerate(f, 1):
            try:
                # utf-8-sig on the first line: spreadsheet re-saves often start with a byte-order mark.
                yield raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, line, raw, e) from None


def read_utf8(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file (a byte-order mark dropped); bad bytes raise naming the file and line."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, data.count(b"\n", 0, e.start) + 1, data, e) from None


def csv_rows(path: str | os.PathLike, *, comments: bool = False,
             skipinitialspace: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Yield (line number, fields) for each non-blank row of a UTF-8 CSV file."""
    # Comment lines become blank ones, so csv's line numbers stay those of the file.
    lines = ("\n" if comments and line.startswith("#") else line for line in utf8_lines(path))
    reader = csv.reader(lines, skipinitialspace=skipinitialspace)
    try:
        for row in reader:
            if any(field.strip() for field in row):
                yield reader.line_num, [field.strip() for field in row]
    except csv.Error as e:
        raise AnnotationError(path, reader.line_num, f"malformed CSV: {e}") from e


def check_on_error(on_error: str) -> None:
    """Reject an `on_error` other than "raise" or "skip"."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


class Records(list):
    """A reader's records (a list, whatever `on_error` is) and the rows it skipped (`report`; none with "raise")."""

    def __init__(self, records: Iterable[ClipRecord], report: SkipReport):
        super().__init__(records)
        self.report = report


def parse_rows(path: str | os.PathLike, rows: Iterable[tuple[int, Any]],
               parse: Callable[[int, Any], ClipRecord], on_error: str) -> Records:
    """Parse numbered rows into records; bad rows raise, or are skipped and reported in `Records.report`."""
    check_on_error(on_error)
    records, skipped = [], []
    for line, row in rows:
        try:
            records.append(parse(line, row))
        except AnnotationError as e:
            if on_error == "raise":
                raise
            skipped.append((line, e.message))
    return Records(records, SkipReport(str(path), tuple(skipped)))


def check_columns(path: str | os.PathLike, line: int, row: Sequence[str],
                  expected: int | Sequence[int], names: str) -> None:
    """Raise unless the row has one of the expected column counts."""
    counts = (expected,) if isinstance(expected, int) else tuple(expected)
    if len(row) not in counts:
        raise AnnotationError(path, line, f"expected {' or '.join(map(str, counts))} columns "
                              f"({names}), got {len(row)}: {row!r}")


def parse_seconds(path: str | os.PathLike, line: int, field: str, value: str) -> float:
    """A finite, non-negative number of seconds, or an error naming the field."""
    try:
        seconds = float(value)
    except ValueError:
        raise AnnotationError(path, line, f"{field} {value!r} is not a number") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise AnnotationError(path, line, f"{field} {value!r} must be finite and >= 0")
    return seconds


def check_span(path: str | os.PathLike, line: int, start: float, end: float) -> None:
    """Raise when a clip ends before it starts."""
    if end < start:
        raise AnnotationError(path, line, f"end {end:g} s is before start {start:g} s")


def pattern_fields(record: ClipRecord) -> dict[str, Any]:
    """The names a `locate` pattern may use for one record."""
    start = int(record.start) if float(record.start).is_integer() else record.start
    return {
        "clip_id": record.clip_id, "video": record.video, "ytid": record.video,
        "video_id": record.video, "start": start, "end": record.end,
        "start_ms": round(record.start * 1000), "split": record.split or "",
        # EPIC stores videos under their participant: P01_11 -> P01/videos/P01_11.MP4.
        "participant": record.video.split("_", 1)[0],
    }


def resolve_path(root: str | os.PathLike, pattern: str, record: ClipRecord) -> str:
    """The file of one record under root; ValueError on a pattern that does not fit it."""
    try:
        relative = pattern.format(**pattern_fields(record))
    except (KeyError, IndexError) as e:
        raise ValueError(f"pattern {pattern!r} uses unknown field {e}; available: "
                         f"{sorted(pattern_fields(record))}") from None
    except ValueError as e:
        raise ValueError(f"pattern {pattern!r} does not fit clip {record.clip_id!r}: {e}") from None
    return os.path.normpath(os.path.join(root, relative))


def escapes(root: str | os.PathLike, path: str) -> bool:
    """True when a (normalised) path lies outside root."""
    # Lexical, not resolve(): a data root whose folders are symlinks to other disks stays valid.
    root = os.path.normpath(os.path.abspath(root))
    return os.path.commonpath([root, os.path.abspath(path)]) != root


def locate(records: Iterable[ClipRecord], root: str | os.PathLike, pattern: str
           ) -> tuple[list[ClipRecord], MissingReport]:
    """Set each record's `path` from `pattern` under `root`; return found records and a missing report.

    `pattern` is a `str.format` template over `clip_id`, `video` (alias `ytid`, `video_id`),
    `start` (int when whole seconds), `start_ms`, `end`, `split` and `participant` (the part of
    `video` before its first `_`), e.g. `{ytid}_{start:06d}.mp4` or `{participant}/videos/{video}.MP4`.
    A path outside `root` (through `..` or an absolute path) is a ValueError listing every such clip.
    """
    records = list(records)
    placed = [dataclasses.replace(r, path=resolve_path(root, pattern, r)) for r in records]
    outside = [r for r in placed if escapes(root, r.path)]
    if outside:
        listed = "; ".join(f"{r.clip_id}: {r.path}" for r in outside[:10])
        raise ValueError(f"{len(outside)} clip path(s) from pattern {pattern!r} escape the data "
                         f"root {root}: {listed}")
    found = [r for r in placed if os.path.isfile(r.path)]
    missing = tuple(r for r in placed if not os.path.isfile(r.path))
    return found, MissingReport(str(Path(root)), pattern, len(records), missing)
