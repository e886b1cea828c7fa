"""Random training windows (Sec. 4.2, 4.3.2): drawn per (seed, step, example) from the cached windows.

The clip used here encodes each frame's index in its colour (tests/media.py), so which instants a
training example saw is read back from its pixels and checked against the closed-form window starts.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import media  # noqa: E402  (tests/ is on sys.path: conftest)
from mbt_core.config import MBTConfig  # noqa: E402
from mbt_core.data.cache import CachedSplit, build_cache  # noqa: E402
from mbt_core.data.pipeline import TrainIterator  # noqa: E402
from mbt_core.data.tokenise import window_starts  # noqa: E402
from mbt_core.datasets.records import ClipRecord  # noqa: E402
from mbt_core.media.images import to_uint8  # noqa: E402
from mbt_core.recipes import DataConfig, RunConfig, TrainConfig  # noqa: E402

TINY = MBTConfig.preset("tiny")  # 4 s windows
MICRO = MBTConfig.preset("micro")
PLAIN = dict(frame_augment=False, spec_augment=False)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """10 s at 25 fps whose frame colour encodes the frame index."""
    return media.write_video(tmp_path_factory.mktemp("win") / "clip.mp4", media.index_frames(250),
                             audio=media.tone(440, 10.0, 16000), rate=16000)


def _run(config, synchronous=True, seed=0, **train):
    train = TrainConfig(batch_size=4, seed=seed, **{**PLAIN, **train})
    return RunConfig(config, train, DataConfig(synchronous=synchronous))


def _batches(split, run, n):
    it = TrainIterator(split, np.zeros((len(split), 1), np.float32), run)
    return [next(it) for _ in range(n)]


def test_window_starts_over_two_epochs_cover_the_clip(tmp_path, clip):
    # 8 clips (one file), 3 cached windows of 4 s: starts 0, 3 and 6 s, which together cover [0, 10).
    records = [ClipRecord(f"c{i}", 0.0, float("inf"), (0,), path=str(clip)) for i in range(8)]
    split = CachedSplit.load(build_cache(records, TINY, tmp_path, "train", num_views=3, workers=1, progress=False))
    want = window_starts(0.0, 10.0, TINY.spec_seconds, 3)
    assert want == pytest.approx([0.0, 3.0, 6.0])
    starts = []
    for batch in _batches(split, _run(TINY), 4):  # two epochs of 8 clips
        for frames, window in zip(batch["rgb"], batch["window"]):
            first = media.decode_index(to_uint8(frames[0])) / 25
            assert first == pytest.approx(want[window])  # the pixels are those of the drawn window
            starts.append(first)
    assert sorted(set(starts)) == pytest.approx(want)
    covered = np.zeros(1000, bool)  # 10 ms bins of the clip
    for s in set(starts):
        covered[int(round(s * 100)):int(round((s + TINY.spec_seconds) * 100))] = True
    assert covered.all()


def _tagged_split(n=16, windows=3):
    """A split whose window w of every clip has frames and spectrogram of value w (and the clip in pixel 0)."""
    side = MICRO.image_size
    frames = np.zeros((n, windows, MICRO.rgb_frames, side, side, 3), np.uint8)
    spec = np.zeros((n, windows, MICRO.spec_frames, MICRO.mel_bins), np.float32)
    for w in range(windows):
        frames[:, w], spec[:, w] = w, w
    return CachedSplit(frames, spec, np.zeros(n, bool), np.zeros(n, bool))


def test_both_modalities_share_the_window_unless_asynchronous():
    split = _tagged_split()
    for synchronous in (True, False):
        batches = _batches(split, _run(MICRO, synchronous), 8)
        rgb = np.concatenate([np.round((b["rgb"][:, 0, 0, 0, 0] + 1) * 127.5) for b in batches]).astype(int)
        spec = np.concatenate([b["spec"][:, 0, 0] for b in batches]).astype(int)
        assert set(rgb) == set(spec) == {0, 1, 2}  # every window is drawn
        assert (rgb == np.concatenate([b["window"] for b in batches])).all()
        assert (spec == np.concatenate([b["spec_window"] for b in batches])).all()
        assert (rgb == spec).all() == synchronous


def test_windows_are_a_function_of_seed_and_step():
    split = _tagged_split()
    first = [b["window"] for b in _batches(split, _run(MICRO, False), 8)]
    again = [b["window"] for b in _batches(split, _run(MICRO, False), 8)]
    other = [b["window"] for b in _batches(split, _run(MICRO, False, seed=1), 8)]
    np.testing.assert_array_equal(np.concatenate(first), np.concatenate(again))
    assert (np.concatenate(first) != np.concatenate(other)).any()
    # Two epochs of the same clip draw their windows independently: not one window per clip for ever.
    by_clip: dict = {}
    for b in _batches(split, _run(MICRO), 8):
        for cid, w in zip(b["clip_id"], b["window"]):
            by_clip.setdefault(cid, []).append(int(w))
    assert any(len(set(ws)) > 1 for ws in by_clip.values())


def _evidence_clips(out, n=16):
    """1 s clips whose class shows only in their last 40 %: grey, then red (class 0) or green (class 1)."""
    records = []
    for i in range(n):
        frames = np.full((25, 32, 32, 3), 128, np.uint8)
        frames[15:] = (220, 30, 30) if i % 2 == 0 else (30, 220, 30)  # frames 15..24: [0.6 s, 1 s)
        path = media.write_video(out / f"e{i}.mp4", frames, audio=media.tone(440, 1.0, 16000), rate=16000)
        records.append(ClipRecord(f"e{i}", 0.0, float("inf"), (i % 2,), path=str(path)))
    return records


def _fit(split, labels, windows, out):
    """Train micro MBT 60 steps on the split's cached windows; its fused logits on the last window."""
    import jax

    from mbt_core.model.model import MBT
    from mbt_core.recipes import load_run_config
    from mbt_core.train.loop import TrainData, train_and_evaluate

    overrides = ["model.preset='micro'", "model.num_classes=2", "train.steps=60", "train.batch_size=8",
                 "train.learning_rate=0.003", "train.warmup_epochs=0.0", "train.checkpoint_every=60",
                 "train.log_every=60", "train.frame_augment=False", f"data.train_windows={windows}"]
    run = load_run_config("synthetic-tiny", overrides)
    state = train_and_evaluate(run, out, TrainData(TrainIterator(split, labels, run), "multi_label", 2),
                               progress=False)
    return run, jax.device_get(state.params), MBT(run.model)


