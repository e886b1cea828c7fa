"""The synthetic audio-visual benchmark that needs fusion: shapes that pulse, hums and beeps (`mbt synth`).

Each clip is an mp4 (H.264 video at 25 fps, AAC audio at 16 kHz) of a circle and sometimes a square
that drift and pulse on a dark background, over hums and beeps. Five binary latent attributes, each
true in exactly half of every split, make the multi-label classes:

- `audio`: a low hum (280 Hz) / a high hum (1200 Hz) is present;
- `visual`: the circle is warm-coloured (red to yellow, else cyan to blue) / a square is present;
- `pairing`: `a_xor_b` of an audio and a visual attribute, so that P(label | one modality) = 1/2 and
  late fusion (a sum of per-modality logits) cannot beat the positive rate;
- `binding`: two pairings at once, `(a_xor_b)_and_(c_xor_d)`: two facts of each modality must meet the
  other's (the circle's colour and the square's presence against both hums), so two bits cross, not one;
- `pairing_temporal`: the circle is the sound source: its pulse falls in the beep's one-second slot (else
  in another; the square's never does). Beeps and pulses are in every clip: only synchrony decides.

`generate` writes `clips/*.mp4`, `manifest.csv` (read by `read_manifest`), `attributes.csv` (every
latent value of every clip) and `data_card.md` (the card `data_cards/synthetic.md` with this run's
parameters and classes). It is deterministic by seed and resumable: clips already written with the
same content are kept.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import av
import numpy as np
import yaml
from tqdm.auto import tqdm

from mbt_core.datasets.cards import FRONT_MATTER, card_path
from mbt_core.datasets.synthetic_media import FPS, SAMPLE_RATE, render_audio, render_frames, sample_scene
from mbt_core.atomic_files import part_path, replaced, write_text
from mbt_core.media.video_writer import write_video
from mbt_core.worker_processes import worker_start

KINDS = ("audio", "visual", "pairing", "binding", "pairing_temporal")
CLASSES = (("low_hum", "audio"), ("high_hum", "audio"), ("circle_warm", "visual"),
           ("square_present", "visual"), ("circle_warm_xor_high_hum", "pairing"),
           ("square_present_xor_low_hum", "pairing"),
           ("circle_warm_xor_high_hum_and_square_present_xor_low_hum", "binding"),
           ("circle_warm_xor_low_hum_and_square_present_xor_high_hum", "binding"),
           ("circle_is_sound_source", "pairing_temporal"))
ATTRIBUTES = ("circle_warm", "high_hum", "square_present", "low_hum", "circle_is_sound_source")
# Balanced design: in each block of 2^5 clips of a split, row i (bits b0..b4) sets attribute j to the
# XOR of the bits in column j. Every attribute contains b0, so it is true in exactly one clip of every
# aligned pair; each pairing label (circle_warm ^ high_hum = b1, square_present ^ low_hum = b1^b2^b3)
# lacks b0, so it is constant on each pair and exactly independent of every attribute, and contains
# b1, so it is true in exactly half of every aligned four. A full block is the full factorial. Each binding
# label is the AND of two such XORs whose bit sums are linearly independent of either modality's bits
# (b1 and b1^b2^b3; b1^b3 and b1^b2), so it is true in a quarter of every full block whatever one
# modality shows.
DESIGN = np.array([[1, 1, 1, 1, 1],
                   [0, 1, 0, 1, 0],
                   [0, 0, 1, 0, 0],
                   [0, 0, 0, 1, 0],
                   [0, 0, 0, 0, 1]], np.int64)
SPLITS = ("train", "val", "test")
HELD_OUT_FRACTION = 0.1  # each of val and test
FORMAT_VERSION = 2  # bump when the rendering changes: clips of another version are rewritten
# Encoder settings chosen for speed (about 14 + 11 ms per clip) at no visible loss on flat shapes and tones.
VIDEO_CODEC, VIDEO_OPTIONS = "libx264", {"crf": "20", "preset": "veryfast"}
AUDIO_OPTIONS, AUDIO_BIT_RATE = {"aac_coder": "fast"}, 48000
MIN_CLIPS = 12


@dataclasses.dataclass(frozen=True)
class SynthResult:
    """What `generate` wrote: the files, the classes, and how many clips it wrote or kept."""

    out_dir: Path
    manifest: Path
    attributes: Path
    card: Path
    classes: tuple[str, ...]
    written: int
    kept: int


def class_kinds(kinds: Iterable[str] = KINDS) -> dict[str, str]:
    """Class name -> kind for the classes of the given kinds, in index order."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    return {name: kind for name, kind in CLASSES if kind in kinds}


