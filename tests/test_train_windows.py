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
