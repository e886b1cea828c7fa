"""Token cache: each split tokenised once into shards on disk, keyed by the preprocessing config; read from disk.

Decoding video every epoch is the bottleneck on Colab-class hosts. A cache directory is named by a hash
of everything that shapes the tokens (geometry, views, preprocessing), so a changed config never reads a
stale cache. Frames are stored as uint8 (the precision of the decoded video), log-mel as float32.

Frames are stored with the training margin of Sec. 4.2: the short side resized to s = round(S * 256/224)
and the central s x s square kept, so that training draws the official scale-jittered random crop from
it (`CachedSplit.train_example`) and evaluation takes the central S x S crop (`CachedSplit.example`),
which is exactly the crop `tokenise` takes. A training split stores several views, the candidate windows
that `TrainIterator` draws from (docs/architecture.md, "Training windows"). Log-mel is stored raw and
standardised as it is read when the split has statistics. (Official training crops from the full width; a square keeps
every clip the same shape, so wide videos lose their sides in training.)

Shards are written atomically and record the clips they hold (ids, spans, and each file's size and
modification time), so an interrupted build resumes, and a changed clip list or a clip file replaced in
place rebuilds only the shards whose clips changed. Bad clips raise (naming the file) or,
with on_error="skip", are recorded in meta.json and reported once; a loaded split says which clips it holds.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import threadpoolctl
from tqdm.auto import tqdm

from mbt_core.atomic_files import replaced, write_text
from mbt_core.config import MBTConfig
from mbt_core.data.disk_rows import DiskRows, save_rows
from mbt_core.data.tokenise import Preprocess, views
from mbt_core.data.worker_pool import CrashSafePool
from mbt_core.datasets.records import ClipRecord, check_on_error
from mbt_core.media import video
from mbt_core.media.audio import normalise
from mbt_core.media.images import to_uint8

SHARD = 128  # clips per shard
FORMAT = 3  # 2: frames with the training margin, eval-crop offsets, clip ids, bad clips; 3: one view is centred,
# frames and log-mel in .npy files beside each shard, read from disk
ROWS = ("frames", "spec")  # the per-clip arrays, stored as .npy beside each shard's header and read from disk
REPORT_FIRST = 5  # bad clips listed in the printed report
MIN_POOL_CLIPS = 32  # fewer clips to tokenise run here: starting a worker (imports) costs seconds
_BAD_CLIP = (ValueError, OSError)  # VideoDecodeError (a ValueError), a missing file, a start outside the clip


class ClipError(ValueError):
    """A clip that cannot be tokenised; the message names the clip and its file."""


def stored_size(config: MBTConfig, preprocess: Preprocess) -> int:
    """Side s of the stored frames: the short side before the crop, round(S * short_side_ratio)."""
    return round(config.image_size * preprocess.short_side_ratio)


def cache_key(config: MBTConfig, preprocess: Preprocess, num_views: int) -> str:
    """A short hash of everything that determines the cached tokens."""
    geometry = {k: getattr(config, k) for k in ("rgb_frames", "image_size", "spec_seconds", "mel_bins")}
    payload = json.dumps({"geometry": geometry, "views": num_views, "preprocess": dataclasses.asdict(preprocess),
                          "format": FORMAT},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def limit_threads(*_: Any) -> None:
    """Make this (worker) process's BLAS, OpenMP and OpenCV single-threaded (2 workers on 2 cores)."""
    # The variable alone is too late here (numpy has loaded OpenBLAS); it still reaches later children.
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    threadpoolctl.threadpool_limits(1)
    cv2.setNumThreads(1)


def _file_state(path: str | None) -> str:
    """Size and modification time (ns) of a clip file: a file replaced in place changes them."""
    try:
        stat = os.stat(path)
    except (OSError, TypeError):  # a missing file fails when tokenised, naming it
        return "missing"
    return f"{stat.st_size}\t{stat.st_mtime_ns}"


def _sources(records: Sequence[ClipRecord]) -> str:
    """A hash of what the tokens of `records` come from: ids, source videos, spans and the files' states, in order."""
    text = "\n".join(f"{r.clip_id}\t{r.video}\t{r.start!r}\t{r.end!r}\t{_file_state(r.path)}" for r in records)
    return hashlib.sha256(text.encode()).hexdigest()


