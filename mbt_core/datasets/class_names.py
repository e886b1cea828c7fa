"""Class names for a model's output columns, from a class-list file or a data card.

`read_class_names` recognises the official class lists by their shape: AudioSet's `class_labels_indices.csv`
(index,mid,display_name), VGGSound's `stat.csv` (label,count,category; no header; classes in sorted order, as
the VGGSound card), EPIC-KITCHENS-100's `EPIC_100_{verb,noun}_classes.csv` (id,key,instances,category), and a
plain list (`.txt`, or a one-column CSV): one name a line. `head_names` gives every head of a model its names,
from such files or from a card, checking each count against the model's.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

from mbt_core.datasets.audioset import read_audioset_classes
from mbt_core.datasets.cards import cards_dir, read_card
from mbt_core.datasets.epic import read_epic_classes
from mbt_core.datasets.records import csv_rows, read_utf8
from mbt_core.datasets.vggsound import vggsound_classes

SINGLE_HEAD = "class"  # the head name of a model with one classifier


@dataclasses.dataclass(frozen=True)
class ClassList:
    """The names of one class list, the label type its dataset is scored with, and where they came from."""

    names: list[str]
    label_type: str | None  # multi_label (sigmoid per class), single_label (softmax) or None (not known)
    source: str


def read_class_names(path: str | os.PathLike) -> ClassList:
    """The class names of an AudioSet, VGGSound or EPIC-100 class list, or of a plain one-name-a-line list."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path}: " + ("not a file" if path.exists() else "does not exist"))
    if path.suffix.lower() == ".txt":
        names = [line.strip() for line in read_utf8(path).splitlines() if line.strip()]
        return ClassList(_unique(path, names), None, f"{path} (one name a line)")
    _, first = next(csv_rows(path), (0, []))
    if first[:3] == ["index", "mid", "display_name"]:
        return ClassList([name for _, name in read_audioset_classes(path)], "multi_label", f"{path} (AudioSet)")
    if first[:4] == ["id", "key", "instances", "category"]:
        return ClassList(read_epic_classes(path), "single_label", f"{path} (EPIC-KITCHENS-100)")
    if len(first) == 3 and first[1].isdigit():
        return ClassList(vggsound_classes(path), "single_label", f"{path} (VGGSound stat.csv, sorted)")
    rows = [row for _, row in csv_rows(path)]
    if rows and all(len(row) == 1 for row in rows):
        return ClassList(_unique(path, [row[0] for row in rows]), None, f"{path} (one name a line)")
    raise ValueError(f"labels file {path}: not a class list (expected AudioSet's class_labels_indices.csv, "
                     f"VGGSound's stat.csv, an EPIC_100 verb/noun classes CSV, or one name a line)")


def _unique(path: Path, names: list[str]) -> list[str]:
    """`names`, or an error naming the first name listed twice."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"labels file {path}: class {name!r} is listed twice")
        seen.add(name)
    return names


def head_sizes(heads: Mapping[str, int] | None, num_classes: int) -> dict[str, int]:
    """Classes per head: the config's heads, or one head `SINGLE_HEAD` of `num_classes`."""
    return dict(heads) if heads else {SINGLE_HEAD: int(num_classes)}


def names_from_files(paths: Sequence[str | os.PathLike], sizes: Mapping[str, int]) -> dict[str, ClassList]:
    """Each head's class list from `--labels` files: one file per head, matched by the head's name in the file
    name (EPIC_100_verb_classes.csv -> verb) or, failing that, by its class count."""
    lists = {os.fspath(p): read_class_names(p) for p in paths}
    if len(lists) != len(sizes):
        raise ValueError(f"the model has {len(sizes)} head(s) ({', '.join(f'{h}: {n}' for h, n in sizes.items())} "
                         f"classes); give one labels file for each, got {len(lists)}")
    out: dict[str, ClassList] = {}
    for file, found in lists.items():
        named = [h for h in sizes if h != SINGLE_HEAD and h.lower() in Path(file).name.lower() and h not in out]
        counted = [h for h, n in sizes.items() if n == len(found.names) and h not in out]
        head = (named or counted or [None])[0] if len(sizes) > 1 else SINGLE_HEAD
        if head is None or len(found.names) != sizes[head]:
            want = f"{sizes[head]} classes (head {head!r})" if head else f"one of {dict(sizes)}"
            raise ValueError(f"labels file {file}: {len(found.names)} classes, but the model needs {want}")
        out[head] = found
    return out


def names_from_card(card: Mapping, sizes: Mapping[str, int]) -> dict[str, ClassList]:
    """Each head's class list from a data card's `classes`, the counts checked against the model's heads."""
    classes = card["classes"] if card["label_type"] == "multi_head" else {SINGLE_HEAD: card["classes"]}
    label_type = "single_label" if card["label_type"] == "multi_head" else card["label_type"]
    found = {h: len(v) for h, v in classes.items()}
    if found != dict(sizes):
        raise ValueError(f"data card {card['path']}: classes {found} do not match the model's heads {dict(sizes)}")
    return {h: ClassList(list(v), label_type, f"{card['path']} (data card)") for h, v in classes.items()}


def matching_card(sizes: Mapping[str, int]) -> dict | None:
    """The first shipped data card whose class counts equal the model's heads (527: AudioSet, 309: VGGSound...)."""
    for path in sorted(cards_dir().glob("*.md")):
        card = read_card(path)
        classes = card["classes"] if card["label_type"] == "multi_head" else {SINGLE_HEAD: card["classes"]}
        if {h: len(v) for h, v in classes.items()} == dict(sizes):
            return card
    return None