def test_evidence_in_the_last_40_percent_is_learnt_from_random_windows(tmp_path):
    records = _evidence_clips(tmp_path)
    labels = np.eye(2, dtype=np.float32)[[i % 2 for i in range(len(records))]]
    build = dict(workers=1, progress=False)
    windows = CachedSplit.load(build_cache(records, MICRO, tmp_path / "cache", "train", num_views=5, **build))
    centred = CachedSplit.load(build_cache(records, MICRO, tmp_path / "cache", "train", num_views=1, **build))
    # The last cached window [0.84, 1) shows the colour; the centred one [0.42, 0.58) shows grey only.
    last = {m: np.stack([windows.example(i, 4)[m] for i in range(len(records))]) for m in ("rgb", "spec")}
    assert (last["rgb"][0, :, :, :, 0] > 0.5).all() and np.ptp(centred.example(0)["rgb"]) < 0.1
    accuracy = {}
    for name, split in (("windows", windows), ("centred", centred)):
        run, params, model = _fit(split, labels, split.num_views, tmp_path / name)
        logits, _ = model.apply({"params": params}, last, train=False)
        accuracy[name] = float(np.mean(np.asarray(logits).argmax(-1) == labels.argmax(-1)))
    assert accuracy["windows"] == 1.0, accuracy  # learnt from the windows that reach the evidence
    assert accuracy["centred"] <= 0.75, accuracy  # a fixed centred window never shows it