def _eval_offset(frame_size: tuple[int, int], size: int, side: int) -> tuple[int, int]:
    """Top/left of `tokenise`'s central S crop within the stored central s-square (floor halving: parity-dependent)."""
    # The size of the frames as decoded (a rotated clip's frames come upright) and resized to short side s.
    h, w = frame_size
    return (h - size) // 2 - (h - side) // 2, (w - size) // 2 - (w - side) // 2


def _tokenise_clip(args: tuple[ClipRecord, MBTConfig, Preprocess, int]) -> dict[str, Any]:
    """One clip's arrays, or {"error": reason} for a bad clip."""
    record, config, preprocess, num_views = args
    side = stored_size(config, preprocess)
    end = None if record.end == float("inf") else record.end
    # The s x s central square of frames resized to short side s: `views` with an S of s and no margin
    # (patch size 1 only so that the borrowed geometry validates; it does not change the pixels).
    square = config.replace(image_size=side, rgb_patch=1)
    try:
        got = views(record.path, square, num_views, start=record.start, end=end,
                    preprocess=dataclasses.replace(preprocess, short_side_ratio=1.0))
        offset = _eval_offset(got[0].frame_size, config.image_size, side)
    except _BAD_CLIP as e:
        return {"error": f"{type(e).__name__}: {e}"}
    frames = np.stack([to_uint8(v.frames) for v in got])
    return {"frames": frames, "spec": np.stack([v.spectrogram for v in got]).astype(np.float32),
            "padded": np.asarray(any(v.padded for v in got)), "audio_missing": np.asarray(got[0].audio_missing),
            "offset": np.asarray(offset, np.int16)}


def _worker_died(args: tuple[ClipRecord, MBTConfig, Preprocess, int]) -> dict[str, Any]:
    return {"error": "the worker process tokenising this clip died (a crash in a native decoder?)"}


def _shard_path(directory: Path, n: int) -> Path:
    """A shard's header: clip ids, flags, bad clips and source hash (its frames and log-mel lie beside it)."""
    return directory / f"shard_{n:05d}.npz"


def _rows_path(directory: Path, n: int, field: str) -> Path:
    """A shard's frames or log-mel: an uncompressed .npy that `DiskRows` reads from disk clip by clip."""
    return directory / f"shard_{n:05d}.{field}.npy"


def _shard_header(path: Path) -> tuple[str, list[tuple[int, str]]] | None:
    """A shard's source hash and (index, reason) of the bad clips it records; None if missing or unreadable."""
    try:
        with np.load(path) as z:
            return str(z["source"]), list(zip(z["skipped_index"].tolist(), z["skipped_reason"].tolist()))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def _clip_message(record: ClipRecord, reason: str) -> str:
    where = "" if record.path and record.path in reason else f" ({record.path})"
    return f"clip {record.clip_id!r}{where}: {reason}"


def _report(name: str, directory: Path, skipped: list[dict[str, Any]], total: int) -> None:
    """One printed report of the clips left out of a cache."""
    lines = [f"token cache {name}: {len(skipped)} of {total} clips skipped as unreadable "
             f"(listed in {directory / 'meta.json'}); first {min(len(skipped), REPORT_FIRST)}:"]
    lines += [f"  {s['clip_id']} ({s['path']}): {s['reason']}" for s in skipped[:REPORT_FIRST]]
    print("\n".join(lines))


