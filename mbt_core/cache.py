"""Token cache: each split tokenised once into compact shards, keyed by the preprocessing config.

Decoding video every epoch is the bottleneck on Colab-class hosts. A cache directory is named by a hash
of everything that shapes the tokens (geometry, views, preprocessing), so a changed config never reads a
stale cache. Frames are stored as uint8 (the precision of the decoded video), log-mel as float32.
Shards are written atomically and skipped when present, so an interrupted build resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from mbt_core.config import MBTConfig
from mbt_core.datasets.records import ClipRecord
from mbt_core.tokenise import Preprocess, views

SHARD = 128  # clips per shard


def cache_key(config: MBTConfig, preprocess: Preprocess, num_views: int) -> str:
    """A short hash of everything that determines the cached tokens."""
    geometry = {k: getattr(config, k) for k in ("rgb_frames", "image_size", "spec_seconds", "mel_bins")}
    payload = json.dumps({"geometry": geometry, "views": num_views, "preprocess": dataclasses.asdict(preprocess),
                          "format": 1}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _tokenise_clip(args: tuple[ClipRecord, MBTConfig, Preprocess, int]) -> dict[str, np.ndarray]:
    record, config, preprocess, num_views = args
    end = None if record.end == float("inf") else record.end
    got = views(record.path, config, num_views, start=record.start, end=end, preprocess=preprocess)
    frames = np.stack([np.rint((v.frames + 1.0) * 127.5) for v in got]).clip(0, 255).astype(np.uint8)
    return {"frames": frames, "spec": np.stack([v.spectrogram for v in got]).astype(np.float32),
            "padded": np.asarray(any(v.padded for v in got)), "audio_missing": np.asarray(got[0].audio_missing)}


def _worker_init() -> None:
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # librosa is ~3x faster single-threaded on 2 cores.


def build_cache(records: Sequence[ClipRecord], config: MBTConfig, root: str | Path, name: str, *,
                num_views: int = 1, preprocess: Preprocess = Preprocess(), workers: int = 2,
                progress: bool = True) -> Path:
    """Tokenise `records` (paths set) into `root/<name>-<key>/`; returns that directory."""
    key = cache_key(config, preprocess, num_views)
    directory = Path(root) / f"{name}-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    ids = [r.clip_id for r in records]
    meta = {"key": key, "clips": len(records), "views": num_views, "clip_ids_sha256":
            hashlib.sha256("\n".join(ids).encode()).hexdigest()}
    meta_path = directory / "meta.json"
    if meta_path.exists() and json.loads(meta_path.read_text()) == meta:
        return directory
    shards = [range(i, min(i + SHARD, len(records))) for i in range(0, len(records), SHARD)]
    todo = [(n, s) for n, s in enumerate(shards) if not (directory / f"shard_{n:05d}.npz").exists()]
    bar = tqdm(total=len(records), initial=len(records) - sum(len(s) for _, s in todo), desc=f"tokenise {name}",
               unit="clip", disable=not progress)
    pool = ProcessPoolExecutor(workers, initializer=_worker_init) if workers > 1 else None
    try:
        for n, shard in todo:
            jobs = [(records[i], config, preprocess, num_views) for i in shard]
            results = []
            for rec, res in zip((records[i] for i in shard), (pool.map(_tokenise_clip, jobs) if pool
                                                             else map(_tokenise_clip, jobs))):
                results.append(res)
                bar.update(1)
            arrays = {k: np.stack([r[k] for r in results]) for k in results[0]}
            tmp = directory / f".shard_{n:05d}.tmp.npz"
            np.savez(tmp, index=np.asarray(list(shard)), **arrays)
            tmp.rename(directory / f"shard_{n:05d}.npz")
    finally:
        if pool:
            pool.shutdown()
        bar.close()
    meta_path.write_text(json.dumps(meta))
    return directory


@dataclasses.dataclass
class CachedSplit:
    """A tokenised split in memory: frames (N, V, F, H, W, 3) uint8, spec (N, V, T, mel) float32."""

    frames: np.ndarray
    spec: np.ndarray
    padded: np.ndarray
    audio_missing: np.ndarray

    @classmethod
    def load(cls, directory: str | Path) -> "CachedSplit":
        """Read every shard of a cache directory in order."""
        directory = Path(directory)
        meta = json.loads((directory / "meta.json").read_text())
        shards = sorted(directory.glob("shard_*.npz"))
        parts = [dict(np.load(s)) for s in shards]
        got = {k: np.concatenate([p[k] for p in parts]) for k in ("frames", "spec", "padded", "audio_missing")}
        if len(got["frames"]) != meta["clips"]:
            raise ValueError(f"token cache {directory}: {len(got['frames'])} clips in shards, meta says {meta['clips']}")
        return cls(**got)

    def __len__(self) -> int:
        return len(self.frames)

    def example(self, index: int, view: int = 0) -> dict[str, np.ndarray]:
        """One view of one clip as model inputs: rgb float32 in [-1, 1], spec float32."""
        return {"rgb": self.frames[index, view].astype(np.float32) / 127.5 - 1.0, "spec": self.spec[index, view]}
