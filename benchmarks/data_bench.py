"""Data loading speed: clips/s of decode + tokenise at the paper's geometry, with and without the token cache.

Writes its own test clips (10 s, 640x360 H.264 at 25 fps, 48 kHz stereo AAC, as AudioSet/VGGSound
downloads) into a temporary directory and measures, one process unless stated:

- raw decode (the limit): OpenCV reading every frame plus PyAV decoding the whole audio track;
- `tokenise` (one centred view: 8 frames at 224^2, 8 s of 128-bin log-mel) and `views` (4 test views);
- building the token cache (`build_cache`, in this process and with worker processes);
- reading the cache: `CachedSplit.example` (evaluation crop) and `TrainIterator` batches (training crop,
  flip, colour jitter, SpecAugment), i.e. what training and evaluation see once the cache exists.

- one augmented training example (`augment.augment_example`: crop, flip, colour jitter, SpecAugment) alone;
- peak resident memory of a fresh process that loads a cached split and reads one epoch of training
  batches, for a split of `--clips` clips and one 4x larger (the cache is read from disk: flat).

Prints markdown tables. Usage: `OPENBLAS_NUM_THREADS=1 python benchmarks/data_bench.py [--clips 20]`.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads OpenBLAS (librosa is ~3x faster so)

import datetime  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from mbt_core.config import MBTConfig  # noqa: E402
from mbt_core.data import cache as cache_module  # noqa: E402
from mbt_core.data.augment import augment_example  # noqa: E402
from mbt_core.data.cache import CachedSplit, build_cache  # noqa: E402
from mbt_core.data.pipeline import TrainIterator  # noqa: E402
from mbt_core.data.tokenise import tokenise, views  # noqa: E402
from mbt_core.datasets.records import ClipRecord  # noqa: E402
from mbt_core.media.video_writer import write_video  # noqa: E402
from mbt_core.recipes import DataConfig, RunConfig, TrainConfig  # noqa: E402

FPS, RATE = 25, 48000


def write_clips(out: Path, n: int, seconds: float, width: int, height: int) -> list[Path]:
    """`n` clips of moving texture with sensor-like noise and a stereo soundtrack of a tone and noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:height, :width].astype(np.float32)
    noise = rng.normal(0, 6, (7, height, width, 3)).astype(np.float32)  # cycled: cheap to make, not to code
    t = np.arange(int(seconds * RATE)) / RATE
    paths = []
    for i in range(n):
        frames = np.empty((int(seconds * FPS), height, width, 3), np.uint8)
        for k in range(len(frames)):
            phase = 0.05 * k + i
            base = 127 + 60 * np.sin(x / (17 + i) + phase) + 60 * np.cos(y / 23 - phase)
            frames[k] = np.clip(base[..., None] + noise[k % len(noise)] + [0, 30 * (i % 3), 0], 0, 255)
        tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * i) * t) + 0.05 * rng.normal(size=len(t))
        audio = np.stack([tone, np.roll(tone, 100)]).astype(np.float32)
        paths.append(write_video(out / f"clip{i:03d}.mp4", frames, FPS, audio=audio, rate=RATE))
    return paths