def _write_shard(directory: Path, n: int, shard: range, records: Sequence[ClipRecord], results: list[dict],
                 source: str, config: MBTConfig, preprocess: Preprocess, num_views: int) -> None:
    good = [(i, r) for i, r in zip(shard, results) if "error" not in r]
    side = stored_size(config, preprocess)
    empty = {"frames": np.zeros((0, num_views, config.rgb_frames, side, side, 3), np.uint8),
             "spec": np.zeros((0, num_views, config.spec_frames, config.mel_bins), np.float32),
             "padded": np.zeros(0, bool), "audio_missing": np.zeros(0, bool), "offset": np.zeros((0, 2), np.int16)}
    arrays = {k: np.stack([r[k] for _, r in good]) if good else v for k, v in empty.items()}
    bad = [(i, r["error"]) for i, r in zip(shard, results) if "error" in r]
    # The header goes last and names the source: arrays without a matching header are never read.
    _shard_path(directory, n).unlink(missing_ok=True)
    rows = {field: _rows_path(directory, n, field) for field in ROWS}
    try:
        for field, path in rows.items():
            save_rows(path, arrays.pop(field))
        with replaced(_shard_path(directory, n)) as tmp:
            np.savez(tmp, index=np.asarray([i for i, _ in good], np.int64),
                     clip_ids=np.asarray([records[i].clip_id for i, _ in good], dtype=str),
                     skipped_index=np.asarray([i for i, _ in bad], np.int64),
                     skipped_reason=np.asarray([reason for _, reason in bad], dtype=str),
                     source=np.asarray(source), **arrays)
    except BaseException:  # a full disk or an interrupt: no rows are left without their header
        for path in rows.values():
            path.unlink(missing_ok=True)
        raise


def build_cache(records: Sequence[ClipRecord], config: MBTConfig, root: str | Path, name: str, *,
                num_views: int = 1, preprocess: Preprocess = Preprocess(), workers: int = 2,
                progress: bool = True, on_error: str = "raise", shard_size: int = SHARD) -> Path:
    """Tokenise `records` (paths set) into `root/<name>-<key>/`; returns that directory.

    on_error="raise" stops at the first bad clip with a ClipError naming it and its file; "skip" leaves
    bad clips out, lists them in meta.json and prints one report (a later "raise" build retries them).
    """
    check_on_error(on_error)
    if not records:
        raise ValueError(f"build_cache {name!r}: no clips to tokenise")
    key = cache_key(config, preprocess, num_views)
    directory = Path(root) / f"{name}-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    shards = [range(i, min(i + shard_size, len(records))) for i in range(0, len(records), shard_size)]
    identity = {"key": key, "format": FORMAT, "clips": len(records), "views": num_views, "shards": len(shards),
                "image_size": config.image_size, "stored_size": stored_size(config, preprocess),
                "sources_sha256": _sources(records)}
    meta_path = directory / "meta.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in identity} == identity and (on_error == "skip" or not meta["skipped"]):
            if meta["skipped"]:
                _report(name, directory, meta["skipped"], len(records))
            return directory
    meta_path.unlink(missing_ok=True)  # no meta while shards change: `CachedSplit.load` refuses the directory

    def done(n: int) -> bool:
        header = _shard_header(_shard_path(directory, n))
        if header is None or header[0] != _sources([records[i] for i in shards[n]]):
            return False
        if not all(_rows_path(directory, n, field).exists() for field in ROWS):
            return False
        return on_error == "skip" or not header[1]

    todo = [n for n in range(len(shards)) if not done(n)]
    remaining = sum(len(shards[n]) for n in todo)
    bar = tqdm(total=len(records), initial=len(records) - remaining, desc=f"tokenise {name}", unit="clip",
               disable=not progress, leave=None)  # kept only when not nested in another bar
    pool = CrashSafePool(workers, limit_threads) if workers > 1 and remaining > MIN_POOL_CLIPS else None
    try:
        for n in todo:
            jobs = [(records[i], config, preprocess, num_views) for i in shards[n]]
            source = _sources([records[i] for i in shards[n]])  # the files' states before they are read
            results = []
            got = pool.map(_tokenise_clip, jobs, _worker_died) if pool else map(_tokenise_clip, jobs)
            for i, result in zip(shards[n], got):
                if "error" in result and on_error == "raise":
                    raise ClipError(_clip_message(records[i], result["error"]))
                results.append(result)
                bar.update(1)
            _write_shard(directory, n, shards[n], records, results, source, config, preprocess, num_views)
    finally:
        if pool:
            pool.shutdown()
        bar.close()
    for stale in directory.glob("shard_*.np[zy]"):  # left by a longer clip list
        if int(stale.name.split(".")[0].split("_")[1]) >= len(shards):
            stale.unlink()
    skipped = [{"index": i, "clip_id": records[i].clip_id, "path": records[i].path, "reason": reason}
               for n in range(len(shards)) for i, reason in _shard_header(_shard_path(directory, n))[1]]
    write_text(meta_path, json.dumps({**identity, "skipped": skipped}, indent=1))
    if skipped:
        _report(name, directory, skipped, len(records))
    return directory


