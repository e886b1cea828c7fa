"""From a data directory (manifest + data card) to batches: splits, label matrices, token cache, grain.

The training iterator is a grain `MapDataset` (deterministic order by seed, per-host shards, worker
processes) whose iterator state goes into every checkpoint, so a resumed run reads the same batches.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import grain
import jax
import numpy as np
from absl import flags

from mbt_core.config import MBTConfig
from mbt_core.data.augment import color_jitter, random_crop, random_flip, spec_augment
from mbt_core.data.cache import CachedSplit, build_cache, limit_threads
from mbt_core.data.tokenise import Preprocess
from mbt_core.datasets import locate, read_card, read_manifest
from mbt_core.datasets.cards import write_card_fields
from mbt_core.datasets.manifest import MANIFEST_PATTERN
from mbt_core.datasets.records import ClipRecord
from mbt_core.media.audio import spectrogram_stats
from mbt_core.recipes import DataConfig, RunConfig, TrainConfig


# Batches prepared ahead per process. grain's defaults (16 threads, 500 elements) would hold 500 *batches*:
# tens of GB at the paper's geometry.
READ = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


@dataclasses.dataclass
class Dataset:
    """A dataset's splits (records with paths), classes, label type and data card."""

    root: Path
    splits: dict[str, list[ClipRecord]]
    classes: list[str]
    label_type: str
    card: dict[str, Any]

    def labels(self, split: str, index: Sequence[int] | None = None) -> np.ndarray:
        """Dense (N, C) float32 targets of a split (or of its records at `index`): multi-hot or one-hot.

        Pass a tokenised split's `index` to get the rows of the clips it holds (bad clips skipped).
        """
        records = self.splits[split] if index is None else [self.splits[split][i] for i in index]
        out = np.zeros((len(records), len(self.classes)), np.float32)
        for i, record in enumerate(records):
            labels = record.labels if isinstance(record.labels, tuple) else (record.labels,)
            out[i, list(labels)] = 1.0
        return out

    def class_kinds(self) -> dict[str, str]:
        """Class name -> kind (audio, visual, pairing, ...) where the card records kinds."""
        kinds = self.card.get("class_kinds") or self.card.get("kinds") or {}
        return dict(kinds) if isinstance(kinds, dict) else {}


