"""From a data directory (manifest + data card) to batches: splits, label matrices, token cache, grain.

The training iterator is a grain `MapDataset` (deterministic order by seed, per-host shards, worker
processes) whose iterator state goes into every checkpoint, one per process, so a resumed run reads the
same batches.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Sequence

import grain
import jax
import numpy as np
from absl import flags

from mbt_core.config import MBTConfig
from mbt_core.data.augment import augment_example
from mbt_core.data.cache import CachedSplit, build_cache, limit_threads
from mbt_core.datasets import locate, read_card, read_manifest
from mbt_core.datasets.cards import write_card_fields
from mbt_core.datasets.manifest import MANIFEST_PATTERN
from mbt_core.datasets.records import ClipRecord
from mbt_core.media.audio import spectrogram_stats
from mbt_core.recipes import DataConfig, RunConfig


# Batches prepared ahead per process. grain's defaults (16 threads, 500 elements) would hold 500 *batches*:
# tens of GB at the paper's geometry.
READ = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)


@dataclasses.dataclass
class Dataset:
    """A dataset's splits (records with paths), classes, label type and data card.

    Multi-head data (EPIC: verb and noun) has `heads` (head -> names, the card's order); its `classes` are
    every head's names as `head:name`, one head after the other, the columns of its label matrices.
    """

    root: Path
    splits: dict[str, list[ClipRecord]]
    classes: list[str]
    label_type: str
    card: dict[str, Any]
    heads: dict[str, list[str]] | None = None

    @property
    def head_sizes(self) -> dict[str, int] | None:
        """Head name -> number of classes (the model's `num_classes` for multi-head data), or None."""
        return {h: len(names) for h, names in self.heads.items()} if self.heads else None

    def labels(self, split: str, index: Sequence[int] | None = None) -> np.ndarray:
        """Dense (N, C) float32 targets of a split (or of its records at `index`): multi-hot, one-hot, or one
        one-hot per head side by side (multi-head).

        Pass a tokenised split's `index` to get the rows of the clips it holds (bad clips skipped).
        """
        records = self.splits[split] if index is None else [self.splits[split][i] for i in index]
        out = np.zeros((len(records), len(self.classes)), np.float32)
        first = dict(zip(self.heads, np.cumsum([0, *self.head_sizes.values()]))) if self.heads else {}
        for i, record in enumerate(records):
            if self.heads:
                columns = [first[h] + k for h, k in record.labels.items()]
            else:
                columns = list(record.labels if isinstance(record.labels, tuple) else (record.labels,))
            out[i, columns] = 1.0
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
    heads = {h: list(names) for h, names in card["classes"].items()} if card["label_type"] == "multi_head" else None
    classes = [f"{h}:{name}" for h, names in heads.items() for name in names] if heads else list(card["classes"])
    records, _ = read_manifest(root / data.manifest, heads or classes)
    found, missing = locate(records, root, MANIFEST_PATTERN)
    if missing.count and data.on_error != "skip":
        raise FileNotFoundError(f"{root / data.manifest}: {missing}")
    if missing.count:
        print(f"{root / data.manifest}: skipping {missing}", file=sys.stderr)
    splits: dict[str, list[ClipRecord]] = {}
    for record in found:
        splits.setdefault(record.split or "train", []).append(record)
    return Dataset(root, splits, classes, card["label_type"], card, heads)


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
    stats = card_statistics(dataset) if normalise else (None, None)  # before any work: a missing one says how
    # The cache holds raw log-mel (so `--stats` and training share one build); statistics apply as it is read.
    directory = build_cache(records, config, dataset.root / ".token_cache", split, num_views=num_views,
                            progress=progress, on_error=on_error)
    cached = CachedSplit.load(directory)
    cached.spec_mean, cached.spec_std = stats
    if not len(cached):
        raise ValueError(f"split {split!r} of {dataset.root}: all {len(records)} clips were skipped as unreadable "
                         f"(listed in {directory / 'meta.json'})")
    if list(cached.clip_ids) != [records[i].clip_id for i in cached.index]:
        raise ValueError(f"token cache {directory}: its clip ids do not match split {split!r} of {dataset.root}")
    return cached


def record_statistics(dataset: Dataset, split: CachedSplit, split_name: str) -> dict[str, Any]:
    """Compute log-mel mean/std over a tokenised (unnormalised) split and write them into the data card."""
    if split.standardised:
        raise ValueError("record_statistics needs the raw log-mel: a split tokenised with normalise=False")
    mean, std = spectrogram_stats(split.spectrogram(i, v) for i in range(len(split)) for v in range(split.num_views))
    stats = {"mean": round(mean, 6), "std": round(std, 6), "split": split_name, "clips": len(split)}
    write_card_fields(dataset.card["path"], spectrogram=stats)
    dataset.card["spectrogram"] = stats
    return stats


class TrainIterator:
    """Infinite shuffled batches of one split, with a checkpointable state.

    Each example is one of the split's cached windows, drawn at random per (seed, position in the
    stream), so per (seed, step, example): both modalities from the same window, or (with
    `data.synchronous=False`) each from its own; then `augment.augment_example`.
    """

    def __init__(self, split: CachedSplit, labels: np.ndarray, run: RunConfig):
        train, config, workers, synchronous = run.train, run.model, run.data.workers, run.data.synchronous
        if train.batch_size % jax.process_count():
            raise ValueError(f"train.batch_size {train.batch_size} is not divisible by {jax.process_count()} hosts")
        if len(labels) != len(split):
            raise ValueError(f"{len(labels)} labels for a split of {len(split)} clips "
                             f"(after skipped clips, use dataset.labels(name, split.index))")
        ids = np.asarray(split.clip_ids if split.clip_ids is not None else [str(i) for i in range(len(split))])
        modalities, windows = config.modalities, split.num_views
        # Training crops the stored square (scale jitter, Sec. 4.2); without frame augmentation, the centre.
        read = split.train_example if train.frame_augment else split.example

        def load(index: int, rng: np.random.Generator) -> dict:
            view = int(rng.integers(windows))
            spec_view = view if synchronous else int(rng.integers(windows))
            example = {k: v for k, v in read(index, view, spec_view).items() if k in modalities}
            example = augment_example(example, rng, train, config.image_size, split.standardised)
            return {**example, "labels": labels[index], "index": np.int64(index), "window": np.int64(view),
                    "spec_window": np.int64(spec_view)}

        self._process = (jax.process_index(), jax.process_count())
        ds = grain.MapDataset.range(len(split))[self._process[0]::self._process[1]]
        ds = ds.seed(train.seed).shuffle().repeat().random_map(load)
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
        """The position in this process's stream (JSON-able) and which process it is, saved with each checkpoint."""
        index, count = self._process
        return {"process_index": index, "process_count": count, "grain": self._it.get_state()}

    def set_state(self, state: dict) -> None:
        """Continue from a saved position of this same process's stream."""
        saved = (state.get("process_index"), state.get("process_count"))
        if saved != self._process:
            raise ValueError(f"a data iterator state of process {saved[0]} of {saved[1]} cannot continue the "
                             f"stream of process {self._process[0]} of {self._process[1]}")
        self._it.set_state(state["grain"])

    def close(self) -> None:
        """Stop the worker processes (if any)."""
        self._it.close()


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Optimiser steps in one pass over the training split."""
    return max(num_examples // batch_size, 1)
