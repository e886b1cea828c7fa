"""A generic manifest for users' own clips: CSV with a header row, or JSON Lines.

One row (CSV) or one JSON object per line (`.jsonl`, `.ndjson`) per clip, with fields:

- `path` (required): the clip's file, relative to the data root later given to `locate`
  (use `locate(records, root, MANIFEST_PATTERN)`); kept as the record's `video`.
- `start`, `end` (optional): seconds within the file; default 0 and `math.inf` (to the end).
- `labels` (optional): class names separated by `;` or `|` (`dog;bark`), or a JSON list
  (`["dog", "bark"]`; in JSON Lines a list or a string); empty or absent: an unlabelled clip.
- multi-head data (a `classes` mapping head -> names, e.g. EPIC's verb and noun): one column per head
  (`verb`, `noun`) holding that head's class name, instead of `labels`; a row gives every head or none.
- `split` (optional): e.g. `train`, `test`. `clip_id` (optional): defaults to `path`, plus
  `@start-end` when the row gives a start or an end, so that clips cut from one file stay distinct.

A file without clip rows, or a clip listed twice in a split with another span or labels, or in two
splits, is an error; a row repeated exactly is dropped with a warning (`splits.checked_records`).
Other fields are ignored. Labels become the sorted tuple of class indices (`multi_label`;
single-label data gives 1-tuples), multi-head labels a `HeadLabels` {head: index}. The class list is `classes` when given (an unknown name is an
error), else the sorted names found in the file, so pass the training list when reading a test set.

`write_manifest` writes any reader's records (AudioSet, VGGSound, EPIC) as such a file, so that a data
directory for them is a manifest and a data card like any other.

Example CSV:

    path,start,end,labels,split
    kitchen/0001.mp4,0,10,dog;bark,train
    kitchen/0002.mp4,,,"[""speech""]",test
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from mbt_core.atomic_files import write_text
from mbt_core.datasets.records import (AnnotationError, ClipRecord, HeadLabels, Records, check_on_error, check_span,
                                       csv_rows, parse_rows, parse_seconds, pattern_fields, utf8_lines)
from mbt_core.datasets.splits import checked

MANIFEST_PATTERN = "{video}"
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def manifest_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, fields) of a CSV (with header) or JSON Lines manifest."""
    # A row that cannot be read yields {None: reason} (like csv.DictReader's rest key), so that
    # `parse` raises or skips it with the other bad rows.
    if Path(path).suffix.lower() in JSONL_SUFFIXES:
        for line, text in enumerate(utf8_lines(path), 1):
            if text.strip():
                try:
                    row = json.loads(text)
                except json.JSONDecodeError as e:
                    row = {None: f"invalid JSON: {e}"}
                yield line, row if isinstance(row, dict) else {None: "not a JSON object"}
        return
    rows = csv_rows(path)
    _, header = next(rows, (1, []))
    if "path" not in header:
        raise AnnotationError(path, 1, f"the header {header!r} has no `path` column")
    for line, row in rows:
        yield line, (dict(zip(header, row)) if len(row) == len(header) else {
            None: f"expected {len(header)} columns ({', '.join(header)}), got {len(row)}: {row!r}"})


def label_names(path: str | os.PathLike, line: int, value: Any) -> tuple[str, ...]:
    """The class names of one `labels` field: a list, a JSON list, or `;`/`|`-separated names."""
    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise AnnotationError(path, line, f"labels {value!r} is not a JSON list: {e}") from None
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(name.strip() for name in re.split(r"[;|]", value) if name.strip())
    if isinstance(value, list) and all(isinstance(name, str) for name in value):
        return tuple(name.strip() for name in value if name.strip())
    raise AnnotationError(path, line, f"labels {value!r} must be names or a list of names")