def class_value(name: str, attributes: Mapping[str, Any]) -> bool:
    """Whether class `name` is present in a clip with these latent attributes: the name is the rule
    (`a_xor_b`, `a_xor_b_and_c_xor_d`, or an attribute)."""
    if "_and_" in name:
        return all(class_value(part, attributes) for part in name.split("_and_"))
    if "_xor_" in name:
        a, b = name.split("_xor_")
        return bool(attributes[a]) != bool(attributes[b])
    return bool(attributes[name])


def split_sizes(num_clips: int) -> dict[str, int]:
    """Clips per split: val and test a multiple of 4 near 10 % each (at least 4), train the rest."""
    if num_clips < MIN_CLIPS:
        raise ValueError(f"num_clips must be >= {MIN_CLIPS} (every class needs positives in every split), "
                         f"got {num_clips}")
    held = max(4, 4 * round(num_clips * HELD_OUT_FRACTION / 4))
    return {"train": num_clips - 2 * held, "val": held, "test": held}


def balanced_attributes(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 5) bool attributes (columns `ATTRIBUTES`) of one split, balanced as `DESIGN` describes."""
    k = len(ATTRIBUTES)
    index = np.arange(n) % 2**k
    bits = (index[:, None] >> np.arange(k)) & 1
    # A last, partial block sees its slow bits in a random order, so no attribute pair is always tied there.
    bits[:, 2:] = bits[:, 2 + rng.permutation(k - 2)]
    flips = rng.integers(0, 2, (n // 2**k + 1, k))[np.arange(n) // 2**k]  # complementing keeps every balance
    return ((bits @ DESIGN + flips) % 2).astype(bool)[rng.permutation(n)]


def plan(num_clips: int = 2000, seed: int = 0, clip_seconds: float = 4.0,
         difficulty: float = 0.1) -> list[dict[str, Any]]:
    """Every clip's id, split and latent scene (the rows of `attributes.csv`), without rendering."""
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must lie in [0, 1], got {difficulty}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    sizes = split_sizes(num_clips)
    rng = np.random.default_rng([seed, 0])
    splits = rng.permutation(np.repeat(np.array(SPLITS), [sizes[s] for s in SPLITS]))
    attributes = np.zeros((num_clips, len(ATTRIBUTES)), bool)
    for split in SPLITS:
        attributes[splits == split] = balanced_attributes(sizes[split], rng)
    rows = []
    for i in range(num_clips):
        scene = sample_scene(dict(zip(ATTRIBUTES, attributes[i])), np.random.default_rng([seed, 1, i]),
                             clip_seconds, difficulty)
        rows.append({"clip_id": f"synth_{i:06d}", "split": str(splits[i]), **scene})
    return rows


def fingerprint(row: Mapping[str, Any], size: int, clip_seconds: float) -> str:
    """A short hash of everything a clip's file depends on (stored in the file's `comment` tag)."""
    payload = json.dumps({"version": FORMAT_VERSION, "size": size, "clip_seconds": clip_seconds,
                          "codec": [VIDEO_CODEC, VIDEO_OPTIONS, AUDIO_OPTIONS, AUDIO_BIT_RATE], "row": dict(row)},
                         sort_keys=True)
    return "mbt-synth " + hashlib.sha256(payload.encode()).hexdigest()[:24]


def clip_is_valid(path: str | os.PathLike, expected: str) -> bool:
    """True when `path` is a readable mp4 with video and audio whose fingerprint tag is `expected`."""
    try:
        with av.open(os.fspath(path)) as container:
            return (container.metadata.get("comment") == expected and bool(container.streams.video)
                    and bool(container.streams.audio))
    except (av.error.FFmpegError, OSError):
        return False


def write_clip(job: tuple[str, dict[str, Any], int, float, str]) -> str:
    """Render one clip and write it atomically (a worker's task): (path, row, size, seconds, fingerprint)."""
    path, row, size, clip_seconds, tag = job
    with replaced(path) as part:
        write_video(part, render_frames(row, size, clip_seconds), FPS, codec=VIDEO_CODEC, options=VIDEO_OPTIONS,
                    audio=render_audio(row, clip_seconds)[None], rate=SAMPLE_RATE, audio_options=AUDIO_OPTIONS,
                    audio_bit_rate=AUDIO_BIT_RATE, metadata={"comment": tag})
    return path


