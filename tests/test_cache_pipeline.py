"""Token cache and training pipeline: cache keys, resume, equality with `tokenise`, bad clips, grain iterator."""
import csv
import dataclasses
import json
import math
import os
import shutil

import jax
import numpy as np
import pytest

import media  # tests/ is on sys.path: conftest
from mbt_core.config import MBTConfig
from mbt_core.data import cache as cache_module
from mbt_core.data.cache import CachedSplit, ClipError, build_cache, cache_key, stored_size
from mbt_core.data.pipeline import TrainIterator, load_dataset, steps_per_epoch, tokenised_split
from mbt_core.data.tokenise import Preprocess, tokenise, views
from mbt_core.datasets.records import ClipRecord
from mbt_core.datasets.synthetic import generate
from mbt_core.media import video
from mbt_core.recipes import DataConfig, RunConfig, TrainConfig

TINY = MBTConfig.preset("tiny")  # S = 24: frames stored at round(24 * 256 / 224) = 27
FIELDS = ("frames", "spec", "padded", "audio_missing", "offset", "index", "clip_ids")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A 24-clip synthetic benchmark (16 train, 4 val, 4 test) of 4 s clips at 32 x 32."""
    out = tmp_path_factory.mktemp("synth")
    result = generate(out, num_clips=24, seed=0, size=32, workers=1, progress=False)
    return out, result


@pytest.fixture(scope="module")
def odd_clips(tmp_path_factory):
    """Textured 6 s clips of other aspect ratios, so the central crops land on both pixel parities."""
    out = tmp_path_factory.mktemp("odd")
    records = []
    for n, (w, h) in enumerate([(64, 48), (66, 48), (48, 66)]):
        y, x = np.mgrid[:h, :w]
        frames = np.stack([np.stack([(x * 7 + y * 3 + 5 * i) % 256, (x * x + 2 * y + i) % 256,
                                     (y * y + 3 * x + 9 * i) % 256], -1) for i in range(150)]).astype(np.uint8)
        path = media.write_video(out / f"odd{n}.mp4", frames, 25.0, audio=media.tone(300 + 200 * n, 6.0, 16000))
        records.append(ClipRecord(f"odd{n}", 0.0, math.inf, (), path=str(path), video=f"odd{n}.mp4"))
    return records


def _fields(split):
    return {k: getattr(split, k) for k in FIELDS}


def _assert_same(a, b):
    for k in FIELDS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def _manifest(root):
    """Rows of a manifest.csv read with the csv module: clip_id -> (split, [label names])."""
    with open(root / "manifest.csv", newline="") as f:
        return {row["clip_id"]: (row["split"], [n for n in row["labels"].split(";") if n])
                for row in csv.DictReader(f)}


# --- cache key ---------------------------------------------------------------------------------------------

# A valid other value for every Preprocess field (a new field fails the test until it is listed here).
OTHER = dict(fps=30.0, sampling="consecutive", short_side_ratio=1.25, spec_mean=-4.0, spec_std=4.0,
             on_missing_audio="error")


def test_cache_key_changes_with_token_fields_only():
    base = cache_key(TINY, Preprocess(), 1)
    assert base == cache_key(MBTConfig.preset("tiny"), Preprocess(), 1)
    geometry = [TINY.replace(rgb_frames=8), TINY.replace(image_size=32), TINY.replace(spec_seconds=3.2),
                TINY.replace(mel_bins=48)]
    keys = {cache_key(c, Preprocess(), 1) for c in geometry} | {cache_key(TINY, Preprocess(), 4)}
    assert len(keys) == 5 and base not in keys
    model_only = [TINY.replace(hidden_size=32), TINY.replace(num_layers=2), TINY.replace(num_bottlenecks=2),
                  TINY.replace(rgb_patch=4), TINY.replace(fusion_layer=0)]
    assert {cache_key(c, Preprocess(), 1) for c in model_only} == {base}
    assert set(OTHER) == {f.name for f in dataclasses.fields(Preprocess)}
    for field, value in OTHER.items():
        # spec_mean and spec_std are given together: change one of a given pair.
        pair = dict(spec_mean=-5.0, spec_std=5.0) if field in ("spec_mean", "spec_std") else {}
        before, after = Preprocess(**pair), Preprocess(**{**pair, field: value})
        assert cache_key(TINY, after, 1) != cache_key(TINY, before, 1), field  # every field shapes views


# --- contents --------------------------------------------------------------------------------------------

def test_cached_views_equal_tokenise(tmp_path, synth, odd_clips):
    root, _ = synth
    records = load_dataset(DataConfig(dir=str(root))).splits["val"][:2] + odd_clips
    split = CachedSplit.load(build_cache(records, TINY, tmp_path, "eq", num_views=2, workers=1, progress=False))
    side = stored_size(TINY, Preprocess())
    assert split.frames.shape == (len(records), 2, 16, side, side, 3) and side == 27
    assert list(split.clip_ids) == [r.clip_id for r in records]
    assert set(split.offset[len(records) - 3:].ravel()) == {1, 2}  # both parities are exercised
    for i, record in enumerate(records):
        want = views(record.path, TINY, 2, start=record.start, end=None if math.isinf(record.end) else record.end)
        if i == 0:  # the first of the views is the window at the segment start
            one = tokenise(record.path, TINY, start=record.start, end=record.end)
            np.testing.assert_array_equal(one.frames, want[0].frames)
        for v, view in enumerate(want):
            got = split.example(i, v)
            assert got["rgb"].shape == (16, 24, 24, 3) and got["rgb"].dtype == np.float32
            assert np.abs(got["rgb"] - view.frames).max() <= 1 / 255 + 1e-6, record.clip_id
            np.testing.assert_array_equal(got["spec"], view.spectrogram)
            # The stored square is the central s x s crop of the frames resized to short side s.
            square = video.centre_crop(video.read_frames(video.probe(record.path), view.frame_times, side), side)
            np.testing.assert_array_equal(split.train_example(i, v)["rgb"], square)
        assert split.padded[i] == any(v.padded for v in want)
        assert split.audio_missing[i] == want[0].audio_missing


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotated_clips_are_cropped_as_tokenise_crops_them(tmp_path, rotation):
    # A portrait phone clip: coded 64 x 48 with a display matrix. 64 -> 36 (even) and 48 -> 27 (odd) at s = 27
    # give crop offsets of different parity on the two axes, so a crop placed by the coded size is a pixel off.
    y, x = np.mgrid[:48, :64]
    frames = np.stack([np.stack([(x * 7 + y * 3 + 5 * i) % 256, (x * x + 2 * y + i) % 256,
                                 (y * y + 3 * x + 9 * i) % 256], -1) for i in range(100)]).astype(np.uint8)
    path = media.write_video(tmp_path / "portrait.mp4", frames, 25.0, audio=media.tone(440, 4.0, 16000),
                             rotation=rotation)
    want = tokenise(path, TINY, start=0.0)
    assert want.frame_size == ((36, 27) if rotation != 180 else (27, 36))  # upright, as OpenCV decodes it
    record = ClipRecord("portrait", 0.0, math.inf, (), path=str(path), video="portrait.mp4")
    split = CachedSplit.load(build_cache([record], TINY, tmp_path, "rot", workers=1, progress=False))
    assert np.abs(split.example(0)["rgb"] - want.frames).max() <= 1 / 255 + 1e-6


def test_interrupted_build_resumes_only_the_missing_shard(tmp_path, synth, monkeypatch):
    root, _ = synth
    records = load_dataset(DataConfig(dir=str(root))).splits["train"]  # 16 clips: shards of 6, 6, 4
    build = dict(config=TINY, root=tmp_path, name="train", workers=1, progress=False, shard_size=6)
    directory = build_cache(records, **build)
    shards = sorted(directory.glob("shard_*.npz"))
    assert len(shards) == 3
    first = CachedSplit.load(directory)
    mtimes = [s.stat().st_mtime_ns for s in shards]
    shards[1].unlink()
    (directory / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json"):
        CachedSplit.load(directory)
    assert build_cache(records, **build) == directory
    assert [s.stat().st_mtime_ns for s in shards][::2] == mtimes[::2]
    assert shards[1].stat().st_mtime_ns != mtimes[1]
    _assert_same(first, CachedSplit.load(directory))

    # A changed clip (its segment now ends early) rebuilds its shard only, and shows as padded.
    changed = list(records)
    changed[13] = dataclasses.replace(records[13], end=3.5)
    mtimes = [s.stat().st_mtime_ns for s in shards]
    again = CachedSplit.load(build_cache(changed, **build))
    assert [s.stat().st_mtime_ns for s in shards][:2] == mtimes[:2] and shards[2].stat().st_mtime_ns != mtimes[2]
    assert again.padded[13] and not first.padded[13]
    np.testing.assert_array_equal(again.frames[:12], first.frames[:12])

    # Worker processes (spawned, single-threaded) give the same arrays as the main process.
    monkeypatch.setattr(cache_module, "MIN_POOL_CLIPS", 0)
    pooled = CachedSplit.load(build_cache(records, **{**build, "root": tmp_path / "pool", "workers": 2}))
    _assert_same(first, pooled)


def test_a_clip_replaced_in_place_is_tokenised_again(tmp_path, odd_clips):
    records = [dataclasses.replace(r, path=str(shutil.copy(r.path, tmp_path / os.path.basename(r.path))))
               for r in odd_clips]
    build = dict(config=TINY, root=tmp_path / "cache", name="eval", workers=1, progress=False, shard_size=1)
    directory = build_cache(records, **build)
    shards = sorted(directory.glob("shard_*.npz"))
    mtimes = [s.stat().st_mtime_ns for s in shards]
    # Clip 1 becomes other content of the same shape, the file replaced under the same name.
    frames = np.stack([np.full((48, 66, 3), 30 + 40 * (i % 5), np.uint8) for i in range(150)])
    new = media.write_video(tmp_path / "new.mp4", frames, 25.0, audio=media.tone(1200, 6.0, 16000))
    os.replace(new, records[1].path)
    split = CachedSplit.load(build_cache(records, **build))
    fresh = tokenise(records[1].path, TINY)  # the cached view: the centred window
    got = split.example(1)
    assert np.abs(got["rgb"] - fresh.frames).max() <= 1 / 255 + 1e-6
    np.testing.assert_array_equal(got["spec"], fresh.spectrogram)
    assert [s.stat().st_mtime_ns for s in shards][::2] == mtimes[::2]  # the other clips' shards are kept
    assert shards[1].stat().st_mtime_ns != mtimes[1]


def _corrupt_copy(root, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(root, copy, ignore=shutil.ignore_patterns(".token_cache"))
    dataset = load_dataset(DataConfig(dir=str(copy)))
    bad = dataset.splits["train"][5]
    with open(bad.path, "wb") as f:
        f.write(b"this is not an mp4 file " * 40)
    return copy, bad


def test_bad_clip_raises_naming_the_file_or_is_skipped_with_its_label(tmp_path, synth, capsys):
    root, _ = synth
    copy, bad = _corrupt_copy(root, tmp_path)
    dataset = load_dataset(DataConfig(dir=str(copy)))
    with pytest.raises(ClipError) as error:
        tokenised_split(dataset, "train", TINY, 1, progress=False)
    assert bad.path in str(error.value) and bad.clip_id in str(error.value)

    capsys.readouterr()
    split = tokenised_split(dataset, "train", TINY, 1, progress=False, on_error="skip")
    report = capsys.readouterr().out
    assert "1 of 16 clips skipped" in report and bad.clip_id in report and report.count("\n") == 2
    assert len(split) == 15 and bad.clip_id not in split.clip_ids
    meta = json.loads(next((copy / ".token_cache").glob("train-*/meta.json")).read_text())
    assert [(s["clip_id"], s["path"]) for s in meta["skipped"]] == [(bad.clip_id, bad.path)]
    assert "VideoDecodeError" in meta["skipped"][0]["reason"]

    # Labels follow the clips that are present, as the manifest gives them.
    manifest = _manifest(copy)
    labels = dataset.labels("train", split.index)
    for row, clip_id in zip(labels, split.clip_ids):
        assert sorted(np.asarray(dataset.classes)[row > 0]) == sorted(manifest[clip_id][1])
    train = TrainConfig(batch_size=5, frame_augment=False, spec_augment=False)
    run = RunConfig(TINY, train)
    with pytest.raises(ValueError, match="16 labels"):
        TrainIterator(split, dataset.labels("train"), run)
    batches = TrainIterator(split, labels, run)
    for _ in range(3):
        batch = next(batches)
        assert bad.clip_id not in batch["clip_id"]
        for row, clip_id in zip(batch["labels"], batch["clip_id"]):
            assert sorted(np.asarray(dataset.classes)[row > 0]) == sorted(manifest[clip_id][1])

    # The skipped cache is reused with "skip" (reported again), never accepted by "raise".
    again = tokenised_split(dataset, "train", TINY, 1, progress=False, on_error="skip")
    assert bad.clip_id in capsys.readouterr().out
    _assert_same(split, again)
    with pytest.raises(ClipError, match=bad.clip_id):
        tokenised_split(dataset, "train", TINY, 1, progress=False)


def test_a_worker_that_dies_names_its_clip_and_skip_goes_on(tmp_path, synth, monkeypatch):
    import crashing_worker

    root, _ = synth
    records = load_dataset(DataConfig(dir=str(root))).splits["train"][:6]
    records[2] = dataclasses.replace(records[2], clip_id=crashing_worker.CRASH_ID)
    build = dict(config=TINY, name="train", progress=False, shard_size=4)
    alone = CachedSplit.load(build_cache(records[:2] + records[3:], root=tmp_path / "alone", workers=1, **build))
    monkeypatch.setattr(cache_module, "MIN_POOL_CLIPS", 0)
    monkeypatch.setattr(cache_module, "_tokenise_clip", crashing_worker.tokenise_or_die)
    with pytest.raises(ClipError, match=f"{crashing_worker.CRASH_ID}.*{records[2].path}.*died"):
        build_cache(records, root=tmp_path / "raise", workers=2, **build)
    split = CachedSplit.load(build_cache(records, root=tmp_path / "skip", workers=2, on_error="skip", **build))
    assert [s["clip_id"] for s in split.skipped] == [crashing_worker.CRASH_ID] and "died" in split.skipped[0]["reason"]
    assert list(split.index) == [0, 1, 3, 4, 5]
    for k in ("frames", "spec", "padded", "offset", "clip_ids"):  # every other clip as a crash-free build has it
        np.testing.assert_array_equal(getattr(split, k), getattr(alone, k), err_msg=k)


def test_a_split_whose_every_clip_is_skipped_is_refused(tmp_path, synth):
    root, _ = synth
    shutil.copy(root / "data_card.md", tmp_path / "data_card.md")
    (tmp_path / "manifest.csv").write_text("path,split\na.mp4,train\nb.mp4,train\n")
    for name in ("a.mp4", "b.mp4"):
        (tmp_path / name).write_bytes(b"not a video " * 50)
    dataset = load_dataset(DataConfig(dir=str(tmp_path)))
    with pytest.raises(ValueError, match=r"split 'train' of .*: all 2 clips were skipped as unreadable"):
        tokenised_split(dataset, "train", TINY, 1, progress=False, on_error="skip")


def test_labels_match_the_manifest(synth):
    root, result = synth
    dataset = load_dataset(DataConfig(dir=str(root)))
    manifest = _manifest(root)
    assert dataset.classes == list(result.classes) and dataset.label_type == "multi_label"
    assert {s: len(r) for s, r in dataset.splits.items()} == {"train": 16, "val": 4, "test": 4}
    for name, records in dataset.splits.items():
        assert [r.clip_id for r in records] == [c for c, (s, _) in manifest.items() if s == name]
        want = np.array([[c in manifest[r.clip_id][1] for c in result.classes] for r in records], np.float32)
        np.testing.assert_array_equal(dataset.labels(name), want)
        np.testing.assert_array_equal(dataset.labels(name, [2, 0]), want[[2, 0]])
    assert dataset.class_kinds()["circle_is_sound_source"] == "pairing_temporal"


# --- training iterator -----------------------------------------------------------------------------------

MICRO = MBTConfig.preset("micro")  # S = 8, 2 frames: stored at 9


def mock_split(n=16, seed=0, cls=CachedSplit):
    """A cached split with the training margin; labels one-hot of the clip's position."""
    rng = np.random.default_rng(seed)
    side = stored_size(MICRO, Preprocess())
    frames = rng.integers(0, 256, (n, 1, MICRO.rgb_frames, side, side, 3), dtype=np.uint8)
    spec = rng.normal(size=(n, 1, MICRO.spec_frames, MICRO.mel_bins)).astype(np.float32)
    ids = [f"clip{i:02d}" for i in range(n)]
    split = cls(frames, spec, np.zeros(n, bool), np.zeros(n, bool), image_size=MICRO.image_size,
                clip_ids=np.asarray(ids))
    return split, np.eye(n, dtype=np.float32), ids


