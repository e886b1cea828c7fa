"""AudioSet (Gemmeke et al., ICASSP 2017) segment lists: 10 s YouTube clips with 527 multi-labels.

Reads `class_labels_indices.csv` (index,mid,display_name) and the segment CSVs
(`balanced_train_segments.csv`, `eval_segments.csv`, `unbalanced_train_segments.csv`), both in
the official form (three `#` comment lines, `, ` separators) and re-saved with a plain header.
A record's `clip_id` is `f"{ytid}_{start_ms}"` (start in whole milliseconds), its `video` the
YouTube id and its `labels` the sorted tuple of class indices.
"""
from __future__ import annotations

import os

from mbt_core.datasets.records import (AnnotationError, ClipRecord, check_columns, check_span,
                                       csv_rows, parse_rows, parse_seconds)
from mbt_core.datasets.splits import checked

SEGMENT_COLUMNS = "YTID, start_seconds, end_seconds, positive_labels"


def read_audioset_classes(class_labels_csv: str | os.PathLike) -> list[tuple[str, str]]:
    """The (mid, display_name) pairs of `class_labels_indices.csv`, in index order."""
    classes = []
    for line, row in csv_rows(class_labels_csv):
        check_columns(class_labels_csv, line, row, 3, "index, mid, display_name")
        if row[0] == "index":
            continue
        if row[0] != str(len(classes)):
            raise AnnotationError(class_labels_csv, line,
                                  f"index {row[0]!r} out of order, expected {len(classes)}")
        classes.append((row[1], row[2]))
    mids = [mid for mid, _ in classes]
    if len(set(mids)) != len(mids):
        raise AnnotationError(class_labels_csv, None, "a class id (mid) is listed twice")
    return classes


def read_audioset(segments_csv: str | os.PathLike, class_labels_csv: str | os.PathLike, *,
                  on_error: str = "raise", split: str | None = None):
    """AudioSet segments as multi-label `ClipRecord`s; rows skipped with on_error="skip" in `.report`."""
    index = {mid: i for i, (mid, _) in enumerate(read_audioset_classes(class_labels_csv))}

    def parse(line: int, row: list[str]) -> ClipRecord:
        check_columns(segments_csv, line, row, 4, SEGMENT_COLUMNS)
        ytid = row[0]
        start = parse_seconds(segments_csv, line, "start_seconds", row[1])
        end = parse_seconds(segments_csv, line, "end_seconds", row[2])
        check_span(segments_csv, line, start, end)
        mids = [mid.strip() for mid in row[3].split(",") if mid.strip()]
        if not mids:
            raise AnnotationError(segments_csv, line, f"clip {ytid} has no labels")
        unknown = [mid for mid in mids if mid not in index]
        if unknown:
            raise AnnotationError(segments_csv, line, f"unknown label id(s) {', '.join(unknown)} "
                                  f"(not in {os.fspath(class_labels_csv)})")
        labels = tuple(sorted({index[mid] for mid in mids}))
        return ClipRecord(f"{ytid}_{round(start * 1000)}", start, end, labels, video=ytid,
                          split=split)

    # The re-saved form's header row is the official form's last comment line without its `#`.
    rows = ((line, row) for line, row in csv_rows(segments_csv, comments=True, skipinitialspace=True)
            if row[0] != "YTID")
    return checked(parse_rows(segments_csv, rows, parse, on_error))