def raw_decode(path: Path) -> None:
    """Every video frame through OpenCV (to RGB arrays) and the whole audio track through PyAV."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    while cap.read()[0]:
        pass
    cap.release()
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            frame.to_ndarray()


def rate(fn, items, warmup: int = 1) -> tuple[float, float]:
    """(items per second, seconds) of fn over items, after `warmup` untimed calls (imports, caches, JIT)."""
    for item in items[:warmup]:
        fn(item)
    start = time.perf_counter()
    for item in items:
        fn(item)
    seconds = time.perf_counter() - start
    return len(items) / seconds, seconds


def epoch_peak_rss(directory: str, windows: int) -> tuple[float, float]:
    """(peak RSS in MB after loading the split, after one epoch of training batches), in this fresh process."""
    config = MBTConfig.preset("paper-b16")
    split = CachedSplit.load(directory)
    loaded = peak_rss_mb()
    train = TrainConfig(batch_size=4, seed=0)
    it = TrainIterator(split, np.zeros((len(split), 1), np.float32),
                       RunConfig(config, train, DataConfig(train_windows=windows)))
    for _ in range(len(split) // train.batch_size):
        next(it)
    it.close()
    return loaded, peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: since its exec, unlike ru_maxrss, which keeps the parent's)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def memory_rows(tmp: Path, records: list, config: MBTConfig, windows: int) -> list[tuple[int, float, float, float]]:
    """(clips, bytes of the split's arrays in MB, peak RSS after load, after an epoch) for 1x and 4x the clips."""
    import multiprocessing

    rows = []
    for factor in (1, 4):
        split_records = [ClipRecord(f"{r.clip_id}-{k}", r.start, r.end, r.labels, path=r.path, video=r.video)
                         for k in range(factor) for r in records]
        directory = build_cache(split_records, config, tmp / "memory", f"x{factor}", num_views=windows,
                                workers=1, progress=False)
        split = CachedSplit.load(directory)
        size = (split.frames.shape[0] * np.prod(split.frames.shape[1:]) + 4 * np.prod(split.spec.shape)) / 2 ** 20
        with multiprocessing.get_context("spawn").Pool(1) as pool:  # a fresh process per split size
            loaded, epoch = pool.apply(epoch_peak_rss, (str(directory), windows))
        rows.append((len(split_records), float(size), loaded, epoch))
    return rows


def machine() -> str:
    """nproc, CPU model and date, for RESULTS.md."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    return (f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {model}, "
            f"load average {os.getloadavg()[0]:.1f} at start, {datetime.date.today().isoformat()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT of the test clips")
    parser.add_argument("--workers", type=int, default=2, help="cache build worker processes")
    parser.add_argument("--batches", type=int, default=20, help="TrainIterator batches of 8 to time")
    parser.add_argument("--windows", type=int, default=3, help="cached training windows per clip (data.train_windows)")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    config = MBTConfig.preset("paper-b16")
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        paths = write_clips(tmp, args.clips, args.seconds, width, height)
        print(f"wrote {len(paths)} clips of {args.seconds:g} s at {width}x{height} "
              f"in {time.perf_counter() - start:.0f} s")
        records = [ClipRecord(p.stem, 0.0, args.seconds, (0,), path=str(p), video=p.name) for p in paths]
        rows = [("raw decode: every frame (OpenCV) + all audio (PyAV), the limit", *rate(raw_decode, paths)),
                ("tokenise: 1 centred view (decode, resample, crop, log-mel)",
                 *rate(lambda p: tokenise(p, config), paths)),
                ("views: 4 test views, one decode", *rate(lambda p: views(p, config, 4), paths))]
        cache_module.MIN_POOL_CLIPS = 0  # use the worker processes even for a few clips
        for workers in (1, args.workers):
            start = time.perf_counter()
            directory = build_cache(records, config, tmp / f"cache{workers}", "bench", workers=workers,
                                    progress=False)
            seconds = time.perf_counter() - start
            how = "in this process" if workers == 1 else f"{workers} worker processes (incl. their start)"
            rows.append((f"build_cache: 1 view, {how}", len(records) / seconds, seconds))
        split = CachedSplit.load(directory)
        rows.append(("cache read: CachedSplit.example (evaluation crop)",
                     *rate(lambda i: split.example(i), list(range(len(split))) * 5)))
        train = TrainConfig(batch_size=8, seed=0, frame_augment=True, spec_augment=True)
        rng = np.random.default_rng(0)
        rows.append(("augment_example alone: one paper-geometry training example, this process",
                     *rate(lambda i: augment_example(split.train_example(i), rng, train, config.image_size, False),
                           list(range(len(split))) * 3)))
        for workers in (0, args.workers):
            it = TrainIterator(split, np.zeros((len(split), 1), np.float32),
                               RunConfig(config, train, DataConfig(workers=workers)))
            # Steady state: the first batches start the workers and fill the prefetch buffers.
            per_batch, seconds = rate(lambda _: next(it), list(range(args.batches)), warmup=8)
            it.close()
            rows.append((f"cache read + training augmentation: TrainIterator, {workers} workers",
                         per_batch * train.batch_size, seconds))
        memory = memory_rows(tmp, records, config, args.windows)
    print(f"\nPaper geometry: {config.rgb_frames} frames at {config.image_size}^2, {config.spec_seconds:g} s of "
          f"{config.mel_bins}-bin log-mel; {args.clips} clips of {args.seconds:g} s at {width}x{height}.\n")
    print("| what | clips/s | ms/clip |")
    print("| --- | ---: | ---: |")
    for name, per_second, _ in rows:
        print(f"| {name} | {per_second:.2f} | {1000 / per_second:.1f} |")
    print(f"\nPeak RSS of a fresh process: load the cached training split ({args.windows} windows per clip), "
          f"then one epoch of TrainIterator batches of 4 (0 workers).\n")
    print("| clips | split's arrays (MB) | peak RSS after load (MB) | peak RSS after an epoch (MB) |")
    print("| ---: | ---: | ---: | ---: |")
    for clips, size, loaded, epoch in memory:
        print(f"| {clips} | {size:.0f} | {loaded:.0f} | {epoch:.0f} |")


if __name__ == "__main__":
    main()
