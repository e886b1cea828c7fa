"""Checks on the clips a reader returns: no empty result, no clip twice in a split, no clip in two splits.

A clip listed twice in one split with the same span and labels (a row pasted twice) is dropped with a
warning naming it and the count; listed twice with different spans or labels it is an error. A clip in
two splits leaks training clips into the test score: an error naming the clip and the splits. A clip is
its `clip_id`, or its source video and span (two ids for the same segment are the same clip).
"""
from __future__ import annotations

import collections
import os
import warnings
from typing import Iterable, Sequence

from mbt_core.datasets.records import AnnotationError, ClipRecord, Records

LISTED = 5  # clips named in a message


def _listed(items: Sequence[str]) -> str:
    return ", ".join(items[:LISTED]) + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


def drop_duplicates(path: str | os.PathLike, records: Iterable[ClipRecord]) -> list[ClipRecord]:
    """Records without exact repeats within a split (warned, with counts); differing repeats raise."""
    kept, seen, repeats = [], {}, collections.Counter()
    for record in records:
        key = (record.split, record.clip_id)
        if key not in seen:
            seen[key] = record
            kept.append(record)
        elif seen[key] == record:
            repeats[key] += 1
        else:
            raise AnnotationError(path, None, f"clip {record.clip_id!r} is listed twice in split "
                                  f"{record.split or '(none)'!r} with different spans or labels")
    if repeats:
        names = [f"{clip!r} x{n + 1}" for (_, clip), n in repeats.items()]
        warnings.warn(f"{path}: dropped {sum(repeats.values())} duplicate row(s) of {len(repeats)} clip(s): "
                      f"{_listed(names)}", stacklevel=3)
    return kept


def check_disjoint(path: str | os.PathLike, records: Iterable[ClipRecord]) -> None:
    """Raise when a clip (by id, or by video and span) belongs to more than one split."""
    by_id, by_span = collections.defaultdict(set), collections.defaultdict(set)
    for r in records:
        by_id[r.clip_id].add(str(r.split))
        by_span[(r.video, r.start, r.end)].add((str(r.split), r.clip_id))
    shared = {clip: splits for clip, splits in by_id.items() if len(splits) > 1}
    for (video, start, end), members in by_span.items():
        ids = sorted({clip for _, clip in members})
        if len({split for split, _ in members}) > 1 and not set(ids) <= shared.keys():
            shared[f"{' = '.join(ids)} (one segment of {video})"] = {split for split, _ in members}
    if shared:
        names = [f"{clip!r} in {' and '.join(sorted(splits))}" for clip, splits in shared.items()]
        raise AnnotationError(path, None, f"{len(shared)} clip(s) in more than one split (training clips "
                              f"would leak into the test score): {_listed(names)}")


def checked_records(path: str | os.PathLike, records: list[ClipRecord], skipped: int = 0) -> list[ClipRecord]:
    """A reader's records, checked: at least one, exact repeats dropped, no clip in two splits."""
    if not records:
        why = f" ({skipped} bad row(s) skipped)" if skipped else ""
        raise AnnotationError(path, None, f"no clips: the file has no annotation rows{why}")
    records = drop_duplicates(path, records)
    check_disjoint(path, records)
    return records


def checked(records: Records) -> Records:
    """A reader's records, checked (`checked_records`), with their skip report."""
    return Records(checked_records(records.report.path, records, records.report.count), records.report)