def _iterator(seed=0, workers=0, split=None, **train):
    split, labels, _ = split or mock_split()
    train = TrainConfig(batch_size=4, seed=seed, **train)
    return TrainIterator(split, labels, RunConfig(MICRO, train, DataConfig(workers=workers)))


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b, keys=("rgb", "spec", "labels", "clip_id")):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in keys:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_train_iterator_is_deterministic_by_seed_and_resumes():
    first = _take(_iterator(0), 6)
    _assert_batches_equal(first, _take(_iterator(0), 6))
    other = _take(_iterator(1), 6)
    assert any((a["clip_id"] != b["clip_id"]).any() for a, b in zip(first, other))
    assert first[0]["rgb"].shape == (4, 2, 8, 8, 3) and np.abs(first[0]["rgb"]).max() <= 1.0

    it = _iterator(0)
    _take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # as a checkpoint stores it
    after = _take(it, 3)
    _assert_batches_equal(after, first[3:])
    _take(it, 2)
    it.set_state(state)
    _assert_batches_equal(_take(it, 3), after)
    resumed = _iterator(0)  # a new process: a fresh iterator, then the saved state
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 3), after)


def test_train_iterator_epochs_and_alignment_without_augmentation():
    split, labels, ids = mock_split()
    batches = _take(_iterator(0, frame_augment=False, spec_augment=False), 8)  # two epochs of 16
    for epoch in (batches[:4], batches[4:]):
        assert sorted(c for b in epoch for c in b["clip_id"]) == ids
    for batch in batches:
        for k, clip_id in enumerate(batch["clip_id"]):
            i = ids.index(clip_id)
            np.testing.assert_array_equal(batch["rgb"][k], split.example(i)["rgb"])
            np.testing.assert_array_equal(batch["spec"][k], split.spec[i, 0])
            np.testing.assert_array_equal(batch["labels"][k], labels[i])


