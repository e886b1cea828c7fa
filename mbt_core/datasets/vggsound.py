"""VGGSound (Chen et al., ICASSP 2020): 10 s YouTube clips, one of 309 sound classes each.

Reads the official `vggsound.csv` (no header: `ytid,start,label,split`; labels with commas are
quoted) and the `<ytid>_<start:06d>.mp4,<label>` lists. Class indices follow the sorted class
list of the VGGSound data card (the sorted names of the dataset's `stat.csv`), never the classes
present in one file, so that train and test agree. A record's `clip_id` is `f"{ytid}_{start:06d}"`
(the official file name without `.mp4`), `video` the YouTube id, `labels` one int, `split` the
file's split column (or the `split` argument for the two-column form).
"""
from __future__ import annotations

import os
from typing import Sequence

from mbt_core.datasets.cards import read_card
from mbt_core.datasets.records import (AnnotationError, ClipRecord, check_columns, csv_rows,
                                       parse_rows, parse_seconds)
from mbt_core.datasets.splits import checked

CLIP_SECONDS = 10.0


def vggsound_classes(stat_csv: str | os.PathLike) -> list[str]:
    """The sorted class names of VGGSound's `stat.csv` (label,count,category; no header)."""
    names = []
    for line, row in csv_rows(stat_csv):
        check_columns(stat_csv, line, row, 3, "label, count, category")
        names.append(row[0])
    if len(set(names)) != len(names):
        raise AnnotationError(stat_csv, None, "a class name is listed twice")
    return sorted(names)


def parse_clip_name(path: str | os.PathLike, line: int, name: str) -> tuple[str, float]:
    """(ytid, start) of a `<ytid>_<start:06d>.mp4` name; YouTube ids may hold `_` themselves."""
    stem, _, start = os.path.splitext(name)[0].rpartition("_")
    if not stem or not start.isdigit():
        raise AnnotationError(path, line, f"{name!r} is not of the form <ytid>_<start:06d>.mp4")
    return stem, float(start)


def read_vggsound(csv: str | os.PathLike, classes: Sequence[str] | None = None, *,
                  split: str | None = None, on_error: str = "raise"):
    """VGGSound clips as single-label `ClipRecord`s; rows skipped with on_error="skip" in `.report`."""
    classes = list(read_card("vggsound")["classes"] if classes is None else classes)
    index = {name: i for i, name in enumerate(classes)}

    def parse(line: int, row: list[str]) -> ClipRecord:
        check_columns(csv, line, row, (4, 2), "ytid, start, label, split  or  file, label")
        if len(row) == 4:
            ytid, label, row_split = row[0], row[2], row[3]
            start = parse_seconds(csv, line, "start", row[1])
            if not start.is_integer():
                raise AnnotationError(csv, line, f"start {row[1]!r} is not whole seconds")
        else:
            (ytid, start), label, row_split = parse_clip_name(csv, line, row[0]), row[1], split
        if label not in index:
            raise AnnotationError(csv, line, f"unknown class {label!r} (not among the "
                                  f"{len(classes)} VGGSound classes)")
        return ClipRecord(f"{ytid}_{int(start):06d}", start, start + CLIP_SECONDS, index[label],
                          video=ytid, split=row_split)

    headers = ("YTID", "ytid", "file")  # a re-saved copy may carry a header row
    rows = ((line, row) for line, row in csv_rows(csv, comments=True) if row[0] not in headers)
    return checked(parse_rows(csv, rows, parse, on_error))