@dataclasses.dataclass
class CachedSplit:
    """A tokenised split: frames (N, V, F, s, s, 3) uint8 with s >= S, spec (N, V, T, mel) float32.

    Loaded from a cache, frames and spec are `DiskRows`, read from disk clip by clip; built by hand
    (tests), in-memory arrays.

    `index` gives each clip's position in the records the cache was built from (clips skipped as bad
    are absent), `clip_ids` their ids; `offset` (N, 2) the top/left of the evaluation crop in the stored
    square. Built by hand (tests), frames of S x S and no index mean every clip, centre crop.
    """

    frames: np.ndarray
    spec: np.ndarray
    padded: np.ndarray
    audio_missing: np.ndarray
    image_size: int | None = None  # S; None: the stored frames are already S x S
    offset: np.ndarray | None = None
    index: np.ndarray | None = None
    clip_ids: np.ndarray | None = None
    skipped: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    spec_mean: float | None = None  # dataset statistics: log-mel is standardised as it is read; None: raw
    spec_std: float | None = None

    def __post_init__(self):
        n, side = len(self.frames), self.frames.shape[3]
        self.image_size = side if self.image_size is None else self.image_size
        if self.offset is None:
            self.offset = np.full((n, 2), (side - self.image_size) // 2, np.int16)
        if self.index is None:
            self.index = np.arange(n)
        for field in ("spec", "padded", "audio_missing", "offset", "index", "clip_ids"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise ValueError(f"CachedSplit.{field} has {len(value)} rows for {n} clips")

    @classmethod
    def load(cls, directory: str | Path) -> "CachedSplit":
        """Read every shard of a finished cache directory in order."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"token cache {directory}: no meta.json (an unfinished build; run build_cache)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"token cache {directory}: format {meta.get('format')}, this code reads {FORMAT}")
        parts = []
        for n in range(meta["shards"]):
            with np.load(_shard_path(directory, n)) as z:
                parts.append({k: z[k] for k in ("padded", "audio_missing", "offset", "index", "clip_ids")})
        got = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        for field in ROWS:  # read from disk as clips are asked for: memory does not grow with the split
            got[field] = DiskRows([_rows_path(directory, n, field) for n in range(meta["shards"])])
        present = meta["clips"] - len(meta["skipped"])
        if len(got.get("index", ())) != present:
            raise ValueError(f"token cache {directory}: {len(got.get('index', ()))} clips in shards, meta says "
                             f"{present}")
        return cls(**got, image_size=meta["image_size"], skipped=meta["skipped"])

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def num_views(self) -> int:
        """Views (windows) stored per clip."""
        return self.frames.shape[1]

    @property
    def standardised(self) -> bool:
        """Whether log-mel is read standardised (mean 0, std 1 over the statistics' split)."""
        return self.spec_mean is not None

    def spectrogram(self, index: int, view: int = 0) -> np.ndarray:
        """One view's log-mel (T, mel) float32, standardised when the split has statistics."""
        spec = np.asarray(self.spec[index, view], np.float32)
        return spec if self.spec_mean is None else normalise(spec, self.spec_mean, self.spec_std)

    def example(self, index: int, view: int = 0, spec_view: int | None = None) -> dict[str, np.ndarray]:
        """One view of one clip as evaluation inputs (central S crop): rgb float32 in [-1, 1], spec float32.

        `spec_view` takes the spectrogram of another window (asynchronous sampling); default: the same.
        """
        top, left = self.offset[index]
        crop = self.frames[index, view, :, top:top + self.image_size, left:left + self.image_size]
        return {"rgb": video.to_signed_unit(crop), "spec": self.spectrogram(index, view if spec_view is None else spec_view)}

    def train_example(self, index: int, view: int = 0, spec_view: int | None = None) -> dict[str, np.ndarray]:
        """One view of one clip before the training crop: rgb uint8 (F, s, s, 3) as stored, spec float32."""
        return {"rgb": np.asarray(self.frames[index, view]),
                "spec": self.spectrogram(index, view if spec_view is None else spec_view)}