def _cell(value: Any) -> str:
    return str(int(value)) if isinstance(value, (bool, np.bool_)) else str(value)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV atomically (a reader never sees half a file)."""
    with replaced(path) as part, open(part, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([_cell(v) for v in row] for row in rows)


def card_front_matter(kinds: dict[str, str], *, num_clips: int, seed: int, clip_seconds: float, size: int,
                      difficulty: float) -> dict[str, Any]:
    """The YAML front matter of a generated data card."""
    return {
        "name": "synthetic",
        "title": "Synthetic audio-visual fusion benchmark (shapes, hums and beeps)",
        "label_type": "multi_label",
        "metric": "mAP",
        "clip_seconds": clip_seconds,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "frame_size": size,
        "spectrogram": {"mean": None, "std": None},
        "splits": {split: {"clips": n} for split, n in split_sizes(num_clips).items()},
        "licence": "Apache-2.0 (generated by this project's code; no third-party content)",
        "source": "generated locally by `mbt synth` (mbt_core/datasets/synthetic.py); nothing is downloaded",
        "citation": "The mbt project's synthetic benchmark, after the fusion task of Nagrani et al., "
                    "Attention Bottlenecks for Multimodal Fusion, NeurIPS 2021.",
        "availability": [],
        "seed": seed,
        "generator": {"num_clips": num_clips, "clip_seconds": clip_seconds, "size": size,
                      "difficulty": difficulty, "kinds": sorted(set(kinds.values()), key=KINDS.index),
                      "video_codec": VIDEO_CODEC, "audio_codec": "aac", "sample_rate": SAMPLE_RATE,
                      "fps": FPS, "format_version": FORMAT_VERSION},
        "class_kinds": dict(kinds),
        "classes": list(kinds),
    }


def card_text(front: Mapping[str, Any], template: str | os.PathLike | None = None) -> str:
    """A data card: `front` as YAML front matter, then the template card's prose with its class table rebuilt."""
    match = FRONT_MATTER.match(Path(template or card_path("synthetic")).read_text(encoding="utf-8"))
    if not match:
        raise ValueError(f"{template or card_path('synthetic')}: no `---` front matter in the card template")
    table = "| class name | kind |\n|---|---|\n" + "".join(
        f"| {name} | {kind} |\n" for name, kind in front["class_kinds"].items())
    body, count = re.subn(r"^\|.*\|[ \t]*\n(?:^\|.*\|[ \t]*\n)*", lambda _: table, match.group(2),
                          count=1, flags=re.MULTILINE)
    if not count:
        raise ValueError(f"{template or card_path('synthetic')}: the card template has no class table")
    yaml_text = yaml.safe_dump(dict(front), sort_keys=False, default_flow_style=False, width=110)
    return f"---\n{yaml_text}---\n{body}"


def generate(out_dir: str | os.PathLike, num_clips: int = 2000, seed: int = 0, clip_seconds: float = 4.0,
             size: int = 64, difficulty: float = 0.1, kinds: Iterable[str] = KINDS, *, workers: int = 2,
             progress: bool = True) -> SynthResult:
    """Write the synthetic benchmark into `out_dir`: clips, manifest.csv, attributes.csv, data_card.md."""
    kind_of = class_kinds(kinds)
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels (shapes must stay visible), got {size}")
    out = Path(out_dir)
    rows = plan(num_clips, seed, clip_seconds, difficulty)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    paths = [out / "clips" / f"{row['clip_id']}.mp4" for row in rows]
    tags = [fingerprint(row, size, clip_seconds) for row in rows]
    jobs = [(str(p), row, size, clip_seconds, tag) for p, row, tag in zip(paths, rows, tags)
            if not clip_is_valid(p, tag)]
    with tqdm(total=num_clips, initial=num_clips - len(jobs), desc="mbt synth", unit="clip",
              disable=not progress, leave=None) as bar:  # kept only when not nested in another bar
        try:
            if workers > 1 and len(jobs) > 1:
                # spawn: forking a process that has imported JAX can deadlock.
                with multiprocessing.get_context("spawn").Pool(workers, initializer=worker_start) as pool:
                    for _ in pool.imap_unordered(write_clip, jobs, chunksize=4):
                        bar.update()
            else:
                for job in jobs:
                    write_clip(job)
                    bar.update()
        finally:  # a failed run (a full disk) leaves no partial clip: the pool's other writers were stopped
            for job in jobs:
                part_path(job[0]).unlink(missing_ok=True)
    classes = list(kind_of)
    _write_csv(out / "attributes.csv", list(rows[0]), [list(row.values()) for row in rows])
    _write_csv(out / "manifest.csv", ["clip_id", "path", "start", "end", "labels", "split"],
               [[row["clip_id"], f"clips/{row['clip_id']}.mp4", 0, clip_seconds,
                 ";".join(c for c in classes if class_value(c, row)), row["split"]] for row in rows])
    front = card_front_matter(kind_of, num_clips=num_clips, seed=seed, clip_seconds=clip_seconds, size=size,
                              difficulty=difficulty)
    write_text(out / "data_card.md", card_text(front))
    return SynthResult(out, out / "manifest.csv", out / "attributes.csv", out / "data_card.md",
                       tuple(classes), written=len(jobs), kept=num_clips - len(jobs))
