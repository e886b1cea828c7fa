"""Data cards: one markdown file per dataset whose YAML front matter the code reads.

A card starts with `---`-delimited YAML holding at least `name`, `classes` (names in index order;
for `label_type: multi_head` a mapping head -> names) and `label_type` (multi_label, single_label
or multi_head); the other keys (metric, clip_seconds, fps, spectrogram, splits, licence, source,
citation, availability) are read as they are. `## ` headings split the prose into sections.
"""
from __future__ import annotations

import collections
import datetime
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from mbt_core.atomic_files import write_text
from mbt_core.config import LABEL_TYPES
from mbt_core.package_files import shipped_dir
from mbt_core.datasets.records import read_utf8

SECTIONS = ("Provenance", "Intended uses", "Unsuitable uses", "Known biases and limitations",
            "Availability")
ALIASES = {"epic": "epic_kitchens_100", "epic_kitchens": "epic_kitchens_100"}
FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", re.DOTALL)


def cards_dir() -> Path:
    """The folder of data cards: `$MBT_DATA_CARDS`, else the cards shipped with the package."""
    return Path(os.environ.get("MBT_DATA_CARDS") or shipped_dir("data_cards"))


def card_path(name: str | os.PathLike) -> Path:
    """The card file of a dataset name (`audioset`, `vggsound`, `epic_kitchens_100`) or a path."""
    if os.fspath(name).endswith(".md") or os.path.sep in os.fspath(name):
        return Path(name)
    key = str(name).lower().replace("-", "_")
    path = cards_dir() / f"{ALIASES.get(key, key)}.md"
    if not path.is_file():
        known = sorted(p.stem for p in cards_dir().glob("*.md"))
        raise FileNotFoundError(f"no data card {path} for {name!r}; cards: {', '.join(known)}")
    return path


def check_classes(path: Path, label_type: Any, classes: Any) -> None:
    """Raise unless `classes` fits `label_type`: a list of unique names, or head -> such lists."""
    if label_type not in LABEL_TYPES:
        raise ValueError(f"{path}: label_type {label_type!r} is not one of {LABEL_TYPES}")
    heads = classes if label_type == "multi_head" else {"classes": classes}
    if not isinstance(heads, dict) or not heads:
        raise ValueError(f"{path}: a multi_head card's classes must map head names to lists")
    for head, names in heads.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: classes of {head!r} must be a list of names")
        doubled = sorted(n for n, k in collections.Counter(names).items() if k > 1)
        if doubled:
            raise ValueError(f"{path}: classes of {head!r} list {doubled} more than once")


def read_card(path_or_name: str | os.PathLike) -> dict[str, Any]:
    """A data card's front matter, plus `sections` (heading -> text) and `path`."""
    path = card_path(path_or_name)
    match = FRONT_MATTER.match(read_utf8(path))
    if not match:
        raise ValueError(f"{path}: a data card must start with `---` YAML front matter `---`")
    try:
        card = yaml.safe_load(match.group(1))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML front matter: {e}") from None
    if not isinstance(card, dict):
        raise ValueError(f"{path}: the front matter must be a YAML mapping")
    missing = [key for key in ("name", "classes", "label_type") if key not in card]
    if missing:
        raise ValueError(f"{path}: the front matter lacks {', '.join(missing)}")
    check_classes(path, card["label_type"], card["classes"])
    parts = re.split(r"^##[ \t]+(.+?)[ \t]*$", match.group(2), flags=re.MULTILINE)
    sections = {title: text.strip() for title, text in zip(parts[1::2], parts[2::2])}
    return {**card, "sections": sections, "path": str(path)}


def availability_record(ids: Iterable[str], date: str | None = None) -> dict[str, Any]:
    """{"date", "count", "sha256"} of the clip ids still available, for a card's Availability.

    The hash is SHA-256 of the unique ids sorted by code point, one per line with a trailing
    newline: the same as `LC_ALL=C sort -u ids.txt | sha256sum`. Scores on different surviving
    subsets are not comparable; equal hashes show two runs used the same clips.
    """
    unique = sorted(set(ids))
    digest = hashlib.sha256("".join(f"{i}\n" for i in unique).encode("utf-8")).hexdigest()
    date = date or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    return {"date": date, "count": len(unique), "sha256": digest}


def write_card_fields(path: str | os.PathLike, **fields: Any) -> Path:
    """Set front-matter keys of a data card file, keeping every other key and the prose as they are."""
    path = Path(path)
    match = FRONT_MATTER.match(read_utf8(path))
    if not match:
        raise ValueError(f"{path}: a data card must start with `---` YAML front matter `---`")
    front = yaml.safe_load(match.group(1)) or {}
    front.update(fields)
    text = yaml.safe_dump(front, sort_keys=False, default_flow_style=False, width=110)
    write_text(path, f"---\n{text}---\n{match.group(2)}")  # a full disk keeps the old card whole
    return path