def test_training_crop_reaches_the_stored_margin():
    split, labels, ids = mock_split()
    split.frames[:] = 255
    split.frames[:, :, :, 0:8, 0:8] = 0  # wherever the evaluation crop lies, it holds no 255 ...
    assert all((split.example(i)["rgb"] < 1.0).any() for i in range(len(split)))
    no_colour = dict(color_jitter=0.0, color_drop=0.0)
    seen = np.concatenate([b["rgb"] for b in _take(_iterator(0, split=(split, labels, ids), **no_colour), 12)])
    assert seen.shape[2:4] == (8, 8)
    assert (seen == 1.0).any() and (seen == -1.0).any()  # ... but training crops reach the margin


def test_hosts_read_disjoint_shards(monkeypatch):
    seen = []
    for host in range(2):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        batches = _take(_iterator(0, frame_augment=False, spec_augment=False), 4)  # 8 examples: one epoch
        assert all(len(b["clip_id"]) == 2 for b in batches)
        seen.append([c for b in batches for c in b["clip_id"]])
    assert len(set(seen[0])) == len(set(seen[1])) == 8
    assert sorted(seen[0] + seen[1]) == mock_split()[2]
    monkeypatch.setattr(jax, "process_count", lambda: 3)
    with pytest.raises(ValueError, match="not divisible by 3 hosts"):
        _iterator(0)


class ThreadProbe(CachedSplit):
    """A split whose spectrogram reports the reading process's OPENBLAS_NUM_THREADS and BLAS pool size."""

    def train_example(self, index, view=0, spec_view=None):
        import threadpoolctl
        out = super().train_example(index, view, spec_view)
        spec = np.zeros_like(out["spec"])
        spec[0, 0] = float(os.environ.get("OPENBLAS_NUM_THREADS", "0"))
        spec[0, 1] = max(p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas")
        return {**out, "spec": spec}


def test_worker_processes_give_the_same_batches_single_threaded(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # what the workers inherit; they must lower it
    split = mock_split(cls=ThreadProbe)
    want = _take(_iterator(0, split=split, spec_augment=False), 6)
    it = _iterator(0, workers=2, split=split, spec_augment=False)
    try:
        got = _take(it, 6)
    finally:
        it.close()
    _assert_batches_equal(want, got, keys=("rgb", "labels", "clip_id"))
    reported = np.stack([b["spec"][:, 0, :2] for b in got])
    assert (reported == 1.0).all(), reported


def test_steps_per_epoch():
    assert steps_per_epoch(10, 4) == 2 and steps_per_epoch(3, 4) == 1 and steps_per_epoch(64, 32) == 2