def load_dataset(data: DataConfig) -> Dataset:
    """Read a data directory's manifest and card; locate every clip (missing files: one report).

    Clips whose files are missing (or are directories, symlink loops...) stop the run, or with
    `data.on_error="skip"` are left out with that report printed.
    """
    if not data.dir:
        raise ValueError("data.dir: no data directory given (pass --data DIR)")
    root = Path(data.dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory {root}: " + ("not a directory" if root.exists() else "does not exist"))
    card = read_card(root / data.card)
    classes = list(card["classes"])
    records, _ = read_manifest(root / data.manifest, classes)
    found, missing = locate(records, root, MANIFEST_PATTERN)
    if missing.count and data.on_error != "skip":
        raise FileNotFoundError(f"{root / data.manifest}: {missing}")
    if missing.count:
        print(f"{root / data.manifest}: skipping {missing}", file=sys.stderr)
    splits: dict[str, list[ClipRecord]] = {}
    for record in found:
        splits.setdefault(record.split or "train", []).append(record)
    return Dataset(root, splits, classes, card["label_type"], card)


def card_statistics(dataset: Dataset) -> tuple[float, float]:
    """The (mean, std) of log-mel values that the dataset's card records."""
    stats = dataset.card.get("spectrogram") or {}
    if stats.get("mean") is None or stats.get("std") is None:
        raise ValueError(f"{dataset.card['path']}: no spectrogram mean/std recorded; run "
                         f"`mbt tokenise --data {dataset.root} --stats` to compute them over the training split")
    return float(stats["mean"]), float(stats["std"])


def tokenised_split(dataset: Dataset, split: str, config: MBTConfig, num_views: int,
                    progress: bool = True, on_error: str = "raise", normalise: bool = False) -> CachedSplit:
    """A split tokenised (through the cache under `<data dir>/.token_cache`) and loaded.

    With on_error="skip", bad clips are left out and reported: the result's `index` and `clip_ids` say
    which clips it holds; take their targets with `dataset.labels(split, result.index)`. With `normalise`,
    log-mel values are standardised with the statistics the data card records.
    """
    if split not in dataset.splits:
        raise ValueError(f"{dataset.root}: no split {split!r}; splits: {sorted(dataset.splits)}")
    records = dataset.splits[split]
    preprocess = Preprocess()
    if normalise:
        mean, std = card_statistics(dataset)
        preprocess = Preprocess(spec_mean=mean, spec_std=std)
    directory = build_cache(records, config, dataset.root / ".token_cache", split, num_views=num_views,
                            preprocess=preprocess, progress=progress, on_error=on_error)
    cached = CachedSplit.load(directory)
    if not len(cached):
        raise ValueError(f"split {split!r} of {dataset.root}: all {len(records)} clips were skipped as unreadable "
                         f"(listed in {directory / 'meta.json'})")
    if list(cached.clip_ids) != [records[i].clip_id for i in cached.index]:
        raise ValueError(f"token cache {directory}: its clip ids do not match split {split!r} of {dataset.root}")
    return cached


def record_statistics(dataset: Dataset, split: CachedSplit, split_name: str) -> dict[str, Any]:
    """Compute log-mel mean/std over a tokenised (unnormalised) split and write them into the data card."""
    mean, std = spectrogram_stats(split.spec.reshape(len(split), -1))
    stats = {"mean": round(mean, 6), "std": round(std, 6), "split": split_name, "clips": len(split)}
    write_card_fields(dataset.card["path"], spectrogram=stats)
    dataset.card["spectrogram"] = stats
    return stats


def _augment(train: TrainConfig, image_size: int) -> Callable[[dict, np.random.Generator], dict]:
    """Training augmentation of one example (Sec. 4.2); frames arrive as the stored uint8 square."""
    def apply(example: dict, rng: np.random.Generator) -> dict:
        example = dict(example)
        if train.frame_augment and "rgb" in example:
            frames = random_flip(random_crop(example["rgb"], image_size, rng), rng)
            example["rgb"] = color_jitter(frames.astype(np.float32) / 255.0, rng) * 2.0 - 1.0
        if train.spec_augment and "spec" in example:
            example["spec"] = spec_augment(example["spec"], rng)
        return example
    return apply


class TrainIterator:
    """Infinite shuffled batches of one split, with a checkpointable state."""

    def __init__(self, split: CachedSplit, labels: np.ndarray, run: RunConfig):
        train, config, workers = run.train, run.model, run.data.workers
        if train.batch_size % jax.process_count():
            raise ValueError(f"train.batch_size {train.batch_size} is not divisible by {jax.process_count()} hosts")
        if len(labels) != len(split):
            raise ValueError(f"{len(labels)} labels for a split of {len(split)} clips "
                             f"(after skipped clips, use dataset.labels(name, split.index))")
        ids = np.asarray(split.clip_ids if split.clip_ids is not None else [str(i) for i in range(len(split))])
        modalities = config.modalities
        # Training crops the stored square (scale jitter, Sec. 4.2); without frame augmentation, the centre.
        read = split.train_example if train.frame_augment else split.example

        def load(index: int) -> dict:
            example = {k: v for k, v in read(index).items() if k in modalities}
            return {**example, "labels": labels[index], "index": np.int64(index)}

        ds = grain.MapDataset.range(len(split))[jax.process_index()::jax.process_count()]
        ds = ds.seed(train.seed).shuffle().repeat().map(load)
        if train.frame_augment or train.spec_augment:
            ds = ds.random_map(_augment(train, config.image_size))
        ds = ds.batch(train.batch_size // jax.process_count(), drop_remainder=True)
        ds = ds.map(lambda b: {**{k: v for k, v in b.items() if k != "index"}, "clip_id": ids[b["index"]]})
        iter_ds = ds.to_iter_dataset(READ)
        if workers > 0:
            if not flags.FLAGS.is_parsed():  # grain's worker start reads absl flags; outside absl.app: defaults
                flags.FLAGS.mark_as_parsed()
            iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers),
                                          worker_init_fn=limit_threads)
        self._it = iter(iter_ds)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return next(self._it)

    def get_state(self) -> dict:
        """The position in the stream (JSON-able), saved with each checkpoint."""
        return self._it.get_state()

    def set_state(self, state: dict) -> None:
        """Continue from a saved position."""
        self._it.set_state(state)

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        self._it.close()


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimiser steps in one pass over the training split."""
    return max(num_examples // batch_size, 1)
