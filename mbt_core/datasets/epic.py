"""EPIC-KITCHENS-100 (Damen et al., 2020) action segments: a verb (97) and a noun (300) head.

Reads `EPIC_100_train.csv` / `EPIC_100_validation.csv` by column name, the class lists
`EPIC_100_{verb,noun}_classes.csv` (id,key,instances,category) and `EPIC_100_video_info.csv`
(video_id,duration,fps,resolution). A record's `clip_id` is the narration_id, `video` the
video_id, start/end the `HH:MM:SS.ff` start/stop timestamps in seconds, and `labels` a hashable
`HeadLabels` {"verb": verb_class, "noun": noun_class}.
"""
from __future__ import annotations

import dataclasses
import math
import os

from mbt_core.datasets.records import (AnnotationError, ClipRecord, HeadLabels, check_columns,
                                       check_span, csv_rows, parse_rows)
from mbt_core.datasets.splits import checked

COLUMNS = ("narration_id", "video_id", "start_timestamp", "stop_timestamp", "verb_class",
           "noun_class")


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """Duration (s), frame rate and (width, height) of one EPIC video."""

    duration: float
    fps: float
    resolution: tuple[int, int]


def read_epic_classes(classes_csv: str | os.PathLike) -> list[str]:
    """The class keys of `EPIC_100_verb_classes.csv` or `EPIC_100_noun_classes.csv`, in id order."""
    keys = []
    for line, row in csv_rows(classes_csv):
        check_columns(classes_csv, line, row, 4, "id, key, instances, category")
        if row[0] == "id":
            continue
        if row[0] != str(len(keys)):
            raise AnnotationError(classes_csv, line, f"id {row[0]!r} out of order, "
                                  f"expected {len(keys)}")
        keys.append(row[1])
    return keys


def parse_timestamp(path: str | os.PathLike, line: int, field: str, value: str) -> float:
    """Seconds of an `HH:MM:SS.ff` timestamp, or an error naming the field."""
    parts = value.split(":")
    try:
        hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
        if (len(parts) != 3 or not math.isfinite(seconds) or min(hours, minutes, seconds) < 0
                or minutes > 59 or seconds >= 60):
            raise ValueError
    except (ValueError, IndexError):
        raise AnnotationError(path, line, f"{field} {value!r} is not HH:MM:SS.ff") from None
    return hours * 3600 + minutes * 60 + seconds


def class_index(path: str | os.PathLike, line: int, field: str, value: str, count: int) -> int:
    """A class id in [0, count), or an error naming the field."""
    if not (value.isascii() and value.isdigit()) or int(value) >= count:
        raise AnnotationError(path, line, f"{field} {value!r} is not a class id in [0, {count})")
    return int(value)


def read_epic(annotations_csv: str | os.PathLike, verb_classes_csv: str | os.PathLike,
              noun_classes_csv: str | os.PathLike, *, split: str | None = None,
              on_error: str = "raise"):
    """EPIC-100 action segments as two-head `ClipRecord`s; rows skipped with on_error="skip" in `.report`."""
    verbs, nouns = len(read_epic_classes(verb_classes_csv)), len(read_epic_classes(noun_classes_csv))
    rows = csv_rows(annotations_csv)
    _, header = next(rows, (1, []))
    missing = [name for name in COLUMNS if name not in header]
    if missing:
        raise AnnotationError(annotations_csv, 1, f"header lacks column(s) {', '.join(missing)}")
    column = {name: header.index(name) for name in COLUMNS}

    def parse(line: int, row: list[str]) -> ClipRecord:
        check_columns(annotations_csv, line, row, len(header), ", ".join(header))
        field = {name: row[i] for name, i in column.items()}
        start = parse_timestamp(annotations_csv, line, "start_timestamp", field["start_timestamp"])
        end = parse_timestamp(annotations_csv, line, "stop_timestamp", field["stop_timestamp"])
        check_span(annotations_csv, line, start, end)
        labels = HeadLabels({
            "verb": class_index(annotations_csv, line, "verb_class", field["verb_class"], verbs),
            "noun": class_index(annotations_csv, line, "noun_class", field["noun_class"], nouns)})
        return ClipRecord(field["narration_id"], start, end, labels, video=field["video_id"],
                          split=split)

    return checked(parse_rows(annotations_csv, rows, parse, on_error))


def read_epic_video_info(video_info_csv: str | os.PathLike) -> dict[str, VideoInfo]:
    """`EPIC_100_video_info.csv` as video_id -> VideoInfo (duration, fps, resolution)."""
    info = {}
    for line, row in csv_rows(video_info_csv):
        check_columns(video_info_csv, line, row, 4, "video_id, duration, fps, resolution")
        if row[0] == "video_id":
            continue
        try:
            width, height = (int(v) for v in row[3].lower().split("x"))
            info[row[0]] = VideoInfo(float(row[1]), float(row[2]), (width, height))
        except ValueError:
            raise AnnotationError(video_info_csv, line, f"bad duration, fps or WxH resolution "
                                  f"in {row!r}") from None
    return info