def read_manifest(path: str | os.PathLike, classes: Sequence[str] | Mapping[str, Sequence[str]] | None = None, *,
                  on_error: str = "raise"):
    """A manifest's clips and class list: (records, classes); rows skipped with on_error="skip" in `records.report`.

    `classes` as a mapping head -> names reads multi-head labels from one column per head.
    """
    check_on_error(on_error)
    heads = {h: {name: i for i, name in enumerate(names)} for h, names in classes.items()} \
        if isinstance(classes, Mapping) else None
    known = None if classes is None or heads else {name: i for i, name in enumerate(classes)}

    def text(row: dict[str, Any], field: str) -> str:
        # JSON gives numbers (a start of 0 is given, not absent); CSV gives "" for absent.
        return "" if row.get(field) is None else str(row[field]).strip()

    def seconds(line: int, row: dict[str, Any], field: str, default: float) -> float:
        return parse_seconds(path, line, field, text(row, field)) if text(row, field) else default

    def head_labels(line: int, row: dict[str, Any]) -> HeadLabels:
        given = {h: text(row, h) for h in heads if text(row, h)}
        if given and len(given) < len(heads):
            raise AnnotationError(path, line, f"gives {', '.join(given)} but not "
                                  f"{', '.join(h for h in heads if h not in given)} (every head or none)")
        for h, name in given.items():
            if name not in heads[h]:
                raise AnnotationError(path, line, f"unknown {h} {name!r} (not among the {len(heads[h])} {h} classes)")
        return HeadLabels({h: heads[h][name] for h, name in given.items()})

    def parse(line: int, row: dict[str, Any]) -> ClipRecord:
        if None in row:
            raise AnnotationError(path, line, row[None])
        video = text(row, "path")
        if not video:
            raise AnnotationError(path, line, "empty `path`")
        start, end = seconds(line, row, "start", 0.0), seconds(line, row, "end", math.inf)
        check_span(path, line, start, end)
        names = head_labels(line, row) if heads else label_names(path, line, row.get("labels"))
        unknown = [name for name in names if known is not None and name not in known]
        if unknown:
            raise AnnotationError(path, line, f"unknown class(es) {unknown} (not among the "
                                  f"{len(known)} classes given)")
        cut = text(row, "start") or text(row, "end")
        clip_id = text(row, "clip_id") or (f"{video}@{start:g}-{end:g}" if cut else video)
        split = text(row, "split") or None
        return ClipRecord(clip_id, start, end, names, video=video, split=split)

    records = checked(parse_rows(path, manifest_rows(path), parse, on_error))
    if heads:
        return records, {h: list(names) for h, names in classes.items()}
    if classes is None:
        classes = sorted({name for record in records for name in record.labels})
    index = {name: i for i, name in enumerate(classes)}
    indexed = [dataclasses.replace(r, labels=tuple(sorted({index[n] for n in r.labels}))) for r in records]
    return Records(indexed, records.report), list(classes)


def write_manifest(path: str | os.PathLike, records: Iterable[ClipRecord],
                   classes: Sequence[str] | Mapping[str, Sequence[str]], pattern: str = MANIFEST_PATTERN) -> Path:
    """Write records of any reader as a manifest CSV that `read_manifest` reads back (written whole or not at all).

    Each clip's `path` is `pattern` over its fields (as `records.locate`, e.g. `{participant}/videos/{video}.MP4`
    for EPIC), relative to the data directory; labels are written as names: a JSON list, or one column per head.
    """
    heads = {h: list(names) for h, names in classes.items()} if isinstance(classes, Mapping) else None
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["clip_id", "path", "start", "end", *(heads or ["labels"]), "split"])
    for r in records:
        if heads:
            labels = [heads[h][r.labels[h]] if h in r.labels else "" for h in heads]
        else:
            ids = r.labels if isinstance(r.labels, tuple) else (r.labels,)
            labels = [json.dumps([classes[i] for i in ids])]
        end = "" if math.isinf(r.end) else repr(float(r.end))
        writer.writerow([r.clip_id, pattern.format(**pattern_fields(r)), repr(float(r.start)), end, *labels,
                         r.split or ""])
    return write_text(Path(path), out.getvalue())
